"""The command line of train.py: every flag, its check, and the defaults of the flags left unset.

``build_parser`` declares the flags (a help text names the paper's and the embedded default of
each flag whose default depends on the regime, e2h/defaults.py); ``get_args`` parses them, fills
those defaults, records which flags were given (``explicit``: what a cached stage shares and a
resume compares) and refuses combinations no single flag can check. ``--config FILE.json`` gives
flags from a file (``config_argv``), so that a run's own args.json repeats it.
"""
from __future__ import annotations

import argparse
import json
import sys

from e2h import defaults, ppo, rm_stage
from e2h.infra import distributed as dist

ALGOS = ("sft", "orm", "prm", "oprm", "ppo", "dpo", "rest", "grpo")
# what a run's args.json records about how its command treated the folder, not what it trained:
# repeating the run from that file leaves them out (a repeat never resumes or overwrites)
FOLDER_FLAGS = ("resume", "overwrite", "allow_changed_flags", "stop_after")


class ShowDefaults(argparse.HelpFormatter):
    """--help of every e2h command: a flag's fixed default follows its help; a flag whose value
    is filled in later (default None) says in its own help how ("default: ...")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or "default:" in text or action.default is None
                or action.default is False or action.default == argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


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
    p = argparse.ArgumentParser(prog="train.py", formatter_class=ShowDefaults, description="Train "
                                "one stage of easy-to-hard generalization: sft, orm, prm, oprm, "
                                "dpo, ppo, rest or grpo.")
    add, d = p.add_argument, defaults.describe   # d(flag): the paper's and the embedded defaults
    # algorithm and run
    add("--config", default=argparse.SUPPRESS, metavar="FILE.json", help="flags from a JSON "
        "object ({\"lr\": 0.001, ...}); the command line's win. A run's args.json repeats that "
        "run: the flags it was given, less --resume, --overwrite, --allow-changed-flags, "
        "--stop-after")
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
    add("--policy", default=None, help="SFT policy directory: what dpo/ppo/rest/grpo train and "
        "orm/prm/oprm sample from (default: train the SFT stage first)")
    add("--reward-model", default=None, help="easy-trained PRM directory for dpo/ppo/grpo (default: "
        "train the PRM stage first)")
    add("--unfreeze-embeddings", action="store_true", help="also train embeddings, norms and LM "
        "head (the paper freezes them; a randomly initialized model always trains them)")
    # data
    add("--data", nargs="+", default=None, help="jsonl files: MATH, MetaMathQA, GSM8K, "
        "Math-Shepherd, TRL's stepwise PRM rows, PRM800K, canonical SFT/RM/problem records "
        "(default: synthetic)")
    add("--math-problems", default=None, help="MATH problems jsonl: answers and levels for "
        "PRM800K / Math-Shepherd / stepwise rows, and problems to sample from (default: none; "
        "the synthetic curriculum has its own)")
    add("--levels", default=None, help="levels trained on, like 1,2,3, or all (default: 1,2,3; "
        "ppo and grpo 1,2,3,4,5)")
    add("--answer-levels", default=None, help="levels whose final answers RL may use "
        "(default: the easy levels 1,2,3)")
    add("--n-problems", type=non_negative(int), default=None,
        help="problems per level (synthetic; with real data, a cap, 0: all); " + d("n_problems"))
    add("--max-len", type=positive(int), default=None, help="longest training sequence; " + d("max_len"))
    # optimization
    add("--lr", type=positive(float), default=None, help="peak learning rate; " + d("lr"))
    add("--batch-size", type=positive(int), default=None, help="global batch of sequences "
        "(pairs for dpo, minibatch for ppo and grpo); " + d("batch_size"))
    add("--micro-batch-size", type=positive(int), default=None, help="rows per rank and forward; "
        "gradient accumulation fills the global batch (default: batch / ranks)")
    add("--epochs", type=positive(float), default=None, help="epochs per phase; " + d("epochs"))
    add("--warmup-ratio", type=non_negative(float), default=None,
        help="share of the steps with linear warmup; " + d("warmup_ratio"))
    add("--min-lr-ratio", type=non_negative(float), default=0.0, help="cosine ends at this * lr")
    add("--weight-decay", type=non_negative(float), default=0.0, help="AdamW weight decay")
    add("--betas", type=float, nargs=2, default=[0.9, 0.95], help="AdamW betas (the paper's)")
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
        "<out>/data/samples.jsonl) instead of sampling --policy again (default: sample --policy)")
    add("--sample-batch-size", type=positive(int), default=16, help="problems per generate call")
    add("--eval-batch-size", type=positive(int), default=None, help="greedy validation and test: "
        "problems per generate call (the same outputs at any size); " + d("eval_batch_size"))
    # dpo and rest
    add("--iterations", type=positive(int), default=None, help="dpo/rest iterations; " + d("iterations"))
    add("--beta", type=positive(float), default=None, help="DPO beta; " + d("beta"))
    add("--rpo-alpha", type=non_negative(float), default=None,
        help="DPO: weight of the chosen side's per-token NLL added to the loss; " + d("rpo_alpha"))
    add("--pair-gap", type=non_negative(float), default=1.0, help="DPO: least score gap of a pair")
    add("--max-pairs", type=positive(int), default=3, help="DPO pairs per problem")
    add("--step-pairs", action="store_true", help="DPO: cut each pair to the step where its "
        "solutions part, the steps before it joining the prompt (Step-DPO; e2h.dpo.step_pair)")
    add("--hard-gap", type=non_negative(float), default=None,
        help="DPO: pair hard problems on the PRM score alone with this gap (default: skip them)")
    add("--max-per-problem", type=positive(int), default=10, help="ReST-EM solutions kept per problem")
    add("--hard-threshold", type=float, default=None,
        help="ReST-EM: also keep hard solutions whose PRM score reaches this (trains a PRM if needed; "
        "default: off, easy problems only)")
    add("--easy-threshold", type=float, default=None,
        help="ReST-EM: keep an easy solution with the right answer only if its PRM score also "
        "reaches this (a wrong walk can land on the right answer; trains a PRM if needed; "
        "default: off, the answer alone)")
    # ppo
    add("--ppo-steps", type=positive(int), default=None, help="PPO steps; " + d("ppo_steps"))
    add("--rollouts", type=positive(int), default=None, help="rollouts per PPO step; " + d("rollouts"))
    add("--kl-coef", type=non_negative(float), default=None, help="PPO's KL coefficient; GRPO's "
        "beta, the weight of the per-token k3 KL in its loss; " + d("kl_coef"))
    add("--clip", type=positive(float), default=0.2, help="PPO and GRPO ratio clip")
    add("--value-clip", type=positive(float), default=0.2, help="PPO value clip")
    add("--value-lr", type=positive(float), default=None,
        help="PPO: the value model's learning rate, on --lr's schedule (default: --lr)")
    add("--value-warmup-steps", type=non_negative(int), default=0,
        help="PPO: the first N steps train the value model only, the policy stays as it is")
    add("--vf-coef", type=non_negative(float), default=0.1, help="PPO value-loss coefficient")
    add("--no-process-reward", action="store_true", help="PPO and GRPO on the final-answer "
        "reward only (no PRM)")
    r = ppo.Rewards   # PPO's reward constants (e2h/ppo.py), the paper's values by default
    add("--u", type=float, default=r.u, help="PPO: upper bound u of the min-shaped process reward")
    add("--step-bonus", type=float, default=r.step_bonus,
        help="PPO: process reward added per solution, step_bonus / K on each of its K steps")
    add("--hard-reward", type=float, default=r.hard_reward,
        help="PPO: terminal reward of a hard problem, whose answer may not be used")
    add("--format-penalty", type=non_negative(float), default=r.format_penalty,
        help="PPO: subtracted from the terminal reward when \"# Answer\" or the answer is missing")
    add("--gamma", type=non_negative(float), default=r.gamma, help="PPO: GAE discount")
    add("--lam", type=non_negative(float), default=r.lam, help="PPO: GAE lambda")
    # grpo (also reads --rollouts, --kl-coef, --clip, --epochs: its passes over a batch)
    add("--grpo-steps", type=positive(int), default=None, help="GRPO steps; " + d("grpo_steps"))
    add("--group-size", type=positive(int), default=None, help="GRPO: completions per problem "
        "(G); --rollouts completions per step make --rollouts / G problems; " + d("group_size"))
    add("--no-scale-rewards", action="store_true", help="GRPO: advantages are reward - group "
        "mean, not divided by the group's std (Dr. GRPO)")
    add("--process-advantages", action="store_true", help="GRPO: per-token advantages from the "
        "PRM's step scores normalised over the group (DeepSeekMath's process supervision)")
    # checkpoints and evaluation
    add("--save-every", type=non_negative(int), default=0,
        help="checkpoint every N steps (0: at the end of each phase only)")
    add("--keep", type=positive(int), default=2, help="checkpoints kept")
    add("--eval-problems", type=non_negative(int), default=None, help="synthetic problems per "
        "level for greedy validation and, unless --test-problems says otherwise, the test, "
        "0: off; " + d("eval_problems"))
    add("--test-problems", type=non_negative(int), default=None, help="synthetic test problems "
        "per level for the closing greedy accuracy (the starting and the final policy on the same "
        "problems), 0: off; default: --eval-problems's value when that is given, else embedded "
        "RL 500 and otherwise the --eval-problems default")
    add("--eval-every", type=non_negative(int), default=None,
        help="sft, ppo, grpo: greedy validation every N steps and after the last; the best "
        "policy so far is kept in <out>/best/ (best.json says which) and becomes model/ at the "
        "end (0: off, model/ is the last policy; dpo and rest validate after every iteration); "
        + d("eval_every"))
    add("--validation-data", default=None, help="ppo/dpo/grpo with real data: the test set "
        "(MATH500) whose (subject, level) counts the validation split held out of "
        "--math-problems matches (default: none, no validation on real data)")
    return p


def read_config(path: str) -> dict:
    try:
        with open(path) as f:
            config = json.load(f)
    except OSError as e:
        raise ValueError(f"--config {path}: {e.strerror}") from None
    except ValueError as e:
        raise ValueError(f"--config {path}: not JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"--config {path}: expected a JSON object of flags, "
                         f"like {{\"lr\": 0.001}}")
    return config


def flag_argv(action: argparse.Action, value) -> list[str]:
    """``value`` of a flag as command-line words; None (the default) and false give none."""
    flag = action.option_strings[0]
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ValueError(f"{flag} takes true or false, not {value!r}")
        return [flag] if value else []
    if value is None:
        return []
    return [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]


def config_argv(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """The flags of a JSON file as command-line words, to be read before the command line's.

    Keys are flag names as args.json writes them (``max_len``). A run's args.json (the file
    with an ``explicit`` key) gives the flags that run was given, less FOLDER_FLAGS: its other
    entries are defaults the repeat fills in again, and counting them as given would change the
    settings of the stages it trains first. Any other key is refused."""
    config = read_config(path)
    actions = {a.dest: a for a in parser._actions
               if a.option_strings and a.dest not in ("help", "config")}
    for key in config:
        if key not in actions and key != "explicit":
            raise ValueError(f"--config {path}: unknown key {key!r} (not a train.py flag)")
    given = config.pop("explicit", None)
    if given is not None:
        if not isinstance(given, list):
            raise ValueError(f"--config {path}: 'explicit' must be a list of flag names")
        config = {k: v for k, v in config.items() if k in given and k not in FOLDER_FLAGS}
    words = []
    for key, value in config.items():
        try:
            words += flag_argv(actions[key], value)
        except ValueError as e:
            raise ValueError(f"--config {path}: key {key!r}: {e}") from None
    return words


def with_config(argv: list[str]) -> list[str]:
    """argv with a --config FILE replaced by the file's flags, put first so the command line's
    own flags win (argparse keeps the last value of a flag)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)   # "--c" is not --config
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    return rest if known.config is None else config_argv(known.config, build_parser()) + rest


def get_args(argv=None) -> argparse.Namespace:
    argv = with_config(sys.argv[1:] if argv is None else list(argv))
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
    if args.samples and args.algo not in rm_stage.RM_ALGOS:
        parser.error(f"--samples is for orm / prm / oprm, not --algo {args.algo}")
    for flag in ("levels", "answer_levels"):
        value = getattr(args, flag)
        if value != "all" and not all(x.strip() in list("12345") for x in value.split(",")):
            parser.error(f"--{flag.replace('_', '-')} {value!r}: expected levels 1-5 like 1,2,3, or all")
    return args
