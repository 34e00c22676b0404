"""The study: the paper's findings (PAPER.md, "Results to reproduce") in miniature, one command.

    python study.py                 # the full study on the synthetic curriculum, 3 seeds
    python study.py --quick         # every stage on tiny settings (CI; numbers meaningless)
    python study.py --model DIR     # the real study: an HF Llama (Llemma-7B) on PRM800K / MATH

Per seed, every stage runs as a subprocess of the entry points users run (``train.py``,
``python -m e2h.evaluate``), two at a time, each on one thread; finished stages are skipped on
a re-run (their outputs are the cache). Stages:
1. generators (Table 1): SFT on easy (levels 1-3), on all levels, on hard (4-5); greedy and
   majority@16 on Easy / Hard / All. ICL runs on real weights only: the embedded base model is
   randomly initialized, so a few-shot prompt would test nothing the paper's ICL row tests.
2. evaluators trained on easy problems only (ORM, PRM, OPRM): majority vs weighted voting vs
   best-of-n at N = 1, 2, ..., 64 over one set of samples from the easy SFT policy; each
   evaluator's step / outcome ROC-AUC on held-out easy and hard solutions, and its ROC-AUC
   *within* each problem's samples (what voting depends on), next to the same quantity for the
   generator's own smallest token probability.
   Synthetic choice: the evaluators' training solutions are sampled from an earlier SFT
   checkpoint (80% of the steps), whose more frequent errors give more negative steps, while
   the trunk is the final easy SFT model (data/synthetic.py docstring has the measurements).
   The PRM stage samples them once and ORM / OPRM label the same solutions (``--samples``);
   the ORM, which no finding needs at full strength, trains for a third of the steps.
3. RL from the easy SFT policy (Table 2): PPO (all problems, easy final answers, process
   reward from the easy PRM) and iterative DPO (pairs scored by the PRM) optimize against the
   evaluator; PPO with the final-answer reward only on easy problems and ReST-EM (easy final
   answers) do not use it and are the paper's comparison rows. Greedy accuracy from each run's
   closing evaluation (real: ``e2h.evaluate`` on MATH500).
Findings F1-F4 are computed from the numbers with rules fixed in ``findings`` (mean and std
over seeds) and reported as reproduced or not. Writes ``<out>/report.md`` and
``<out>/results.json``; runs, samples and logs go to ``--runs`` (the full study: runs/study).

Quick mode only checks that every number is produced: a generator trained for seconds is
never right, so its ORM trains on reference / corrupted solutions given with ``--data``, DPO
pairs on the PRM score alone (``--pair-gap 0``) and ReST-EM keeps solutions by PRM score.
With ``--model`` it runs every real stage on a few problems (tests/test_study_real.py).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SPLITS = ("easy", "hard", "all")
EVALUATORS = ("orm", "prm", "oprm")
RL = ("ppo", "ppo_outcome", "dpo", "rest")
FULL = dict(preset="small", sft_steps=500, sft_batch=32, sft_lr=2e-3, eval_problems=100,
            rm_lr=3e-4, rm_steps=900, orm_steps=300, rm_problems=600, rm_samples=8,
            test_problems=30, n=64,
            t1_n=16, ppo_steps=20, rollouts=64, rl_problems=50, seeds=3)
QUICK = dict(preset="tiny", sft_steps=20, sft_batch=8, sft_lr=3e-3, eval_problems=2,
             rm_lr=1e-3, rm_steps=4, orm_steps=4, rm_problems=2, rm_samples=2, test_problems=2, n=4,
             t1_n=4, ppo_steps=2, rollouts=8, rl_problems=2, seeds=2)


class Job:
    def __init__(self, name, argv, done_file, deps=()):
        self.name, self.argv, self.done_file, self.deps = name, argv, Path(done_file), set(deps)


def train(algo, out, seed, cfg, *flags) -> list[str]:
    return [sys.executable, "train.py", "--algo", algo, "--out", str(out), "--seed", str(seed),
            "--preset", cfg["preset"], "--hparams", "embedded",
            "--eval-problems", str(cfg["eval_problems"]), *map(str, flags)]


def evaluate(policy, test, out, seed, n, tok, max_new_tokens=96, limit=0) -> list[str]:
    """e2h.evaluate at the paper's sampling settings (T 0.7, top-k 20); limit 0: every problem."""
    return [sys.executable, "-m", "e2h.evaluate", "--policy", str(policy), "--data", str(test),
            "--tokenizer", str(tok), "--out", str(out), "--n", str(n), "--seed", str(seed),
            "--max-new-tokens", str(max_new_tokens), "--temperature", "0.7", "--top-k", "20",
            *(["--limit", str(limit)] if limit else [])]


