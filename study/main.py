"""The study: the paper's findings (docs/paper.md, "Results to reproduce") in miniature, one command.

    python -m study                 # the full study on the synthetic curriculum, 3 seeds
    python -m study --quick         # every stage on tiny settings (CI; numbers meaningless)
    python -m study --model DIR     # the real study: an HF Llama (Llemma-7B) on PRM800K / MATH

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
4. F5 in miniature (synthetic study): a generator and a PRM of half the layers (preset
   small-half, 0.43M against 0.84M parameters), both from easy problems only, the half PRM
   trained on the same labelled solutions with the half generator as trunk; weighted voting
   against majority on Hard for the small generator with the half PRM and the half generator
   with the small PRM (the paper: 7B with a 34B evaluator, and 34B with a 7B one).
Re-ranking uses 100 test problems per level, greedy accuracy 100 per level (500). Findings
F1-F5 are computed from the numbers with rules fixed in ``study.report.findings``: each a
difference between two methods on the same problems, with its mean and std over seeds and a
bootstrap interval over problems (study/paired.py), reported as reproduced or not. Writes ``<out>/report.md`` and
``<out>/results.json``; runs, samples and logs go to ``--runs`` (the full study: runs/study).

Quick mode only checks that every number is produced: a generator trained for seconds is
never right, so its ORM trains on reference / corrupted solutions given with ``--data``, DPO
pairs on the PRM score alone (``--pair-gap 0``) and ReST-EM keeps solutions by PRM score.
With ``--model`` it runs every real stage on a few problems (tests/test_study_real.py).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from e2h.infra.errors import guard

from .inputs import real_files, write_inputs, write_real_inputs
from .report import EVALUATORS, write_report
from .runner import Job, lock, run_jobs

DONE = "done.json"   # what train.py writes last in its run folder (e2h/infra/runfolder.py)

FULL = dict(preset="small", half_preset="small-half", sft_steps=500, sft_batch=32, sft_lr=2e-3,
            eval_problems=100, rm_lr=3e-4, rm_steps=900, orm_steps=300, rm_problems=600,
            rm_samples=8, test_problems=100, n=32,
            t1_n=16, ppo_steps=30, rollouts=64, rl_problems=None, rl_eval_problems=300, seeds=3)
QUICK = dict(preset="tiny", half_preset="tiny", sft_steps=20, sft_batch=8, sft_lr=3e-3, eval_problems=2,
             rm_lr=1e-3, rm_steps=4, orm_steps=4, rm_problems=2, rm_samples=2, test_problems=2, n=4,
             t1_n=4, ppo_steps=2, rollouts=8, rl_problems=2, rl_eval_problems=2, seeds=2)


def train(algo, out, seed, cfg, *flags, preset=None) -> list[str]:
    """train.py with --resume: a re-run continues an interrupted stage, and refuses changed flags."""
    return [sys.executable, "train.py", "--algo", algo, "--out", str(out), "--resume", "--seed", str(seed),
            "--preset", preset or cfg["preset"], "--hparams", "embedded",
            "--eval-problems", str(cfg["eval_problems"]), *map(str, flags)]


def evaluate(policy, test, out, seed, n, tok, max_new_tokens=96, limit=0) -> list[str]:
    """e2h.evaluate at the paper's sampling settings (T 0.7, top-k 20); limit 0: every problem."""
    return [sys.executable, "-m", "e2h.evaluate", "--policy", str(policy), "--data", str(test),
            "--tokenizer", str(tok), "--out", str(out), "--n", str(n), "--seed", str(seed),
            "--max-new-tokens", str(max_new_tokens), "--temperature", "0.7", "--top-k", "20",
            *(["--limit", str(limit)] if limit else [])]


