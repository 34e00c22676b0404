"""The study's report: every number of a seed, mean ± std over seeds, the findings F1-F4 with
the rules that decide them, and report.md / results.json (PAPER.md, "Results to reproduce").

The rules are fixed here, before any number is seen: a difference counts when its mean over
seeds exceeds one std (with one seed, when it is positive); F2 asks for a mean >= 0, F4 for a
gap of at least 10 points on every seed.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from e2h.files import write_json, write_text

SPLITS = ("easy", "hard", "all")
EVALUATORS = ("orm", "prm", "oprm")
RL = ("ppo", "ppo_outcome", "dpo", "rest")


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
    return {"table1": t1, "rerank": curves, "auc": auc, "table2": t2}


def stats(per_seed: list[dict]):
    """Nested dicts of numbers -> the same nesting with [mean, std] over seeds."""
    first = per_seed[0]
    if isinstance(first, dict):
        return {k: stats([d[k] for d in per_seed]) for k in first}
    vals = np.array(per_seed, dtype=float)
    return [float(np.mean(vals)), float(np.std(vals))]


def diff(per_seed, a, b) -> list[float]:
    return [a(s) - b(s) for s in per_seed]


def verdict(name, claim, values, ok, unit="points") -> dict:
    """``ok`` None: a comparison row, reported with its numbers but not a test of the claim."""
    m, s = float(np.mean(values)), float(np.std(values))
    return {"name": name, "claim": claim, "reproduced": None if ok is None else bool(ok(m, s, values)),
            "value": f"{m:+.1f} ± {s:.1f} {unit} (per seed: " + ", ".join(f"{v:+.1f}" for v in values) + ")"}


def findings(per_seed: list[dict], cfg: dict) -> list[dict]:
    """F1-F4 with their rules: a difference counts when its mean over seeds exceeds one std."""
    big = [n for n in map(str, (16, 32, 64)) if int(n) <= cfg["n"]] or [str(cfg["n"])]
    top, consistent = str(cfg["n"]), (lambda m, s, v: m > s)
    out = []
    for ev in ("prm", "oprm"):
        for n in big:
            out.append(verdict(f"F1 {ev.upper()} N={n}", f"weighted voting ({ev.upper()}) > majority on Hard",
                               diff(per_seed, lambda s: s["rerank"][ev]["weighted"][n]["hard"],
                                    lambda s: s["rerank"][ev]["majority"][n]["hard"]), consistent))
    for ev in EVALUATORS:
        out.append(verdict(f"F2 {ev.upper()} N={top}", f"weighted voting >= best-of-n ({ev.upper()}) on All",
                           diff(per_seed, lambda s: s["rerank"][ev]["weighted"][top]["all"],
                                lambda s: s["rerank"][ev]["best_of_n"][top]["all"]),
                           lambda m, s, v: m >= 0))
    for name in RL:   # PPO and DPO optimize against the PRM; the other two rows do not use it
        against_rm = name in ("ppo", "dpo")
        claim = ("RL against the easy PRM improves greedy Hard accuracy over the easy SFT policy"
                 if against_rm else "comparison (no evaluator): change in greedy Hard accuracy")
        out.append(verdict(f"F3 {name}", claim, diff(per_seed, lambda s: s["table2"][name]["hard"],
                                                     lambda s: s["table2"]["sft_easy"]["hard"]),
                           consistent if against_rm else None))
    out.append(verdict("F4", "easy SFT: greedy Hard >= 10 points below Easy (every seed)",
                       diff(per_seed, lambda s: s["table1"]["sft_easy"]["greedy"]["easy"],
                            lambda s: s["table1"]["sft_easy"]["greedy"]["hard"]),
                       lambda m, s, v: m >= 10 and min(v) > 0))
    return out


def cell(ms) -> str:
    return f"{ms[0]:.1f} ± {ms[1]:.1f}"


def markdown(summary: dict, found: list[dict], meta: dict, cfg: dict) -> str:
    top = str(cfg["n"])
    row = lambda name, by_split: f"| {name} | " + " | ".join(cell(by_split[k]) for k in SPLITS) + " |"
    lines = [f"# e2h study: {meta['mode']} mode, seeds {meta['seeds']}", "",
             *(["**Partial: written while later seeds were still running.**", ""] if meta.get("partial") else []),
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ",
             f"Wall time: {meta['wall_s'] / 60:.1f} min (2 stages at a time, one thread each)", "",
             f"Accuracy (%) on {meta['test_set']}, mean ± std over seeds; "
             f"Easy = levels 1-3, Hard = 4-5. Settings: `{json.dumps(cfg)}`.", "",
             "## Findings", "", "Rule: a difference counts when its mean over seeds exceeds one std "
             "(with one seed, when it is positive); F2 asks for a mean >= 0, F4 for >= 10 points.", "",
             "| finding | claim | result | reproduced |", "|---|---|---|---|"]
    said = {True: "yes", False: "no", None: "-"}
    lines += [f"| {f['name']} | {f['claim']} | {f['value']} | {said[f['reproduced']]} |" for f in found]
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
    lines += ["", f"## Table 2: RL from the easy SFT policy against the easy PRM (greedy, {meta['greedy_set']})", "",
              "| method | Easy | Hard | All |", "|---|---|---|---|"]
    lines += [row(name, by_split) for name, by_split in summary["table2"].items()]
    lines += ["", "## Wall time per stage (s, mean over seeds)", "", "| stage | s |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in meta["stage_s"].items()]
    return "\n".join(lines) + "\n"


def write_report(out: Path, runs: Path, seeds: list[int], cfg: dict, meta: dict) -> list[dict]:
    per_seed = [collect(runs / f"seed{s}", cfg) for s in seeds]
    summary, found = stats(per_seed), findings(per_seed, cfg)
    meta = {**meta, "seeds": seeds}
    write_json(out / "results.json", {"meta": meta, "settings": cfg, "summary": summary,
                                      "findings": found, "per_seed": per_seed})
    write_text(out / "report.md", markdown(summary, found, meta, cfg))
    for s in seeds:   # the re-ranked samples with every score, for a reader to re-analyse
        scored = runs / f"seed{s}" / "eval_sft_easy" / "scored_samples.jsonl.gz"
        if scored.is_file():
            (out / "samples").mkdir(exist_ok=True)
            target = out / "samples" / f"seed{s}_sft_easy.jsonl.gz"
            shutil.copyfile(scored, target.with_name(f".{target.name}.tmp"))
            target.with_name(f".{target.name}.tmp").replace(target)
    return found