def seed_jobs(seed: int, cfg: dict, root: Path, quick: bool) -> list[Job]:
    """The stages of one seed, in the order they should start."""
    r = root / f"seed{seed}"
    test = r / "test.jsonl"
    tok = r / "sft_easy" / "model" / "tokenizer.json"
    weak = int(cfg["sft_steps"] * 0.8)
    sft = ["--batch-size", cfg["sft_batch"], "--lr", cfg["sft_lr"], "--max-steps", cfg["sft_steps"]]
    jobs = [Job("sft_easy", train("sft", r / "sft_easy", seed, cfg, "--levels", "1,2,3", *sft,
                                  "--save-every", weak, "--keep", 2), r / "sft_easy/model/config.json")]
    for name, levels in (("sft_all", "1,2,3,4,5"), ("sft_hard", "4,5")):
        jobs.append(Job(name, train("sft", r / name, seed, cfg, "--levels", levels, *sft,
                                    "--tokenizer", tok), r / name / "model/config.json", ["sft_easy"]))
    weak_dir = r / "sft_easy" / "checkpoints" / f"step_{weak:06d}" / "model"
    # the PRM samples the weak policy once; ORM and OPRM label those same solutions. Their AUCs
    # are measured by the rerank stage, on the test samples.
    samples = r / "prm" / "data" / "samples.jsonl"
    for algo in ("prm", "orm", "oprm"):
        flags = ["--levels", "1,2,3", "--model", r / "sft_easy/model", "--policy", weak_dir,
                 "--tokenizer", tok, "--lr", cfg["rm_lr"], "--eval-problems", 0,
                 "--max-steps", cfg["orm_steps" if algo == "orm" else "rm_steps"],
                 "--n-problems", cfg["rm_problems"], "--n-samples", cfg["rm_samples"]]
        if quick and algo == "orm":
            flags += ["--data", r / "orm_quick.jsonl"]
        elif algo != "prm":
            flags += ["--samples", samples]
        jobs.append(Job(algo, train(algo, r / algo, seed, cfg, *flags), r / algo / "model/config.json",
                        ["sft_easy"] if algo == "prm" else ["sft_easy", "prm"]))
    for name in ("sft_easy", "sft_all", "sft_hard"):
        n = cfg["n"] if name == "sft_easy" else cfg["t1_n"]
        jobs.append(Job(f"eval_{name}", evaluate(r / name / "model", test, r / f"eval_{name}",
                                                 seed, n, tok), r / f"eval_{name}/table.json", [name]))
    jobs.append(Job("rerank", [sys.executable, "study.py", "--rerank", str(r)],
                    r / "eval_sft_easy/rerank.json", ["eval_sft_easy", *EVALUATORS]))
    rl = ["--policy", r / "sft_easy/model", "--reward-model", r / "prm/model", "--tokenizer", tok,
          "--n-problems", cfg["rl_problems"]]
    ppo = ["--ppo-steps", cfg["ppo_steps"], "--rollouts", cfg["rollouts"], "--eval-every", 10]
    if quick:
        ppo += ["--batch-size", cfg["rollouts"]]
    dpo, rest = (["--pair-gap", 0], ["--hard-threshold", 0, "--answer-levels", "4,5"]) if quick else ([], [])
    rl_flags = {"ppo": ppo, "ppo_outcome": [*ppo, "--levels", "1,2,3", "--no-process-reward"],
                "dpo": dpo, "rest": rest}
    for name, flags in rl_flags.items():
        algo = name.split("_")[0]
        jobs.append(Job(name, train(algo, r / name, seed, cfg, *rl, *flags),
                        r / name / "model/config.json", ["sft_easy", "prm"]))
    for j in jobs:
        j.name, j.deps = f"seed{seed}/{j.name}", {f"seed{seed}/{d}" for d in j.deps}
    return jobs