def rescore(r: Path, seed: int, held_out: list, generator="sft_easy", evaluators=EVALUATORS) -> list[str]:
    """e2h.evaluate re-scoring a generator's test samples with each evaluator, and the
    generator's own confidence, on the same samples and subsets."""
    rms = [f"{name}={r / name / 'model'}" for name in evaluators]
    ev = r / f"eval_{generator}"
    return [sys.executable, "-m", "e2h.evaluate", "--samples", str(ev / "samples.jsonl"),
            "--rm", *rms, "--confidence", str(r / generator / "model"), "--tokenizer",
            str(r / "sft_easy/model/tokenizer.json"), "--out", str(ev), "--seed", str(seed),
            *map(str, held_out)]


def seed_jobs(seed: int, cfg: dict, root: Path, quick: bool) -> list[Job]:
    """The stages of one seed, in the order they should start."""
    r = root / f"seed{seed}"
    test = r / "test.jsonl"
    tok = r / "sft_easy" / "model" / "tokenizer.json"
    weak = int(cfg["sft_steps"] * 0.8)
    sft = ["--batch-size", cfg["sft_batch"], "--lr", cfg["sft_lr"], "--max-steps", cfg["sft_steps"]]
    jobs = [Job("sft_easy", train("sft", r / "sft_easy", seed, cfg, "--levels", "1,2,3", *sft,
                                  "--save-every", weak, "--keep", 2), r / "sft_easy" / DONE)]
    for name, levels in (("sft_all", "1,2,3,4,5"), ("sft_hard", "4,5")):
        jobs.append(Job(name, train("sft", r / name, seed, cfg, "--levels", levels, *sft,
                                    "--tokenizer", tok), r / name / DONE, ["sft_easy"]))
    # F5: a generator and an evaluator of half the layers (half the parameters), easy only
    jobs.append(Job("sft_easy_half", train("sft", r / "sft_easy_half", seed, cfg, "--levels", "1,2,3",
                                           *sft, "--tokenizer", tok, preset=cfg["half_preset"]),
                    r / "sft_easy_half" / DONE, ["sft_easy"]))
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
        jobs.append(Job(algo, train(algo, r / algo, seed, cfg, *flags), r / algo / DONE,
                        ["sft_easy"] if algo == "prm" else ["sft_easy", "prm"]))
        if algo == "prm":   # the half-size PRM: the same labelled solutions, its own trunk
            half = [*flags, "--samples", samples]
            half[half.index("--model") + 1] = r / "sft_easy_half/model"
            jobs.append(Job("prm_half", train("prm", r / "prm_half", seed, cfg, *half),
                            r / "prm_half" / DONE, ["sft_easy_half", "prm"]))
    for name in ("sft_easy", "sft_all", "sft_hard", "sft_easy_half"):
        n = cfg["n"] if name.startswith("sft_easy") else cfg["t1_n"]
        jobs.append(Job(f"eval_{name}", evaluate(r / name / "model", test, r / f"eval_{name}",
                                                 seed, n, tok), r / f"eval_{name}/table.json", [name]))
    jobs.append(Job("rerank", rescore(r, seed, ["--synthetic-problems", test],
                                      evaluators=(*EVALUATORS, "prm_half")),
                    r / "eval_sft_easy/rerank.json", ["eval_sft_easy", *EVALUATORS, "prm_half"]))
    jobs.append(Job("rerank_half", rescore(r, seed, ["--synthetic-problems", test], "sft_easy_half",
                                           ("prm",)),
                    r / "eval_sft_easy_half/rerank.json", ["eval_sft_easy_half", "prm"]))
    # RL keeps its best policy by greedy validation: 300 problems per level, not 100 (a standard
    # error near 2 points on All against ~3), and reports test accuracy on as many
    rl = ["--policy", r / "sft_easy/model", "--reward-model", r / "prm/model", "--tokenizer", tok,
          "--eval-problems", cfg["rl_eval_problems"]]
    rl += ["--n-problems", cfg["rl_problems"]] if cfg["rl_problems"] else []   # None: the defaults
    ppo = ["--ppo-steps", cfg["ppo_steps"], "--rollouts", cfg["rollouts"], "--eval-every", 10]
    if quick:
        ppo += ["--batch-size", cfg["rollouts"]]
    dpo, rest = (["--pair-gap", 0], ["--hard-threshold", 0, "--answer-levels", "4,5"]) if quick else ([], [])
    rl_flags = {"ppo": ppo, "ppo_outcome": [*ppo, "--levels", "1,2,3", "--no-process-reward"],
                "dpo": dpo, "rest": rest}
    for name, flags in rl_flags.items():
        algo = name.split("_")[0]
        jobs.append(Job(name, train(algo, r / name, seed, cfg, *rl, *flags),
                        r / name / DONE, ["sft_easy", "prm"]))
    for j in jobs:
        j.name, j.deps = f"seed{seed}/{j.name}", {f"seed{seed}/{d}" for d in j.deps}
    return jobs


