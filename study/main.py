"""The study: the paper's findings (docs/paper.md, "Results to reproduce") in miniature, one command.

    python -m study                 # the full study on the synthetic curriculum, 3 seeds (79 min)
    python -m study --seeds 1       # one seed: about 28 minutes on 2 cores (cost below)
    python -m study --quick         # every stage on tiny settings (CI; numbers meaningless)
    python -m study --model DIR     # the real study: an HF Llama (Llemma-7B) on PRM800K / MATH

Per seed, every stage runs as a subprocess of the entry points users run (``train.py``,
``python -m e2h.evaluate``), two at a time, each on one thread; finished stages are skipped on
a re-run (their outputs are the cache). On the synthetic curriculum every training stage runs
at the embedded defaults (e2h/defaults.py: the paper's supervision regime, each stage drawing
problems of its own role); the flags given below are where the study differs, each said why.
Stages:
1. generators (Table 1): SFT on easy (levels 1-3), on all levels, on hard (4-5), each on 300
   reference solutions per level for 15 epochs, validated every 28 steps; greedy and
   majority@16 on Easy / Hard / All. ICL runs on real weights only: the embedded base model is
   randomly initialized, so a few-shot prompt would test nothing the paper's ICL row tests.
2. evaluators trained on easy problems only (ORM, PRM, OPRM): majority vs weighted voting vs
   best-of-n at N = 1, 2, ..., 32 over one set of samples from the easy SFT policy; each
   evaluator's step / outcome ROC-AUC on held-out easy and hard solutions, and its ROC-AUC
   *within* each problem's samples (what voting depends on), next to the same quantity for the
   generator's own smallest token probability. The PRM is the embedded default's: 16 samples
   of each of the SFT problems from the final easy SFT policy, program-labelled, one epoch
   (900 steps) on the policy as trunk; ORM and OPRM label the same solutions (``--samples``),
   the ORM, which no finding needs at full strength, for 300 steps, the OPRM for the PRM's 900.
3. RL from the easy SFT policy (Table 2), at the embedded defaults, on problems SFT never saw:
   PPO (all levels, easy final answers, process reward from the easy PRM), GRPO (all levels,
   the PRM's score + easy answers) and iterative DPO (pairs scored by the PRM) use the
   evaluator; PPO with the final-answer reward only on easy problems and ReST-EM (easy final
   answers, 600 problems per level) do not and are the paper's comparison rows. Greedy
   accuracy from each run's closing evaluation (real: ``e2h.evaluate`` on MATH500).
4. F5 in miniature (synthetic study): a generator and a PRM of half the layers (preset
   small-half, 0.43M against 0.84M parameters), both from easy problems only, the half PRM
   trained on the same labelled solutions with the half generator as trunk; weighted voting
   against majority on Hard for the small generator with the half PRM and the half generator
   with the small PRM (the paper: 7B with a 34B evaluator, and 34B with a 7B one).
Re-ranking uses 100 test problems per level, RL's validation 250 per level (1,250) and its
greedy test accuracy 500 per level (2,500). Findings F1-F5 are computed from the numbers with
rules fixed in ``study.report.findings``: each a difference between two methods on the same
problems, with its mean and std over seeds and a bootstrap interval over problems
(study/paired.py), reported as reproduced or not. Writes ``<out>/report.md`` and
``<out>/results.json`` (after each seed that finishes, a partial report of the seeds done);
runs, samples and logs go to ``--runs`` (default ``<out>/runs``).

Cost on 2 cores, measured (results/report.md: 2026-12-07, nothing else on the cores): seconds
of each stage on one thread, mean over three seeds,

    sft_easy 149 (211 steps)   sft_all 249 (352)      sft_hard 106 (141)   sft_easy_half 80
    prm 191 (sampling + 900)   prm_half 73            orm 48               oprm 142
    ppo 149   ppo_outcome 146  grpo 126    dpo 633    rest 299   (RL: validation at 250 and
                                                                  test at 500 problems per level)
    eval_sft_* 231 together    rerank 337             rerank_half 116

about 51 core-minutes per seed, RL 23 of them. Two stages at a time, three seeds took 79
minutes of wall time (seed 0 was done after 28); the sum alone puts three seeds above 76
minutes, so they do not fit in an hour at the embedded defaults. ``--seeds 3`` on the same
--runs after ``--seeds 1`` adds the other two (finished stages are kept).

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

# What the synthetic study sets itself; every training flag it does not give takes the embedded
# default of its stage (e2h/defaults.py EMBEDDED and the data budget table there).
FULL = dict(preset="small", half_preset="small-half", eval_problems=100, test_problems=100,
            n=32, t1_n=16, rl_eval_problems=250, rl_test_problems=500,
            rm_steps={"orm": 300, "oprm": 900}, seeds=3)
# Quick mode: the same stages on tiny settings; "flags" are added to the stages' command lines
QUICK = dict(preset="tiny", half_preset="tiny", eval_problems=2, test_problems=2, n=4, t1_n=4,
             rl_eval_problems=2, rl_test_problems=2, rm_steps={"prm": 4, "orm": 4, "oprm": 4},
             seeds=2,
             flags={"sft": ["--max-steps", 20, "--batch-size", 8],
                    "rm": ["--lr", 1e-3, "--n-problems", 2, "--n-samples", 2],
                    "rl": ["--n-problems", 2],
                    "ppo": ["--ppo-steps", 2, "--rollouts", 8, "--batch-size", 8],
                    "grpo": ["--grpo-steps", 2, "--rollouts", 8, "--batch-size", 8],
                    # a generator trained for seconds is never right: DPO pairs on the PRM
                    # score alone, ReST-EM keeps hard solutions by PRM score
                    "dpo": ["--pair-gap", 0], "rest": ["--hard-threshold", 0, "--answer-levels", "4,5"]})


def train(algo, out, seed, cfg, *flags, preset=None) -> list[str]:
    """train.py with --resume: a re-run continues an interrupted stage, and refuses changed flags."""
    return [sys.executable, "train.py", "--algo", algo, "--out", str(out), "--resume", "--seed", str(seed),
            "--preset", preset or cfg["preset"], "--hparams", "embedded",
            "--eval-problems", str(cfg["eval_problems"]), *map(str, flags)]


def evaluate(policy, test, out, seed, n, tok, max_new_tokens=96, limit=0) -> list[str]:
    """e2h.evaluate at the paper's sampling settings (T 0.7, top-k 20); limit 0: every problem."""
    return [sys.executable, "-m", "e2h.evaluate", "--policy", str(policy), "--data", str(test),
            "--tokenizer", str(tok), "--out", str(out), "--n-samples", str(n), "--seed", str(seed),
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
    flags = lambda stage: cfg.get("flags", {}).get(stage, [])   # quick mode's tiny settings
    # SFT at the embedded default: 300 reference solutions per level of the sft role, 15 epochs,
    # validated every 28 steps (the best policy kept). sft_all and sft_hard get the same scarce
    # budget per level; they share sft_easy's tokenizer so that every model reads the same ids
    jobs = [Job("sft_easy", train("sft", r / "sft_easy", seed, cfg, *flags("sft")), r / "sft_easy" / DONE)]
    for name, levels in (("sft_all", "1,2,3,4,5"), ("sft_hard", "4,5")):
        jobs.append(Job(name, train("sft", r / name, seed, cfg, "--levels", levels, *flags("sft"),
                                    "--tokenizer", tok), r / name / DONE, ["sft_easy"]))
    # F5: a generator and an evaluator of half the layers (half the parameters), easy only
    jobs.append(Job("sft_easy_half", train("sft", r / "sft_easy_half", seed, cfg, *flags("sft"),
                                           "--tokenizer", tok, preset=cfg["half_preset"]),
                    r / "sft_easy_half" / DONE, ["sft_easy"]))
    # The evaluators as the embedded PRM: 16 samples of each of 300 easy problems per level from
    # the final easy SFT policy, program-labelled, the policy as trunk. (The study once sampled an
    # earlier checkpoint, at 80 % of its steps, for more wrong steps. The scarce-supervision SFT
    # policy needs no help to err, greedy 44 % right on easy test problems (bench/README.md), and
    # its model/ is the best validated checkpoint, not the last step: the PRM measured there,
    # held-out step AUC 0.94 / 0.77 easy / hard, was trained on the final policy's samples.)
    # The PRM samples once; ORM and OPRM label the same solutions (--samples). The ORM, which no
    # finding needs at full strength, trains 300 steps; the OPRM (the PRM's and the ORM's records)
    # as many as the PRM, 900, short of one epoch of its data. Their AUCs are measured by the
    # rerank stage, on the test samples, so their own closing evaluation is off.
    samples = r / "prm" / "data" / "samples.jsonl"
    for algo in ("prm", "orm", "oprm"):
        steps = cfg["rm_steps"].get(algo)
        rm = ["--policy", r / "sft_easy/model", "--tokenizer", tok, "--eval-problems", 0,
              *(["--max-steps", steps] if steps else []), *flags("rm")]
        if quick and algo == "orm":
            rm += ["--data", r / "orm_quick.jsonl"]
        elif algo != "prm":
            rm += ["--samples", samples]
        jobs.append(Job(algo, train(algo, r / algo, seed, cfg, *rm), r / algo / DONE,
                        ["sft_easy"] if algo == "prm" else ["sft_easy", "prm"]))
        if algo == "prm":   # the half-size PRM: the same labelled solutions, its own trunk
            half = [*rm, "--samples", samples, "--model", r / "sft_easy_half/model"]
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
    # RL at the embedded defaults, on problems of the rl role (none of SFT's). Each run keeps its
    # best policy by greedy validation on 250 problems per level, not the default 100 (a standard
    # error near 1.4 points on All against ~2.2; level 1's validation role holds 285), and
    # reports test accuracy on 500 per level (level 1's test role holds 520)
    rl = ["--policy", r / "sft_easy/model", "--reward-model", r / "prm/model", "--tokenizer", tok,
          "--eval-problems", cfg["rl_eval_problems"], "--test-problems", cfg["rl_test_problems"],
          *flags("rl")]
    rl_flags = {"ppo": [], "ppo_outcome": ["--levels", "1,2,3", "--no-process-reward"],
                "grpo": [], "dpo": [], "rest": []}
    for name, own in rl_flags.items():
        algo = name.split("_")[0]
        jobs.append(Job(name, train(algo, r / name, seed, cfg, *rl, *own, *flags(algo)),
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
                  rl_flags=["--ppo-steps", 1, "--grpo-steps", 1, "--group-size", 2, "--rollouts", 4,
                            "--iterations", 1, "--pair-gap", 0,
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
    rl_flags = {"ppo": [], "ppo_outcome": ["--levels", "1,2,3", "--no-process-reward"], "grpo": [],
                "dpo": [], "rest": ["--hard-threshold", 0, "--answer-levels", "4,5"] if quick else []}
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
        greedy_set = f"{cfg['rl_test_problems']} synthetic test problems per level"
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