def write_inputs(seed: int, cfg: dict, root: Path, quick: bool):
    """The test problems of a seed (and, in quick mode, the ORM's given records)."""
    from data import synthetic
    from data.readers import write_jsonl
    r = root / f"seed{seed}"
    r.mkdir(parents=True, exist_ok=True)
    write_jsonl(r / "test.jsonl", synthetic.make_split(cfg["test_problems"], seed=seed, split="test"))
    if quick:
        records, rng = [], random.Random(seed)
        for p in synthetic.make_split(4, levels=(1, 2, 3), seed=seed, split="train"):
            wrong = f"{(int(p['answer']) + rng.randint(1, 99)) % 100:02d}"
            for answer, label in ((p["answer"], 1), (wrong, 0)):
                records.append({"id": p["id"], "question": p["question"], "steps": p["steps"],
                                "answer": answer, "step_labels": [None] * len(p["steps"]),
                                "outcome_label": label, "level": p["level"]})
        write_jsonl(r / "orm_quick.jsonl", records)


# ----------------------------------------------------------------------------- real weights and data

REAL = dict(n=64, t1_n=16, test_limit=0, max_new_tokens=768, rl_problems=0, auc_records=0,
            seeds=3, train_flags=[], rl_flags=[])
REAL_QUICK = dict(n=4, t1_n=4, test_limit=8, max_new_tokens=24, rl_problems=2, auc_records=4,
                  seeds=1, train_flags=["--max-steps", 2, "--batch-size", 2, "--max-len", 160,
                               "--n-samples", 4, "--n-problems", 2, "--max-new-tokens", 24,
                               "--sample-batch-size", 2],
                  rl_flags=["--ppo-steps", 1, "--rollouts", 4, "--iterations", 1, "--pair-gap", 0,
                            "--temperature", 0.7, "--top-k", 5])


def real_files(data_dir: Path, tokenizer=None) -> dict:
    """The ../shared/data files the real study reads (PRM800K, MATH, the Llama-2 tokenizer)."""
    files = {"steptree": data_dir / "prm800k/phase1_train_steptree.jsonl",
             "auc_steptree": data_dir / "prm800k/phase1_test_steptree.jsonl",
             "math": data_dir / "math/math_train_12k.jsonl",
             "test": data_dir / "math/math500_test.jsonl",
             "tokenizer": Path(tokenizer) if tokenizer else data_dir / "tokenizer/llama2/tokenizer.json"}
    for key, path in files.items():
        if not path.is_file():
            sys.exit(f"study.py: {path}: file not found (--data-dir {data_dir}, needed for {key})")
    return files