# ----------------------------------------------------------------------------- real weights and data

# 7B on 80 GB GPUs: the memory plan (python -m e2h.memory) needs activation checkpointing for
# SFT and one prompt per generate call for the 32-sample ORM / ReST-EM data (docs/scale.md)
REAL = dict(n=64, t1_n=16, test_limit=0, max_new_tokens=768, rl_problems=0, auc_records=0,
            seeds=3, train_flags=["--activation-checkpointing", "--sample-batch-size", 1],
            rl_flags=[])
REAL_QUICK = dict(n=4, t1_n=4, test_limit=8, max_new_tokens=24, rl_problems=2, auc_records=4,
                  seeds=1, train_flags=["--max-steps", 2, "--batch-size", 2, "--max-len", 160,
                               "--n-samples", 4, "--n-problems", 2, "--max-new-tokens", 24,
                               "--sample-batch-size", 2],
                  rl_flags=["--ppo-steps", 1, "--rollouts", 4, "--iterations", 1, "--pair-gap", 0,
                            "--temperature", 0.7, "--top-k", 5])


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
        return [*launch, "train.py", "--algo", algo, "--out", str(r / name), "--resume", "--seed", str(seed),
                *map(str, common), *map(str, flags)]

    def evaluate_real(policy, name, n):
        return evaluate(policy, files["test"], r / name, seed, n, files["tokenizer"],
                        cfg["max_new_tokens"], cfg["test_limit"])

    # quick: the easy SFT trains long enough at a large lr to write "\n\n"-separated steps,
    # which the evaluators score and DPO pairs by (the other generators stay at 2 steps)
    learn = ["--max-steps", 60, "--lr", 3e-2] if quick else []
    jobs = [Job(name, train_real("sft", name, "--data", files["steptree"], "--levels", levels,
                                 *(learn if name == "sft_easy" else [])), r / name / DONE)
            for name, levels in (("sft_easy", "1,2,3"), ("sft_all", "1,2,3,4,5"), ("sft_hard", "4,5"))]
    icl = ["--model", model, "--math", files["math"], "--test", files["test"], "--tokenizer",
           files["tokenizer"], "--out", r, "--limit", cfg["test_limit"], "--max-new-tokens",
           cfg["max_new_tokens"], "--seed", seed]
    jobs.append(Job("icl", [sys.executable, "-m", "e2h.icl", *map(str, icl)], r / "icl.json"))
    policy = ["--policy", r / "sft_easy/model", "--levels", "1,2,3"]
    rm_flags = {"prm": ["--data", files["steptree"]], "orm": [], "oprm": ["--data", files["steptree"]]}
    if quick:   # a generator trained for seconds is never right: the ORM gets given examples
        rm_flags["orm"] = ["--data", r / "orm_quick.jsonl"]
    for algo in EVALUATORS:   # (quick ORM: the given records only, no sampling from MATH)
        jobs.append(Job(algo, train_real(algo, algo, *policy, *rm_flags[algo], math=not (quick and algo == "orm")),
                        r / algo / DONE, ["sft_easy"]))
    for name in ("sft_easy", "sft_all", "sft_hard"):
        n = cfg["n"] if name == "sft_easy" else cfg["t1_n"]
        jobs.append(Job(f"eval_{name}", evaluate_real(r / name / "model", f"eval_{name}", n),
                        r / f"eval_{name}/table.json", [name]))
    jobs.append(Job("rerank", rescore(r, seed, ["--rm-records", r / "auc_records.jsonl"]),
                    r / "eval_sft_easy/rerank.json", ["eval_sft_easy", *EVALUATORS]))
    rl = ["--policy", r / "sft_easy/model", "--reward-model", r / "prm/model", *cfg["rl_flags"]]
    rl += ["--n-problems", cfg["rl_problems"]] if cfg["rl_problems"] else []
    rl_flags = {"ppo": [], "ppo_outcome": ["--levels", "1,2,3", "--no-process-reward"], "dpo": [],
                "rest": ["--hard-threshold", 0, "--answer-levels", "4,5"] if quick else []}
    for name, flags in rl_flags.items():
        jobs.append(Job(name, train_real(name.split("_")[0], name, *rl, *flags),
                        r / name / DONE, ["sft_easy", "prm"]))
        jobs.append(Job(f"eval_{name}", evaluate_real(r / name / "model", f"eval_{name}", 1),
                        r / f"eval_{name}/table.json", [name]))
    for j in jobs:
        j.name, j.deps = f"seed{seed}/{j.name}", {f"seed{seed}/{d}" for d in j.deps}
    return jobs


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m study", description=__doc__.split("\n")[0])
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
    args = p.parse_args(argv)
    if args.model and not (Path(args.model) / "config.json").is_file():
        sys.exit(f"study: --model {args.model}: no config.json there (an HF Llama directory)")
    files = real_files(Path(args.data_dir), args.tokenizer) if args.model else None
    cfg = dict((REAL_QUICK if args.quick else REAL) if args.model else (QUICK if args.quick else FULL))
    seeds = list(range(args.seeds or cfg.pop("seeds")))
    cfg.pop("seeds", None)
    out, runs = Path(args.out), Path(args.runs or Path(args.out) / "runs")
    out.mkdir(parents=True, exist_ok=True)
    lock_fd = lock(runs)   # held until this process and its stages end
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
        greedy_set = f"{cfg['rl_eval_problems']} synthetic test problems per level"
    meta = {"mode": ("quick" if args.quick else "full") + (" real" if args.model else ""),
            "command": " ".join(["python", "-m", "study", *sys.argv[1:]]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
            "test_set": test_set, "greedy_set": greedy_set}
    def stage_means(times):
        by_stage, names = {}, {j.name for j in jobs}
        for name, secs in times.items():
            if name not in names:
                continue
            by_stage.setdefault(name.split("/", 1)[1], []).append(secs)
        return {k: float(np.mean(v)) for k, v in by_stage.items()}

    def partial_report(done, times):   # the seeds finished so far, in case time runs out
        finished = [s for s in seeds if all(j.name in done for j in jobs if j.name.startswith(f"seed{s}/"))]
        if finished and len(done) < len(jobs):
            write_report(out, runs, finished, cfg, {**meta, "wall_s": time.time() - t0,
                                                    "stage_s": stage_means(times), "partial": True})

    times = run_jobs(jobs, args.jobs, runs / "logs", lock_fd, partial_report)
    mine = [secs for name, secs in times.items() if name in {j.name for j in jobs}]
    meta.update(wall_s=time.time() - t0, stage_s=stage_means(times), stages_total_s=sum(mine))
    found = write_report(out, runs, seeds, cfg, meta)
    print((out / "report.md").read_text())
    print(f"study: {len(found)} checks, {sum(f['reproduced'] is True for f in found)} reproduced; "
          f"wall {meta['wall_s'] / 60:.1f} min; report in {out / 'report.md'}")
    return 0


def run() -> int:
    """``python -m study``: main under the commands' failure handling (e2h/infra/errors.py)."""
    return guard(main, interrupted="interrupted; its stages are ended, and running the same "
                                   "python -m study command again continues")
