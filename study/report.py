"""The study's report: every number of a seed, mean ± std over seeds, the findings F1-F5 with
the rules that decide them, and report.md / results.json (docs/paper.md, "Results to reproduce").

Each finding is a difference measured problem by problem on the same test problems
(study.paired, e2h.paired), with its spread over seeds and a 95% bootstrap interval over problems. The
rules are fixed here, before any number is seen: a difference counts when its mean over seeds
exceeds one std (with one seed, when it is positive) and its interval lies above 0; F2 and F3's
PPO against PPO on easy answers ask for a mean >= 0, F4 for a gap of at least 10 points on
every seed.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from e2h.infra.files import write_json, write_text
from e2h.paired import bootstrap, greedy_gap, points
from .figures import write_figures
from .paired import greedy_hits, method_gap, rerank_hits, split_gap

SPLITS = ("easy", "hard", "all")
EVALUATORS = ("orm", "prm", "oprm")
RL = ("ppo", "ppo_outcome", "grpo", "dpo", "rest")
# F3's claim (docs/paper.md, "RL"): RL against the easy-trained PRM raises greedy Easy and Hard
# over the easy SFT policy, as the paper's PPO on all levels does (28.2 / 12.2 -> 45.4 / 14.9).
# GRPO gets the same reward (PRM score + easy answers, all levels), so the same claim. The other
# rows are comparisons: PPO on easy answers alone and ReST-EM use no evaluator, and the paper's
# iterative DPO, which pairs by the PRM, leaves Hard where SFT had it (12.2).
AGAINST_PRM = ("ppo", "grpo")
# Table 2's columns as the paper's (problems RL trains on, final answers used, PRM used)
TABLE2_ROWS = {"sft_easy": ("-", "-", "-"), "ppo": ("all", "easy", "yes"),
               "ppo_outcome": ("easy", "easy", "no"), "grpo": ("all", "easy", "yes"),
               "dpo": ("easy", "easy", "yes"), "rest": ("easy", "easy", "no")}


def final_metrics(run_dir: Path) -> dict:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.update({k[len("final/"):]: v for k, v in rec.items() if k.startswith("final/")})
    return out


def collect(seed_dir: Path, cfg: dict) -> dict:
    """Every number of one seed."""
    t1 = {}
    for name in ("sft_easy", "sft_all", "sft_hard"):
        table = json.loads((seed_dir / f"eval_{name}/table.json").read_text())
        maj = table["methods"]["majority"][str(cfg["t1_n"])]
        t1[name] = {"greedy": table["greedy"], f"maj@{cfg['t1_n']}": {k: maj[k][0] for k in SPLITS}}
    reranked = json.loads((seed_dir / "eval_sft_easy/rerank.json").read_text())
    curves, auc = {}, {}
    f5, half = {}, seed_dir / "eval_sft_easy_half/rerank.json"
    if "prm_half" in reranked and half.is_file():   # F5: generator size x evaluator size
        f5 = {"sft_easy": {"prm": reranked["prm"], "prm_half": reranked.pop("prm_half")},
              "sft_easy_half": {ev: t for ev, t in json.loads(half.read_text()).items()
                                if ev != "generator"}}
    top = str(cfg["n"])
    f5 = {gen: {ev: {"majority": t["methods"]["majority"][top]["hard"][0],
                     "weighted": t["methods"]["weighted"][top]["hard"][0],
                     "within_hard_auc": t["within_auc"]["hard"]} for ev, t in by_ev.items()}
          for gen, by_ev in f5.items()}
    gen = reranked.pop("generator")["within_auc"]
    auc["generator"] = {"within_easy": gen["easy"], "within_hard": gen["hard"]}
    for name, table in reranked.items():
        curves[name] = {m: {n: {k: v[k][0] for k in SPLITS} for n, v in by_n.items()}
                        for m, by_n in table["methods"].items()}
        auc[name] = {f"{s}_{kind}": table["held_out_auc"][s][f"{kind}_auc"] for s in ("easy", "hard")
                     for kind in ("step", "outcome")}
        auc[name].update({f"test_{s}_outcome_min": table["auc"]["min"][s] for s in ("easy", "hard")})
        auc[name].update({f"within_{s}": table["within_auc"][s] for s in ("easy", "hard")})
    if (seed_dir / "inputs.json").is_file():   # real: greedy on MATH500 by e2h.evaluate
        t1["icl"] = json.loads((seed_dir / "icl.json").read_text())
        greedy = lambda name: json.loads((seed_dir / f"eval_{name}/table.json").read_text())["greedy"]
    else:                                      # synthetic: train.py's closing evaluation
        greedy = lambda name: {k: final_metrics(seed_dir / name)[f"test_{k}_acc"] for k in SPLITS}
    t2 = {name: greedy(name) for name in ("sft_easy", *RL)}
    start = final_metrics(seed_dir / RL[0]) if not (seed_dir / "inputs.json").is_file() else {}
    if "start_test_all_acc" in start:   # the SFT policy on the RL runs' own test problems
        t2["sft_easy"] = {k: start[f"start_test_{k}_acc"] for k in SPLITS}
    return {"table1": t1, "rerank": curves, "auc": auc, "table2": t2, **({"f5": f5} if f5 else {})}


def stats(per_seed: list[dict]):
    """Nested dicts of numbers -> the same nesting with [mean, std] over seeds."""
    first = per_seed[0]
    if isinstance(first, dict):
        return {k: stats([d[k] for d in per_seed]) for k in first}
    vals = np.array(per_seed, dtype=float)
    return [float(np.mean(vals)), float(np.std(vals))]


def diff(per_seed, a, b) -> list[float]:
    return [a(s) - b(s) for s in per_seed]


def verdict(name, claim, values, ok, parts=None, unit="points") -> dict:
    """``values``: the difference per seed; ``parts``: each seed's problem-level evidence
    (study.paired), which gives the values themselves and a bootstrap interval over problems.
    ``ok(mean, std, values, interval)``; None: a comparison row, reported but not a test."""
    if parts and all(parts):
        values, interval = [points(p) for p in parts], bootstrap(parts)
    else:
        interval = None
    m, s = float(np.mean(values)), float(np.std(values))
    text = f"{m:+.1f} ± {s:.1f} {unit} (per seed: " + ", ".join(f"{v:+.1f}" for v in values)
    text += f"; 95% over problems [{interval[0]:+.1f}, {interval[1]:+.1f}])" if interval else ")"
    return {"name": name, "claim": claim, "value": text, "interval": interval,
            "reproduced": None if ok is None else bool(ok(m, s, values, interval))}


def consistent(m, s, values, interval) -> bool:
    """Mean over seeds above one std, and (with problem-level numbers) an interval above 0."""
    return m > s and (interval is None or interval[0] > 0)


def evidence(seed_dir: Path) -> dict:
    """The problem-level numbers of one seed (study.paired); missing files give None."""
    greedy = {f"{name}/{when}": greedy_hits(seed_dir / name / "data" / f"{when}_test.jsonl")
              for name in RL for when in ("start", "final")}
    return {"rerank": rerank_hits(seed_dir / "eval_sft_easy/rerank.json"),
            "half": rerank_hits(seed_dir / "eval_sft_easy_half/rerank.json"),
            "sft_easy": greedy_hits(seed_dir / "sft_easy/data/final_test.jsonl"), **greedy}


def findings(per_seed: list[dict], cfg: dict, proof: list[dict] | None = None) -> list[dict]:
    """F1-F5 with their rules (module docstring); ``proof``: ``evidence`` per seed."""
    big = [n for n in map(str, (16, 32, 64)) if int(n) <= cfg["n"]] or [str(cfg["n"])]
    top = str(cfg["n"])
    proof = proof or [{} for _ in per_seed]
    def parts(key, gap, *args):
        return [gap(e[key], *args) if e.get(key) else None for e in proof]

    def rerank_parts(key, ev, a, b, n, split):
        return [method_gap(e[key][ev], a, b, n, split) if (e.get(key) or {}).get(ev) else None
                for e in proof]
    out = []
    for ev in ("prm", "oprm"):
        for n in big:
            out.append(verdict(f"F1 {ev.upper()} N={n}", f"weighted voting ({ev.upper()}) > majority on Hard",
                               diff(per_seed, lambda s: s["rerank"][ev]["weighted"][n]["hard"],
                                    lambda s: s["rerank"][ev]["majority"][n]["hard"]), consistent,
                               rerank_parts("rerank", ev, "weighted", "majority", n, "hard")))
    for ev in EVALUATORS:
        out.append(verdict(f"F2 {ev.upper()} N={top}", f"weighted voting >= best-of-n ({ev.upper()}) on All",
                           diff(per_seed, lambda s: s["rerank"][ev]["weighted"][top]["all"],
                                lambda s: s["rerank"][ev]["best_of_n"][top]["all"]),
                           lambda m, s, v, i: m >= 0,
                           rerank_parts("rerank", ev, "weighted", "best_of_n", top, "all")))
    def greedy_parts(after, before, split):   # the same test problems, before and after
        return [greedy_gap(e[after], e[before], split) if e.get(after) and e.get(before) else None
                for e in proof]
    for name in RL:
        for split in ("easy", "hard"):
            claim = (f"RL against the easy PRM improves greedy {split.capitalize()} over the easy SFT policy"
                     if name in AGAINST_PRM else f"comparison: change in greedy {split.capitalize()}")
            out.append(verdict(f"F3 {name} {split}", claim,
                               diff(per_seed, lambda s: s["table2"][name][split],
                                    lambda s: s["table2"]["sft_easy"][split]),
                               consistent if name in AGAINST_PRM else None,
                               greedy_parts(f"{name}/final", f"{name}/start", split)))
    out.append(verdict("F3 ppo vs ppo_outcome hard",
                       "PPO with the PRM on all levels >= PPO on easy final answers alone, on Hard",
                       diff(per_seed, lambda s: s["table2"]["ppo"]["hard"],
                            lambda s: s["table2"]["ppo_outcome"]["hard"]),
                       lambda m, s, v, i: m >= 0, greedy_parts("ppo/final", "ppo_outcome/final", "hard")))
    out.append(verdict("F4", "easy SFT: greedy Hard >= 10 points below Easy (every seed)",
                       diff(per_seed, lambda s: s["table1"]["sft_easy"]["greedy"]["easy"],
                            lambda s: s["table1"]["sft_easy"]["greedy"]["hard"]),
                       lambda m, s, v, i: m >= 10 and min(v) > 0, parts("sft_easy", split_gap)))
    if all("f5" in s for s in per_seed):   # the evaluator-size pairings (synthetic study)
        pairings = (("half", "prm", "F5 evaluator 2x generator", "an evaluator twice the generator's size"),
                    ("rerank", "prm_half", "F5 generator 2x evaluator", "an evaluator half the generator's size"))
        for key, ev, name, who in pairings:
            gen = "sft_easy_half" if key == "half" else "sft_easy"
            out.append(verdict(f"{name} N={top}", f"{who}: weighted voting > majority on Hard",
                               diff(per_seed, lambda s: s["f5"][gen][ev]["weighted"],
                                    lambda s: s["f5"][gen][ev]["majority"]), consistent,
                               rerank_parts(key, ev, "weighted", "majority", top, "hard")))
    return out


F5_PAIRS = {"F1 PRM": ("sft_easy", "prm"), "F5 evaluator 2x generator": ("sft_easy_half", "prm"),
            "F5 generator 2x evaluator": ("sft_easy", "prm_half")}


def cell(ms) -> str:
    return f"{ms[0]:.1f} ± {ms[1]:.1f}"


FIGURES = {"hard_by_n": "Hard accuracy against N (mean over seeds; band: ± std)",
           "all_by_n": "All accuracy against N (mean over seeds; band: ± std)",
           "generators": "Table 1: greedy Easy / Hard per generator",
           "rl": "Table 2: greedy Easy / Hard after RL"}


def markdown(summary: dict, found: list[dict], meta: dict, cfg: dict, figures: dict | None = None) -> str:
    top = str(cfg["n"])
    row = lambda name, by_split: f"| {name} | " + " | ".join(cell(by_split[k]) for k in SPLITS) + " |"
    lines = [f"# e2h study: {meta['mode']} mode, seeds {meta['seeds']}", "",
             *(["**Partial: written while later seeds were still running.**", ""] if meta.get("partial") else []),
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ",
             f"Wall time: {meta['wall_s'] / 60:.1f} min (2 stages at a time, one thread each)"
             + (f"; the stages' own times add up to {meta['stages_total_s'] / 60:.0f} min "
                "(a re-run keeps finished stages)" if meta.get("stages_total_s") else ""), "",
             f"Accuracy (%) on {meta['test_set']}, mean ± std over seeds; "
             f"Easy = levels 1-3, Hard = 4-5. Settings: `{json.dumps(cfg)}`.", "",
             "Exact numbers depend on the CPU: float results differ between CPU models, so a seeded "
             "run repeats bit for bit on one machine only, and a finding counts only when it holds "
             "with margin over seeds and problems.", "",
             "## Findings", "", "Each result is a difference between two methods on the same "
             "problems (points; per-problem paired, F4 excepted), mean ± std over seeds, with a 95% "
             "bootstrap interval over problems. Rule: a difference counts when its mean over seeds "
             "exceeds one std (with one seed, when it is positive) and its interval lies above 0; "
             "F2 and F3's PPO against PPO on easy answers ask for a mean >= 0, F4 for >= 10 points "
             "on every seed. F3's claim is tested on the RL runs that are rewarded by the PRM on "
             "every level (PPO, GRPO); the others are comparison rows (the paper's iterative DPO "
             "leaves Hard at the SFT policy's).", "",
             "| finding | claim | result | reproduced |", "|---|---|---|---|"]
    said = {True: "yes", False: "no", None: "-"}
    lines += [f"| {f['name']} | {f['claim']} | {f['value']} | {said[f['reproduced']]} |" for f in found]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{FIGURES[name]}]({path})" for name, path in figures.items()]
    lines += ["", f"## Table 1: generators ({meta['test_set']})", "",
              "| generator | decoding | Easy | Hard | All |", "|---|---|---|---|---|"]
    for name, by_dec in summary["table1"].items():
        for dec, by_split in by_dec.items():
            lines.append(row(f"{name} | {dec}", by_split))
    if "icl" not in summary["table1"]:
        lines += ["| ICL | - | not run: the embedded base model is random | | |"]
    lines += [""]
    lines += [f"## Re-ranking the easy SFT policy's samples with easy-trained evaluators (N = {top})", "",
              "| evaluator | method | Easy | Hard | All |", "|---|---|---|---|---|"]
    for ev, by_m in summary["rerank"].items():
        for m, by_n in by_m.items():
            lines.append(row(f"{ev.upper()} | {m}", by_n[top]))
    ns = list(summary["rerank"]["prm"]["majority"])
    for split in ("hard", "all"):
        lines += ["", f"{split.capitalize()} accuracy by N:", "",
                  "| evaluator | method | " + " | ".join(ns) + " |", "|---|---" + "|---" * len(ns) + "|"]
        for ev, by_m in summary["rerank"].items():
            for m, by_n in by_m.items():
                if m != "majority" or ev == "prm":
                    name = "any" if m == "majority" else ev.upper()
                    lines.append(f"| {name} | {m} | " + " | ".join(f"{by_n[n][split][0]:.1f}" for n in ns) + " |")
    lines += ["", "Evaluator ROC-AUC on the easy SFT policy's test samples (program-checked labels): "
              "step and outcome level on 4 samples per problem, and the min-aggregated score "
              "against final-answer correctness on all samples, globally and within each problem "
              "(mean over problems with both right and wrong samples; what voting depends on). "
              "GENERATOR: the easy SFT policy's own smallest token probability, within problems:", "",
              "| evaluator | " + " | ".join(summary["auc"]["prm"]) + " |", "|---" * (1 + len(summary["auc"]["prm"])) + "|"]
    for ev, by_k in summary["auc"].items():
        lines.append(f"| {ev.upper()} | " + " | ".join(
            f"{by_k[k][0]:.3f} ± {by_k[k][1]:.3f}" if k in by_k else "-" for k in summary["auc"]["prm"]) + " |")
    lines += ["", f"## Table 2: RL from the easy SFT policy (greedy, {meta['greedy_set']})", "",
              "| method | RL problems | final answers used | PRM used | Easy | Hard | All |",
              "|---|---|---|---|---|---|---|"]
    lines += [row(f"{name} | " + " | ".join(TABLE2_ROWS[name]), by_split)
              for name, by_split in summary["table2"].items()]
    if "f5" in summary:
        lines += ["", f"## F5 in miniature: generator size x evaluator size (Hard, N = {top})", "",
                  "Both generators SFT on easy problems only; both PRMs train on the same easy "
                  "solutions (program-checked steps), each from its own generator as trunk. "
                  "small: the embedded preset; half: half its layers (0.43M against 0.84M "
                  "parameters).", "",
                  "| generator | evaluator | majority | weighted | gain | within-problem AUC |",
                  "|---|---|---|---|---|---|"]
        size = {"sft_easy": "small", "sft_easy_half": "half", "prm": "small", "prm_half": "half"}
        for gen, by_ev in summary["f5"].items():
            for ev, v in by_ev.items():
                gain = [f["value"].split(" (")[0] for f in found if f["name"].endswith(f" N={top}")
                        and (gen, ev) == F5_PAIRS.get(f["name"].rsplit(" N=", 1)[0], ())]
                lines.append(f"| {size[gen]} | {size[ev]} PRM | {cell(v['majority'])} | {cell(v['weighted'])} | "
                             f"{gain[0] if gain else '-'} | {v['within_hard_auc'][0]:.3f} ± {v['within_hard_auc'][1]:.3f} |")
    lines += ["", "## Wall time per stage (s, mean over seeds)", "", "| stage | s |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in meta["stage_s"].items()]
    return "\n".join(lines) + "\n"


def write_report(out: Path, runs: Path, seeds: list[int], cfg: dict, meta: dict) -> list[dict]:
    per_seed = [collect(runs / f"seed{s}", cfg) for s in seeds]
    proof = [evidence(runs / f"seed{s}") for s in seeds]
    summary, found = stats(per_seed), findings(per_seed, cfg, proof)
    meta = {**meta, "seeds": seeds}
    write_json(out / "results.json", {"meta": meta, "settings": cfg, "summary": summary,
                                      "findings": found, "per_seed": per_seed})
    figures = write_figures(out, summary)
    write_text(out / "report.md", markdown(summary, found, meta, cfg, figures))
    for s in seeds:   # the re-ranked samples with every score, for a reader to re-analyse
        scored = runs / f"seed{s}" / "eval_sft_easy" / "scored_samples.jsonl.gz"
        if scored.is_file():
            (out / "samples").mkdir(exist_ok=True)
            target = out / "samples" / f"seed{s}_sft_easy.jsonl.gz"
            shutil.copyfile(scored, target.with_name(f".{target.name}.tmp"))
            target.with_name(f".{target.name}.tmp").replace(target)
    return found
