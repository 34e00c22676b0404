"""Train one stage of easy-to-hard generalization: sft, orm, prm, oprm, dpo, ppo or rest.

    python train.py --algo sft                        # embedded default: synthetic curriculum, CPU
    torchrun --nproc_per_node=2 train.py --algo dpo   # trains the SFT and PRM stages it needs first
    torchrun --nproc_per_node=8 train.py --algo sft --model llemma_7b \\
        --data prm800k/phase1_train_steptree.jsonl --math-problems math/math_train_12k.jsonl

A run folder (--out, default runs/<algo>) belongs to one run (e2h/runfolder.py). It holds
args.json (the settings, written once; --resume refuses other flags unless --allow-changed-flags),
metrics.jsonl (one line per optimizer step), checkpoints/step_N/ (HF weights and the sharded
training state with their checksums; --resume continues from the newest intact one), data/ (the
examples it trained on; a reward model's sampled solutions in data/samples.jsonl, which --samples
lets another reward model label), model/, the final weights in the HF layout with their
tokenizer.json (the --policy or --reward-model of the next stage), and done.json, written last.
A stage that an algorithm needs and was not given is trained first into
<out>/../cache/<stage>-<hash of its settings>, and reused by later runs. An expected failure
(a bad flag, file or record, a full disk, a NaN loss) ends with one line naming it (e2h/errors.py).

Every supervised algorithm (sft, the reward models, each DPO and ReST-EM iteration) runs the same
loop (e2h/loop.py): a seeded permutation of the data per epoch, gradient accumulation up to the
global batch, AdamW, warmup then cosine learning rate, gradient clipping; PPO alternates rollouts
and updates through the same step bookkeeping. What each algorithm builds and trains on is in
e2h/recipes.py, its data in data/sources.py, the regime defaults of unset flags in
e2h/defaults.py; under torchrun, e2h/distributed.py shards every model with FSDP2.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from e2h import defaults, host, memory, recipes, runfolder, trainstate
from e2h import distributed as dist
from e2h.errors import Interrupted, guard
from e2h.files import write_json
from e2h.run import Run, Stopped, check_model_dir, setup_tokenizer
from e2h.tokenizer import Tokenizer

ALGOS = ("sft", "orm", "prm", "oprm", "ppo", "dpo", "rest")


def positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def non_negative(kind):
    def parse(text):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add, d = p.add_argument, defaults.describe   # d(flag): the paper's and the embedded defaults
    # algorithm and run
    add("--algo", required=True, choices=ALGOS, help="what to train")
    add("--out", default=None, help="run folder (default: runs/<algo>)")
    add("--seed", type=int, default=0, help="seed of initialization, data order and sampling")
    add("--resume", action="store_true", help="continue the run in --out from its newest intact "
        "checkpoint, with the flags it was started with")
    add("--overwrite", action="store_true", help="replace the run in --out (its checkpoints, "
        "model and log are deleted)")
    add("--allow-changed-flags", action="store_true", help="with --resume: accept flags that "
        "differ from the run's args.json; the change is logged in metrics.jsonl")
    add("--stop-after", type=non_negative(int), default=0,
        help="checkpoint and stop after this many steps, as if interrupted (0: off)")
    add("--max-steps", type=non_negative(int), default=0,
        help="cap the optimizer steps of each phase; the schedule shrinks to fit (0: off)")
    add("--hparams", default="auto", choices=("auto", "paper", "embedded"),
        help="which defaults fill unset flags: the paper's 7B values or the small-model ones "
             "(auto: paper when --model, --data or --math-problems is given)")
    # models and tokenizer
    add("--model", default=None, help="HF Llama directory: the base model of sft, the trunk of a "
        "reward model (default: a random --preset; reward models: the policy)")
    add("--preset", default="small", help="ModelArgs preset when no --model is given")
    add("--tokenizer", default=None, help="tokenizer.json (default: the one beside --policy or "
        "--model, else one trained on the synthetic corpus)")
    add("--policy", default=None, help="SFT policy directory: what dpo/ppo/rest train and "
        "orm/prm/oprm sample from (default: train the SFT stage first)")
    add("--reward-model", default=None, help="easy-trained PRM directory for dpo/ppo (default: "
        "train the PRM stage first)")
    add("--unfreeze-embeddings", action="store_true", help="also train embeddings, norms and LM "
        "head (the paper freezes them; a randomly initialized model always trains them)")
    # data
    add("--data", nargs="+", default=None, help="jsonl files: MATH, MetaMathQA, GSM8K, "
        "Math-Shepherd, PRM800K, canonical SFT/RM/problem records (default: synthetic)")
    add("--math-problems", default=None, help="MATH problems jsonl: answers and levels for "
        "PRM800K/Math-Shepherd rows, and problems to sample from")
    add("--levels", default=None, help="levels trained on, like 1,2,3, or all (default: 1,2,3; "
        "ppo 1,2,3,4,5)")
    add("--answer-levels", default=None, help="levels whose final answers RL may use "
        "(default: the easy levels 1,2,3)")
    add("--n-problems", type=non_negative(int), default=None,
        help="problems per level (synthetic; with real data, a cap, 0: all); " + d("n_problems"))
    add("--max-len", type=positive(int), default=None, help="longest training sequence; " + d("max_len"))
    # optimization
    add("--lr", type=positive(float), default=None, help="peak learning rate; " + d("lr"))
    add("--batch-size", type=positive(int), default=None, help="global batch of sequences "
        "(pairs for dpo, minibatch for ppo); " + d("batch_size"))
    add("--micro-batch-size", type=positive(int), default=None, help="rows per rank and forward; "
        "gradient accumulation fills the global batch (default: batch / ranks)")
    add("--epochs", type=positive(float), default=None, help="epochs per phase; " + d("epochs"))
    add("--warmup-ratio", type=non_negative(float), default=None,
        help="share of the steps with linear warmup; " + d("warmup_ratio"))
    add("--min-lr-ratio", type=non_negative(float), default=0.0, help="cosine ends at this * lr")
    add("--weight-decay", type=non_negative(float), default=0.0, help="AdamW weight decay")
    add("--betas", type=float, nargs=2, default=[0.9, 0.95], help="AdamW betas (paper: 0.9 0.95)")
    add("--grad-clip", type=non_negative(float), default=1.0, help="max gradient norm (0: off)")
    # scale and precision
    add("--dtype", default="auto", choices=("auto", "float32", "bfloat16"), help="compute dtype "
        "(auto: bfloat16 on CUDA, float32 on CPU); master weights stay float32")
    add("--activation-checkpointing", action="store_true", help="recompute block activations in backward")
    add("--dist-timeout", type=positive(float), default=dist.DEFAULT_TIMEOUT_S, help="under "
        "torchrun: seconds a rank waits for the others before failing the run")
    # sampling (reward-model data, RL)
    add("--n-samples", type=positive(int), default=None, help="samples per problem; " + d("n_samples"))
    add("--temperature", type=non_negative(float), default=None,
        help="sampling temperature; " + d("temperature"))
    add("--top-k", type=non_negative(int), default=None, help="top-k sampling, 0: off; " + d("top_k"))
    add("--max-new-tokens", type=positive(int), default=None,
        help="longest sampled solution; " + d("max_new_tokens"))
    add("--samples", default=None, help="orm/prm/oprm: label these graded samples (an RM run's "
        "<out>/data/samples.jsonl) instead of sampling --policy again")
    add("--sample-batch-size", type=positive(int), default=16, help="problems per generate call")
    # dpo and rest
    add("--iterations", type=positive(int), default=None, help="dpo/rest iterations; " + d("iterations"))
    add("--beta", type=positive(float), default=0.1, help="DPO beta")
    add("--rpo-alpha", type=non_negative(float), default=None,
        help="DPO: weight of the chosen side's per-token NLL added to the loss; " + d("rpo_alpha"))
    add("--pair-gap", type=non_negative(float), default=1.0, help="DPO: least score gap of a pair")
    add("--max-pairs", type=positive(int), default=3, help="DPO pairs per problem")
    add("--hard-gap", type=non_negative(float), default=None,
        help="DPO: pair hard problems on the PRM score alone with this gap (default: skip them)")
    add("--max-per-problem", type=positive(int), default=10, help="ReST-EM solutions kept per problem")
    add("--hard-threshold", type=float, default=None,
        help="ReST-EM: also keep hard solutions whose PRM score reaches this (trains a PRM if needed)")
    # ppo
    add("--ppo-steps", type=positive(int), default=None, help="PPO steps; " + d("ppo_steps"))
    add("--rollouts", type=positive(int), default=None, help="rollouts per PPO step; " + d("rollouts"))
    add("--kl-coef", type=non_negative(float), default=0.01, help="PPO KL coefficient beta")
    add("--clip", type=positive(float), default=0.2, help="PPO ratio clip")
    add("--value-clip", type=positive(float), default=0.2, help="PPO value clip")
    add("--value-lr", type=positive(float), default=None,
        help="PPO: the value model's learning rate, on --lr's schedule (default: --lr)")
    add("--value-warmup-steps", type=non_negative(int), default=0,
        help="PPO: the first N steps train the value model only, the policy stays as it is")
    add("--vf-coef", type=non_negative(float), default=0.1, help="PPO value-loss coefficient")
    add("--no-process-reward", action="store_true", help="PPO on the final-answer reward only")
    # checkpoints and evaluation
    add("--save-every", type=non_negative(int), default=0,
        help="checkpoint every N steps (0: at the end of each phase only)")
    add("--keep", type=positive(int), default=2, help="checkpoints kept")
    add("--eval-problems", type=non_negative(int), default=None, help="synthetic problems per "
        "level for the closing greedy accuracy, 0: off; " + d("eval_problems"))
    add("--eval-every", type=non_negative(int), default=10,
        help="PPO: greedy validation every N steps; the best model goes to <out>/best (0: off)")
    add("--validation-data", default=None, help="ppo/dpo with real data: the test set (MATH500) "
        "whose (subject, level) counts the validation split held out of --math-problems matches")
    return p


def get_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = defaults.fill_defaults(parser.parse_args(argv))
    given = build_parser()
    for action in given._actions:
        action.default = argparse.SUPPRESS
    args.explicit = sorted(vars(given.parse_args(argv)))   # the flags given on the command line
    args.out = args.out or f"runs/{args.algo}"
    per_rank, rest = divmod(args.batch_size, args.micro_batch_size * dist.world_size())
    if per_rank == 0 or rest:
        parser.error(f"--batch-size {args.batch_size} must be a multiple of --micro-batch-size "
                     f"{args.micro_batch_size} x {dist.world_size()} ranks")
    if args.samples and args.algo not in recipes.RM_ALGOS:
        parser.error(f"--samples is for orm / prm / oprm, not --algo {args.algo}")
    for flag in ("levels", "answer_levels"):
        value = getattr(args, flag)
        if value != "all" and not all(x.strip() in list("12345") for x in value.split(",")):
            parser.error(f"--{flag.replace('_', '-')} {value!r}: expected levels 1-5 like 1,2,3, or all")
    return args


# ----------------------------------------------------------------------------- stage chaining

SHARED = ("preset", "seed", "max_steps", "dtype", "n_problems", "max_len", "max_new_tokens",
          "activation_checkpointing", "model", "tokenizer", "data", "math_problems",
          "eval_problems", "sample_batch_size")
# flags that cannot change what a stage computes: its cache key leaves them out
NOT_HASHED = ("out", "resume", "overwrite", "allow_changed_flags", "stop_after", "save_every",
              "keep", "explicit", "dist_timeout", "eval_problems")
# what a resume may change freely: those (but the closing evaluation's size) and how a batch is
# split into micro-batches, which follows the number of ranks and changes only float rounding
NEUTRAL = (*NOT_HASHED[:-1], "micro_batch_size")
RL = ("dpo", "ppo", "rest")
# flags only some algorithms read: a stage's cache key leaves out the flags it never uses, so
# changing DPO's beta (or its default) reuses the cached SFT and PRM stages
USED_BY = {"beta": ("dpo",), "rpo_alpha": ("dpo",), "pair_gap": ("dpo",), "max_pairs": ("dpo",), "hard_gap": ("dpo",),
           "max_per_problem": ("rest",), "hard_threshold": ("rest",), "iterations": ("dpo", "rest"),
           "ppo_steps": ("ppo",), "rollouts": ("ppo",), "kl_coef": ("ppo",), "clip": ("ppo",),
           "value_clip": ("ppo",), "vf_coef": ("ppo",),
           "value_lr": ("ppo",), "value_warmup_steps": ("ppo",), "no_process_reward": ("ppo",),
           "eval_every": ("ppo",), "answer_levels": RL, "reward_model": RL,
           "validation_data": RL,
           "samples": recipes.RM_ALGOS}


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
    if device.type == "cpu":   # freed tensors go back to the system: peaks as the plan says
        host.return_freed_memory()
    check_models(args)
    out = Path(args.out)
    # before any stage is trained for it: may this run use --out, and from which checkpoint
    resume_from, changes = runfolder.claim(out, args, NEUTRAL, pending=("policy", "reward_model"))
    if args.algo in ("dpo", "ppo") or (args.algo == "rest" and args.hard_threshold is not None):
        args.policy = args.policy or required_stage(args, "sft", "policy")
        args.reward_model = args.reward_model or required_stage(
            args, "prm", "reward-model", ["--policy", args.policy])
    elif args.algo in recipes.RM_ALGOS and recipes.samples_policy(args):
        args.policy = args.policy or required_stage(args, "sft", "policy")
    line, fits = memory.for_run(args, device)   # refuse a run that cannot fit, before it starts
    if not fits:
        raise ValueError(line)
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
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted at step {run.step}; --resume continues from "
                          f"{trainstate.latest(out) or 'step 0'}") from None
    seconds = time.time() - t0
    if dist.is_main():   # the marker of a complete run, written last
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
