"""Hyper-parameter defaults, written once: every unset flag of train.py takes its value here.

Two regimes (docs/paper.md): ``PAPER`` holds the 7B hyper-parameters and applies when pretrained
weights (--model) or real data are given; ``EMBEDDED`` holds what a small model trained from
scratch on the synthetic curriculum needs to learn in a few CPU minutes (far larger learning
rates, small batches, fewer samples). Flags that are the same in both regimes (DPO's beta,
PPO's clip, ...) have their default in train.py's parser, and nowhere else.
"""
from __future__ import annotations

from data.format import EASY_LEVELS, LEVELS
from e2h.infra import distributed as dist

PAPER = {   # docs/paper.md, Llemma-7B
    "sft": dict(lr=2e-5, batch_size=128, epochs=3, max_len=768),
    "prm": dict(lr=2e-5, batch_size=128, epochs=2, max_len=768),
    "orm": dict(lr=2e-5, batch_size=128, epochs=2, max_len=1024, n_samples=32, top_k=20,
                temperature=0.7),
    "dpo": dict(lr=2e-6, batch_size=64, epochs=1, max_len=1024, iterations=5, n_samples=8,
                top_k=0, temperature=1.0, beta=0.1, rpo_alpha=0.0),
    "rest": dict(lr=2e-5, batch_size=128, epochs=1, max_len=1024, iterations=2, n_samples=32,
                 top_k=40, temperature=1.0),
    "ppo": dict(lr=2e-5, batch_size=64, epochs=1, max_len=1024, ppo_steps=500, rollouts=512,
                top_k=50, temperature=0.7, eval_every=10, kl_coef=0.01),   # validated every 10
    # GRPO is not in the paper: DeepSeekMath's GRPO (Shao et al. 2024, Sec. 4.2) used lr 1e-6,
    # beta 0.04, one update per batch; G = 8 is TRL's num_generations (DeepSeekMath: 64), and
    # 512 completions per step and the validation cadence are the paper's PPO's
    "grpo": dict(lr=1e-6, batch_size=64, epochs=1, max_len=1024, grpo_steps=500, rollouts=512,
                 group_size=8, top_k=0, temperature=1.0, eval_every=10, kl_coef=0.04),
}
EMBEDDED = {   # the small preset from scratch on the synthetic curriculum, 2 CPU cores
    "sft": dict(lr=3e-3, batch_size=64, epochs=15, n_problems=300, eval_every=28),
    # one epoch of 14,400 program-labelled samples, 900 steps: held-out step AUC easy / hard 0.94 /
    # 0.77 against 0.91 / 0.69 after 300 steps (bench/README.md, the paper's regime)
    "prm": dict(lr=3e-4, batch_size=16, epochs=1, n_problems=300, n_samples=16, top_k=0,
                temperature=1.0),
    # RL: chosen on the validation split (the sweeps are in bench/README.md). Before the paper's
    # regime (the study's SFT policies and PRMs of seeds 0 and 1, 300 validation problems per
    # level): PPO at lr 1e-4 lowered validation accuracy at every checkpoint on both seeds, 1e-5
    # raised it on both; ReST-EM on 200 problems per level gained more than on 100.
    # In the paper's regime (new RL problems, scarce SFT: bench/README.md, 2026-12-07), ReST-EM
    # on 600 RL problems per level raised validation All by 2.0 and 3.2 points (seeds 0, 1) where
    # 200 lowered it on both (the start kept); level 1's rl role holds 623
    # DPO (bench/README.md, "DPO that learns"): the preference term costs accuracy in proportion
    # to beta on this small model (validation, 1,250 problems: beta 0.1 -28, 0.03 +2, 0.01 +23
    # problems, NLL alone +20), and the chosen side's NLL (RPO) is what lifts it; on 600 new
    # problems per level with a warmup that survives the fresh optimizer of each iteration; a
    # third iteration raised validation All on all three seeds (+1.7, +1.8, +2.2)
    "dpo": dict(lr=1e-4, batch_size=32, epochs=1, n_problems=600, iterations=3, n_samples=8,
                top_k=0, temperature=1.0, beta=0.01, rpo_alpha=1.0, warmup_ratio=0.2,
                eval_problems=250, test_problems=500),
    "rest": dict(lr=1e-4, batch_size=32, epochs=1, n_problems=600, iterations=2, n_samples=8,
                 top_k=0, temperature=1.0, eval_problems=250, test_problems=500),
    "ppo": dict(lr=1e-5, batch_size=16, epochs=1, n_problems=200, ppo_steps=30, rollouts=64,
                top_k=50, temperature=0.7, eval_every=10, kl_coef=0.01, eval_problems=250,
                test_problems=500),
    # PPO's lr and step budget (64 completions: 8 problems x G = 8), sampled at temperature 1 so
    # that a group's completions differ; G 4 / 16, KL 0.04 and Dr. GRPO moved validation by no
    # more than a point on two seeds (bench/README.md, "GRPO's settings on two seeds")
    "grpo": dict(lr=1e-5, batch_size=16, epochs=1, n_problems=200, grpo_steps=30, rollouts=64,
                 group_size=8, top_k=0, temperature=1.0, eval_every=10, kl_coef=0.01,
                 eval_problems=250, test_problems=500),
}
# The data budget of the embedded default, the paper's supervision regime in miniature. Problems
# are told apart by their canonical key (data/synthetic.py: start and each slot's unordered
# menu) and every key has one role, so no two rows below share a problem, whatever the seeds:
#
# | stage      | role       | problems per level   | levels | supervision it gets                 |
# |------------|------------|----------------------|--------|-------------------------------------|
# | SFT        | sft        | 300 (of ~360 at L1)  | 1-3    | reference solutions (PRM800K's part)|
# | PRM / ORM  | sft        | 300, shared with SFT | 1-3    | program step labels of 16 samples   |
# |            |            |                      |        | of the SFT policy (PRM800K feeds    |
# |            |            |                      |        | both SFT and the PRM in the paper)  |
# | RL         | rl         | 200 PPO, GRPO; 600   | 1-3    | final answers only (the 12k pool)   |
# |            |            | DPO, ReST-EM (of ~620 | (PPO, GRPO: 1-5; 4-5 have no answer)  |
# |            |            | at L1)               |        |                                     |
# | validation | validation | 100 SFT, 250 RL      | 1-5    | chooses checkpoints and settings    |
# |            |            | (of ~285 at L1)      |        |                                     |
# | test       | test       | 100 SFT, 500 RL      | 1-5    | reported only (~520 at L1)          |
#
# Level 1 holds only 1,790 problems (enumerated in tests/test_synthetic.py), which is why the
# role shares are set for it (data/synthetic.py SPLIT_BUCKETS); the other levels hold tens of
# thousands. Which role each stage draws:
ROLE = {"sft": "sft", "orm": "sft", "prm": "sft", "oprm": "sft",
        "dpo": "rl", "rest": "rl", "ppo": "rl", "grpo": "rl"}