def real_seed_jobs(seed: int, cfg: dict, root: Path, model: str, files: dict, quick: bool,
                   nproc: int = 1) -> list[Job]:
    """The same stages on real weights (--model: the base LM of every generator and evaluator)
    and data: SFT and PRM on PRM800K (easy = MATH levels 1-3), ORM samples on MATH train
    problems, evaluation on MATH500; the paper's hyper-parameters (train.py --hparams auto).
    ``nproc`` > 1 runs each training stage under torchrun with that many ranks (FSDP2)."""
    r = root / f"seed{seed}"
    launch = [sys.executable] + (["-m", "torch.distributed.run", "--standalone",
                                  f"--nproc_per_node={nproc}"] if nproc > 1 else [])
    def train_real(algo, name, *flags, math=True):
        common = ["--model", model, "--tokenizer", files["tokenizer"], *cfg["train_flags"]]
        common += ["--math-problems", files["math"]] if math else []
        return [*launch, "train.py", "--algo", algo, "--out", str(r / name), "--seed", str(seed),
                *map(str, common), *map(str, flags)]

    def evaluate_real(policy, name, n):
        return evaluate(policy, files["test"], r / name, seed, n, files["tokenizer"],
                        cfg["max_new_tokens"], cfg["test_limit"])

    # quick: the easy SFT trains long enough at a large lr to write "\n\n"-separated steps,
    # which the evaluators score and DPO pairs by (the other generators stay at 2 steps)
    learn = ["--max-steps", 60, "--lr", 3e-2] if quick else []
    jobs = [Job(name, train_real("sft", name, "--data", files["steptree"], "--levels", levels,
                                 *(learn if name == "sft_easy" else [])), r / name / "model/config.json")
            for name, levels in (("sft_easy", "1,2,3"), ("sft_all", "1,2,3,4,5"), ("sft_hard", "4,5"))]
    jobs.append(Job("icl", [sys.executable, "study.py", "--icl", str(r)], r / "icl.json"))
    policy = ["--policy", r / "sft_easy/model", "--levels", "1,2,3"]
    rm_flags = {"prm": ["--data", files["steptree"]], "orm": [], "oprm": ["--data", files["steptree"]]}
    if quick:   # a generator trained for seconds is never right: the ORM gets given examples
        rm_flags["orm"] = ["--data", r / "orm_quick.jsonl"]
    for algo in EVALUATORS:   # (quick ORM: the given records only, no sampling from MATH)
        jobs.append(Job(algo, train_real(algo, algo, *policy, *rm_flags[algo], math=not (quick and algo == "orm")),
                        r / algo / "model/config.json", ["sft_easy"]))
    for name in ("sft_easy", "sft_all", "sft_hard"):
        n = cfg["n"] if name == "sft_easy" else cfg["t1_n"]
        jobs.append(Job(f"eval_{name}", evaluate_real(r / name / "model", f"eval_{name}", n),
                        r / f"eval_{name}/table.json", [name]))
    jobs.append(Job("rerank", [sys.executable, "study.py", "--rerank", str(r)],
                    r / "eval_sft_easy/rerank.json", ["eval_sft_easy", *EVALUATORS]))
    rl = ["--policy", r / "sft_easy/model", "--reward-model", r / "prm/model", *cfg["rl_flags"]]
    rl += ["--n-problems", cfg["rl_problems"]] if cfg["rl_problems"] else []
    rl_flags = {"ppo": [], "ppo_outcome": ["--levels", "1,2,3", "--no-process-reward"], "dpo": [],
                "rest": ["--hard-threshold", 0, "--answer-levels", "4,5"] if quick else []}
    for name, flags in rl_flags.items():
        jobs.append(Job(name, train_real(name.split("_")[0], name, *rl, *flags),
                        r / name / "model/config.json", ["sft_easy", "prm"]))
        jobs.append(Job(f"eval_{name}", evaluate_real(r / name / "model", f"eval_{name}", 1),
                        r / f"eval_{name}/table.json", [name]))
    for j in jobs:
        j.name, j.deps = f"seed{seed}/{j.name}", {f"seed{seed}/{d}" for d in j.deps}
    return jobs


def write_real_inputs(seed: int, cfg: dict, root: Path, model: str, files: dict, quick: bool):
    """What the rerank / icl stages of a real seed read: settings, held-out PRM800K test step
    ratings (MATH500 problems, levels attached) and, in quick mode, the ORM's given records."""
    from data import prm800k
    from data.readers import load_math, write_jsonl
    r = root / f"seed{seed}"
    r.mkdir(parents=True, exist_ok=True)
    test = load_math(files["test"])
    _, records = prm800k.load_prm800k_steptree(files["auc_steptree"], math_problems=test)
    records = [x for x in records if x["level"] is not None]
    if cfg["auc_records"]:   # the first few of each difficulty
        kept = {"easy": [], "hard": []}
        for x in records:
            group = kept["easy" if x["level"] <= 3 else "hard"]
            if len(group) < cfg["auc_records"]:
                group.append(x)
        records = kept["easy"] + kept["hard"]
    write_jsonl(r / "auc_records.jsonl", records)
    settings = {"mode": "real", "model": str(model), "test": str(files["test"]), "math": str(files["math"]),
                "tokenizer": str(files["tokenizer"]), "limit": cfg["test_limit"],
                "max_new_tokens": cfg["max_new_tokens"], "seed": seed}
    (r / "inputs.json").write_text(json.dumps(settings, indent=1) + "\n")
    if quick:
        rows = []
        for p in [p for p in load_math(files["math"]) if p["level"] in (1, 2, 3)][:4]:
            for answer, label in ((p["answer"], 1), (p["answer"] + "1", 0)):
                rows.append({"id": p["id"], "question": p["question"], "steps": p["steps"],
                             "answer": answer, "step_labels": [None] * len(p["steps"]),
                             "outcome_label": label, "level": p["level"]})
        write_jsonl(r / "orm_quick.jsonl", rows)


