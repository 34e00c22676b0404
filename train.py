"""Train one stage of easy-to-hard generalization: sft, orm, prm, oprm, dpo, ppo, rest or grpo.

    python train.py --algo sft                        # embedded default: synthetic curriculum, CPU
    torchrun --nproc_per_node=2 train.py --algo dpo   # trains the SFT and PRM stages it needs first
    torchrun --nproc_per_node=8 train.py --algo sft --model path/to/llemma_7b \\
        --data prm800k/phase1_train_steptree.jsonl --math-problems math/math_train_12k.jsonl

The final weights land in <out>/model/ (default --out: runs/<algo>), the --policy or
--reward-model of the next stage; a stage an algorithm needs and was not given is trained first
and cached. A run also draws curves.svg (`python -m e2h.curves` overlays runs).
The run folder, resuming, stopping and failures: docs/runs.md.

Every supervised algorithm (sft, the reward models, each DPO and ReST-EM iteration) runs the same
loop (e2h/loop.py): a seeded permutation of the data per epoch, gradient accumulation up to the
global batch, AdamW, warmup then cosine learning rate, gradient clipping; PPO and GRPO alternate
rollouts and updates through the same step bookkeeping. What each algorithm builds and trains on is in
e2h/recipes.py (the reward models' in e2h/rm_stage.py), its data in data/sources.py, its flags in
e2h/flags.py, the regime defaults of unset flags in e2h/defaults.py; under torchrun,
e2h/infra/distributed.py shards every model with FSDP2.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from e2h import curves, memory_check, recipes, rm_stage
from e2h.infra import host, runfolder, trainstate
from e2h.infra import distributed as dist
from e2h.infra.errors import Interrupted, guard
from e2h.defaults import needs_reward_model
from e2h.flags import ALGOS, get_args
from e2h.infra.files import write_json
from e2h.infra.preemption import Preempted
from e2h.run import Run, Stopped, check_model_dir, setup_tokenizer
from e2h.tokenizer import Tokenizer

# ----------------------------------------------------------------------------- stage chaining

SHARED = ("preset", "seed", "max_steps", "dtype", "n_problems", "max_len", "max_new_tokens",
          "activation_checkpointing", "model", "tokenizer", "data", "math_problems",
          "eval_problems", "sample_batch_size", "eval_batch_size")
# flags that cannot change what a stage computes: its cache key leaves them out
NOT_HASHED = ("out", "resume", "overwrite", "allow_changed_flags", "stop_after", "save_every",
              "keep", "explicit", "dist_timeout", "eval_batch_size", "eval_problems",
              "test_problems")
# what a resume may change freely: those (but the evaluations' sizes) and how a batch is split
# into micro-batches, which follows the number of ranks and changes only float rounding
NEUTRAL = (*NOT_HASHED[:-2], "micro_batch_size")
RL = ("dpo", "ppo", "rest", "grpo")
# flags only some algorithms read: a stage's cache key leaves out the flags it never uses, so
# changing DPO's beta (or its default) reuses the cached SFT and PRM stages
USED_BY = {"beta": ("dpo",), "rpo_alpha": ("dpo",), "pair_gap": ("dpo",), "max_pairs": ("dpo",), "hard_gap": ("dpo",), "step_pairs": ("dpo",),
           "max_per_problem": ("rest",), "hard_threshold": ("rest",), "easy_threshold": ("rest",), "iterations": ("dpo", "rest"),
           "ppo_steps": ("ppo",), "rollouts": ("ppo", "grpo"), "kl_coef": ("ppo", "grpo"),
           "clip": ("ppo", "grpo"), "grpo_steps": ("grpo",), "group_size": ("grpo",),
           "no_scale_rewards": ("grpo",), "process_advantages": ("grpo",),
           "value_clip": ("ppo",), "vf_coef": ("ppo",),
           "value_lr": ("ppo",), "value_warmup_steps": ("ppo",), "no_process_reward": ("ppo", "grpo"),
           "u": ("ppo",), "step_bonus": ("ppo",), "hard_reward": ("ppo",),
           "format_penalty": ("ppo",), "gamma": ("ppo",), "lam": ("ppo",),
           "eval_every": ("ppo", "sft", "grpo"), "answer_levels": RL, "reward_model": RL,
           "validation_data": RL,
           "samples": rm_stage.RM_ALGOS}


def as_argv(key: str, value) -> list[str]:
    flag = "--" + key.replace("_", "-")
    if value is True:
        return [flag]
    return [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]


def stage_dir(args, stage: str, extra=()) -> tuple[Path, list[str]]:
    """Where ``stage`` trained with this run's shared flags is cached, and its argv: the flags
    of this run that the stage shares (those given on the command line), with the stage's own
    resolved settings (``stage_settings``) hashed into ``<out>/../cache/<stage>-<hash>``."""
    argv = ["--algo", stage, "--hparams", args.hparams, *extra]
    for key in SHARED:
        if key in args.explicit:
            argv += as_argv(key, getattr(args, key))
    settings = stage_settings(get_args(argv))
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return Path(args.out).parent / "cache" / f"{stage}-{key}", argv


def stage_settings(args) -> dict:
    """The resolved flags a run of ``args.algo`` reads, less those that cannot change its result."""
    return {k: v for k, v in vars(args).items()
            if k not in NOT_HASHED and args.algo in USED_BY.get(k, ALGOS)}


def required_stage(args, stage: str, flag: str, extra=()) -> str:
    """The final model folder of ``stage`` (``stage_dir``); a later run with the same settings
    finds it there and trains nothing."""
    out, argv = stage_dir(args, stage, extra)
    # another run may be training the same stage: wait for it, then use what it cached
    with runfolder.locked(out, wait=True, what=f"{stage.upper()} stage"):
        if (out / runfolder.DONE).is_file():
            dist.say(f"no --{flag} given: using the {stage.upper()} stage cached at {out}")
        else:
            # the folder name pins every flag that matters; only the closing evaluation may differ
            dist.say(f"no --{flag} given: training the {stage.upper()} stage first (cached at {out})")
            main(argv + ["--out", str(out), "--resume", "--allow-changed-flags"])
    return str(out / "model")


# ----------------------------------------------------------------------------- entry point


def check_models(args):
    """Each model flag names a model directory of the kind it takes."""
    check = {"model": None, "policy": False, "reward_model": True}
    for flag, reward in check.items():
        if getattr(args, flag):
            check_model_dir(flag.replace("_", "-"), getattr(args, flag), reward)


def main(argv=None) -> int:
    args = get_args(argv)
    device = dist.init(args.dist_timeout)
    check_models(args)
    out = Path(args.out)
    with runfolder.locked(out):   # one run per folder: claimed before anything is written there
        return run_in(out, args, device)


def stopped(e: Preempted, run: Run) -> str:
    """The line a stop signal ends a run with: where it stopped and what resumes it."""
    latest = trainstate.latest(run.out)
    if latest is not None and latest == trainstate.checkpoint_dir(run.out, run.step):
        return (f"{e.name}: stopped at step {run.step}, checkpoint {latest}; the same command "
                "with --resume continues from it")
    return (f"{e.name}: stopped at step {run.step}; the same command with --resume continues "
            f"from {latest or 'step 0'}")


def run_in(out: Path, args, device) -> int:
    """The run of ``args`` in the folder ``out``, which this process holds."""
    # before any stage is trained for it: may this run use --out, and from which checkpoint
    resume_from, changes = runfolder.claim(out, args, NEUTRAL, pending=("policy", "reward_model"))
    if needs_reward_model(args):
        args.policy = args.policy or required_stage(args, "sft", "policy")
        args.reward_model = args.reward_model or required_stage(
            args, "prm", "reward-model", ["--policy", args.policy])
    elif args.algo in RL or (args.algo in rm_stage.RM_ALGOS and rm_stage.samples_policy(args)):
        args.policy = args.policy or required_stage(args, "sft", "policy")
    line, fits, tight = memory_check.for_run(args, device)   # refuse a run that cannot fit
    if not fits:
        raise ValueError(line)
    if tight:   # freed tensors go back to the system, so the peak stays the plan's
        host.return_freed_memory()
    dist.say(line)
    runfolder.begin(out, args)
    tok_path = setup_tokenizer(args, out)
    run = Run(args, out, device, Tokenizer(tok_path), tok_path)
    if args.resume:
        run.resume_from(resume_from)
        if changes:
            run.log({"step": run.step, "changed_flags": changes})
        if resume_from is not None:
            dist.say(f"resuming from {resume_from} (step {run.step})")
    t0 = time.time()
    try:
        summary = recipes.TRAIN[args.algo](run)
    except Stopped as e:
        dist.say(str(e))
        return 0
    except Preempted as e:
        raise Preempted(e.signum, stopped(e, run)) from None
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted at step {run.step}; --resume continues from "
                          f"{trainstate.latest(out) or 'step 0'}") from None
    seconds = time.time() - t0
    if dist.is_main():   # the run's curves, then the marker of a complete run, written last
        curves.write_curves([out], out / "curves.svg")
        write_json(out / runfolder.DONE, {"algo": args.algo, "steps": run.step,
                                          "seconds": round(seconds, 1), "summary": summary})
    dist.say(f"done: {args.algo} in {seconds:.0f}s, {run.step} steps; "
        + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
        + f"; model in {out / 'model'}")
    return 0


if __name__ == "__main__":
    code = guard(main, interrupted="interrupted before the first step; nothing to resume yet")
    dist.shutdown(clean=code == 0)
    sys.exit(code)