# OPRM trains on the union of ORM and PRM data, with the ORM's settings (docs/paper.md); on the
# embedded default every reward model samples its own data the same way
PAPER["oprm"] = PAPER["orm"]
EMBEDDED["orm"] = EMBEDDED["oprm"] = EMBEDDED["prm"]
# Greedy evaluation streams its problems through eval_batch_size rows: on one CPU thread 128
# decode 1,250 problems 1.5x as fast as 16, the same completions (bench/README.md, "Greedy
# evaluation rows")
COMMON = {"paper": dict(max_new_tokens=768, n_problems=0, eval_problems=0, warmup_ratio=0.2,
                       eval_every=0, eval_batch_size=16),
          "embedded": dict(max_len=256, max_new_tokens=96, eval_problems=100, warmup_ratio=0.05,
                          eval_every=0, eval_batch_size=128)}


def describe(key: str) -> str:
    """The defaults of ``key`` for --help: "paper 2e-05 (dpo 2e-06); embedded 0.003 (...)"."""
    parts = []
    for name, table in (("paper", PAPER), ("embedded", EMBEDDED)):
        values = {algo: {**COMMON[name], **t}.get(key) for algo, t in table.items()}
        values = {algo: v for algo, v in values.items() if v is not None}
        if not values:
            continue
        common = max(set(values.values()), key=list(values.values()).count)
        others = ", ".join(f"{algo} {v}" for algo, v in values.items() if v != common)
        parts.append(f"{name} {common}" + (f" ({others})" if others else ""))
    return "default: " + "; ".join(parts)


def needs_reward_model(args) -> bool:
    """Whether a run of ``args`` loads the easy-trained PRM: DPO and PPO always (PPO's value
    model starts as the PRM), GRPO unless rewarded by final answers alone
    (--no-process-reward), ReST-EM when it filters with it (--hard-threshold,
    --easy-threshold)."""
    return args.algo in ("dpo", "ppo") or (args.algo == "grpo" and not args.no_process_reward) \
        or (args.algo == "rest" and (
        args.hard_threshold is not None or args.easy_threshold is not None))


def fill_defaults(args):
    """Resolve the regime and give every unset (None) flag its regime's value, in place."""
    if args.hparams == "auto":
        # real weights or real data; a --policy alone may be an embedded run's output
        real = args.model or args.data or args.math_problems
        args.hparams = "paper" if real else "embedded"
    table = (PAPER if args.hparams == "paper" else EMBEDDED)[args.algo]
    if args.test_problems is None and args.eval_problems is not None:
        args.test_problems = args.eval_problems   # one size given: validation and test alike
    for key, value in {**COMMON[args.hparams], **table}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.test_problems is None:
        args.test_problems = args.eval_problems
    if args.levels is None:   # docs/paper.md: the best PPO row trains on all problems (GRPO too)
        levels = LEVELS if args.algo in ("ppo", "grpo") else EASY_LEVELS
        args.levels = ",".join(map(str, levels))
    if args.answer_levels is None:
        args.answer_levels = ",".join(map(str, EASY_LEVELS))
    if args.micro_batch_size is None:
        args.micro_batch_size = args.batch_size // dist.world_size()
    return args