def device_and_dtype():
    """A GPU in bfloat16 when there is one, else the CPU in float32 on one thread."""
    import torch
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    torch.set_num_threads(1)
    return "cpu", torch.float32


def icl(seed_dir: Path):
    """The few-shot baseline on the base model: 4 easy exemplars from MATH train, greedy."""
    import torch
    from data.readers import load_math
    from e2h.checkpoint import load_model
    from e2h.sft import evaluate_icl, pick_exemplars
    from e2h.tokenizer import Tokenizer
    inputs = json.loads((seed_dir / "inputs.json").read_text())
    device, dtype = device_and_dtype()
    model = load_model(inputs["model"], dtype=dtype, device=device).eval()
    exemplars = pick_exemplars(load_math(inputs["math"]), "easy", 4, random.Random(inputs["seed"]))
    problems = load_math(inputs["test"])[:inputs["limit"] or None]
    with torch.no_grad():
        samples, acc = evaluate_icl(model, Tokenizer(inputs["tokenizer"]), problems, exemplars,
                                    max_new_tokens=inputs["max_new_tokens"])
    from data.readers import write_jsonl
    write_jsonl(seed_dir / "icl_samples.jsonl", samples)
    (seed_dir / "icl.json").write_text(json.dumps({"greedy": acc}) + "\n")


def run_jobs(jobs: list[Job], workers: int, log_dir: Path, on_done=None) -> dict:
    """Run jobs whose dependencies are met, ``workers`` at a time, earliest in the list first;
    a job whose output exists is skipped. Returns {name: wall seconds}."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log_dir.mkdir(parents=True, exist_ok=True)
    pending, running, done, times = list(jobs), {}, set(), {}
    while pending or running:
        for job in list(pending):          # in list order, so a chain of cached stages clears
            if job.done_file.is_file() and job.deps <= done:
                pending.remove(job)
                done.add(job.name)
                print(f"[cached] {job.name}", flush=True)
        ready = [j for j in pending if j.deps <= done]
        while ready and len(running) < workers:
            job = ready.pop(0)
            pending.remove(job)
            log = open(log_dir / (job.name.replace("/", "_") + ".log"), "w")
            running[job.name] = (job, subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT,
                                                       env=env), time.time(), log)
            print(f"[start] {job.name}", flush=True)
        time.sleep(1)
        for name, (job, proc, t0, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            times[name] = time.time() - t0
            if proc.returncode != 0:
                for _, other, *_ in running.values():
                    other.kill()
                sys.exit(f"study.py: stage {name} failed (exit {proc.returncode}); see {log.name}")
            done.add(name)
            print(f"[done] {name} in {times[name]:.0f}s", flush=True)
            if on_done:
                on_done(done, times)
    return times


def rerank(seed_dir: Path):
    """Score the easy SFT policy's samples with each easy-trained evaluator and re-rank them
    (the same samples and subsets for every evaluator)."""
    import torch
    from e2h.checkpoint import load_model
    from e2h.evaluate import rerank_table, rm_auc_by_difficulty, score_samples
    from e2h.rm import aggregate
    from e2h.tokenizer import Tokenizer
    device, dtype = device_and_dtype()
    ev = seed_dir / "eval_sft_easy"
    args = json.loads((ev / "table.json").read_text())["args"]
    tok = Tokenizer(seed_dir / "sft_easy/model/tokenizer.json")
    samples = [json.loads(line) for line in (ev / "samples.jsonl").read_text().splitlines()]
    records = held_out_rm_records(seed_dir, samples)
    tables, kept = {}, [{k: s[k] for k in ("id", "level", "completion", "answer", "correct")} | {"scores": {}}
                        for s in samples]
    for name in EVALUATORS:
        rm = load_model(seed_dir / name / "model", dtype=dtype, device=device).eval()
        with torch.no_grad():
            scored = score_samples(rm, tok, [dict(s) for s in samples])
            auc = rm_auc_by_difficulty(rm, tok, records, 16)
        for k, s in zip(kept, scored):
            k["scores"][name] = {"steps": s["step_scores"], "outcome": s["outcome_score"]}
        tables[name] = rerank_table(scored, seed=args["seed"], with_rm=True)
        tables[name]["held_out_auc"] = auc
        tables[name]["within_auc"] = within_problem_auc(   # the score best-of-n ranks by
            scored, [aggregate(s["step_scores"] or [], s["outcome_score"], "min") for s in scored])
        del rm
    # the same quantity for the generator's own confidence: does the signal exist at all?
    policy = load_model(seed_dir / "sft_easy" / "model", dtype=dtype, device=device).eval()
    confidence = min_token_probs(policy, tok, samples)
    tables["generator"] = {"within_auc": within_problem_auc(samples, confidence)}
    for k, c in zip(kept, confidence):
        k["scores"]["generator_min_token_prob"] = c
    with gzip.open(ev / "scored_samples.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(k) + "\n" for k in kept)
    (ev / "rerank.json").write_text(json.dumps(tables) + "\n")


def held_out_rm_records(seed_dir: Path, samples: list[dict]) -> list[dict]:
    """Step-labelled RM records the evaluators never trained on: real mode, the PRM800K test
    ratings written by ``write_real_inputs``; synthetic, the first 4 test samples per problem
    with program-checked labels."""
    from data import synthetic
    from e2h.rm import prm_examples
    if (seed_dir / "inputs.json").is_file():
        return [json.loads(line) for line in (seed_dir / "auc_records.jsonl").read_text().splitlines()]
    problems = [json.loads(line) for line in (seed_dir / "test.jsonl").read_text().splitlines()]
    first = {}
    for s in samples:
        first.setdefault(s["id"], []).append(s)
    return prm_examples([s for group in first.values() for s in group[:4]], problems,
                        synthetic.label_solution)


def within_problem_auc(samples: list[dict], scores: list[float]) -> dict:
    """Mean over problems (with both right and wrong samples) of the ROC-AUC of ``scores``
    against correctness among that problem's own samples, per difficulty: the ranking quality
    weighted voting and best-of-n depend on (a global AUC also rewards telling easy problems
    from hard ones)."""
    from e2h.evaluate import difficulty_of
    from e2h.rm import roc_auc
    by_id = {}
    for s, score in zip(samples, scores):
        by_id.setdefault(s["id"], []).append((score, bool(s["correct"]), difficulty_of(s["level"])))
    out = {}
    for split in ("easy", "hard"):
        aucs = [roc_auc([x[0] for x in g], [x[1] for x in g]) for g in by_id.values()
                if g[0][2] == split and 0 < sum(x[1] for x in g) < len(g)]
        out[split] = float(np.mean(aucs)) if aucs else float("nan")
        out[f"{split}_problems"] = len(aucs)
    return out


def min_token_probs(policy, tok, samples: list[dict], batch_size: int = 64) -> list[float]:
    """Each sample's smallest completion-token probability under ``policy`` (temperature 1)."""
    import torch
    from e2h.rm import encode_completion
    from e2h.sft import collate, token_logps
    out = []
    for i in range(0, len(samples), batch_size):
        part = [encode_completion(tok, s["question"], s["completion"]) for s in samples[i:i + batch_size]]
        tokens = collate([p + c for p, c in part], tok.pad_id).to(next(policy.parameters()).device)
        with torch.no_grad():
            logps = token_logps(policy(tokens), tokens)                      # (B, T-1)
        for b, (p, c) in enumerate(part):
            out.append(float(logps[b, len(p) - 1:len(p) - 1 + len(c)].min().exp()) if c else 0.0)
    return out


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
    t1n, top = f"maj@{cfg['t1_n']}", str(cfg["n"])
    row = lambda name, by_split: f"| {name} | " + " | ".join(cell(by_split[k]) for k in SPLITS) + " |"
    head = ["| | Easy | Hard | All |", "|---|---|---|---|"]
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
    (out / "results.json").write_text(json.dumps({"meta": meta, "settings": cfg, "summary": summary,
                                                  "findings": found, "per_seed": per_seed}, indent=1) + "\n")
    (out / "report.md").write_text(markdown(summary, found, meta, cfg))
    for s in seeds:   # the re-ranked samples with every score, for a reader to re-analyse
        scored = runs / f"seed{s}" / "eval_sft_easy" / "scored_samples.jsonl.gz"
        if scored.is_file():
            (out / "samples").mkdir(exist_ok=True)
            shutil.copyfile(scored, out / "samples" / f"seed{s}_sft_easy.jsonl.gz")
    return found


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings: checks that every number is produced")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..S-1 (default: 3; quick: 2)")
    p.add_argument("--out", default="results", help="report folder; runs go to <out>/runs")
    p.add_argument("--runs", default=None, help="run folders, samples and logs (default: <out>/runs)")
    p.add_argument("--jobs", type=int, default=2, help="stages run at once")
    p.add_argument("--model", default=None, help="HF Llama directory (e.g. Llemma-7B): the real "
                   "study on PRM800K / MATH from --data-dir instead of the synthetic curriculum")
    p.add_argument("--data-dir", default="../shared/data", help="real data folder (with --model)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json with --model "
                   "(default: <data-dir>/tokenizer/llama2/tokenizer.json)")
    p.add_argument("--nproc", type=int, default=1, help="with --model: ranks per training stage "
                   "(torchrun, FSDP2; e.g. the GPU count, with --jobs 1)")
    p.add_argument("--rerank", default=None, help=argparse.SUPPRESS)   # internal stages
    p.add_argument("--icl", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rerank:
        return rerank(Path(args.rerank))
    if args.icl:
        return icl(Path(args.icl))
    if args.model and not (Path(args.model) / "config.json").is_file():
        sys.exit(f"study.py: --model {args.model}: no config.json there (an HF Llama directory)")
    files = real_files(Path(args.data_dir), args.tokenizer) if args.model else None
    cfg = dict((REAL_QUICK if args.quick else REAL) if args.model else (QUICK if args.quick else FULL))
    seeds = list(range(args.seeds or cfg.pop("seeds")))
    cfg.pop("seeds", None)
    out, runs = Path(args.out), Path(args.runs or Path(args.out) / "runs")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    jobs = []
    for s in seeds:
        if args.model:
            write_real_inputs(s, cfg, runs, args.model, files, args.quick)
            jobs += real_seed_jobs(s, cfg, runs, args.model, files, args.quick, args.nproc)
        else:
            write_inputs(s, cfg, runs, args.quick)
            jobs += seed_jobs(s, cfg, runs, args.quick)
    if args.model:
        test_set = greedy_set = "MATH500" + (f" (its first {cfg['test_limit']} problems)" if cfg["test_limit"] else "")
    else:
        test_set = f"{cfg['test_problems']} synthetic test problems per level"
        greedy_set = f"{cfg['eval_problems']} synthetic test problems per level"
    meta = {"mode": ("quick" if args.quick else "full") + (" real" if args.model else ""),
            "command": " ".join(["python", *sys.argv]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
            "test_set": test_set, "greedy_set": greedy_set}
    def stage_means(times):
        by_stage = {}
        for name, secs in times.items():
            by_stage.setdefault(name.split("/", 1)[1], []).append(secs)
        return {k: float(np.mean(v)) for k, v in by_stage.items()}

    def partial_report(done, times):   # the seeds finished so far, in case time runs out
        finished = [s for s in seeds if all(j.name in done for j in jobs if j.name.startswith(f"seed{s}/"))]
        if finished and len(done) < len(jobs):
            write_report(out, runs, finished, cfg, {**meta, "wall_s": time.time() - t0,
                                                    "stage_s": stage_means(times), "partial": True})

    times = run_jobs(jobs, args.jobs, runs / "logs", partial_report)
    meta.update(wall_s=time.time() - t0, stage_s=stage_means(times))
    found = write_report(out, runs, seeds, cfg, meta)
    print((out / "report.md").read_text())
    print(f"study: {len(found)} checks, {sum(f['reproduced'] is True for f in found)} reproduced; "
          f"wall {meta['wall_s'] / 60:.1f} min; report in {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
