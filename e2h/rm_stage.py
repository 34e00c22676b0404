"""The reward-model stage of train.py (--algo orm / prm / oprm; docs/paper.md "Reward models"):
its training records, its training, and its held-out ROC-AUC. The objective itself (per-token
BCE, ORM rebalancing, PRM records) is e2h/rm.py's.

- Records: --data's reward-model rows and/or solutions sampled from the policy and labelled:
  ORM by the final answer, PRM by the program checker on the synthetic curriculum (the stand-in
  for PRM800K's human raters) or by the rated steps of --data with real data; OPRM takes both.
  ``--samples`` reads the samples another run drew (the study's ORM and OPRM label the PRM's).
- Training: one phase of the loop on a zero-initialized reward head over the base model's trunk
  (the policy's when no --model is given).
- Evaluation: step and outcome ROC-AUC on held-out synthetic solutions, easy and hard apart.
"""
from __future__ import annotations

import random
from functools import partial

from data import sources, synthetic
from data.format import EASY_LEVELS, HARD_LEVELS
from e2h import rm
from e2h.infra import distributed as dist
from e2h.loop import train_phase
from e2h.model import RewardModel
from e2h.run import (cached_records, encode_all, finish, load, load_or_init, make_optimizer,
                     max_len, prepare, sample)
from e2h.score import step_and_outcome_auc
from e2h.validate import problems, synthetic_data

RM_ALGOS = ("orm", "prm", "oprm")


def samples_policy(args) -> bool:
    """Whether a reward-model run samples solutions from a policy: always on the synthetic
    curriculum (its PRM labels are program-checked samples); with real data, ORM / OPRM sample
    the problems found in --data / --math-problems, and PRM trains on the rated steps given."""
    if synthetic_data(args):
        return True
    if args.algo == "prm":
        return False
    return bool(args.math_problems or sources.read_data(args.data)["problems"])


def rm_records(run) -> list[dict]:
    """ORM / PRM / OPRM records: --data's RM rows and/or labelled samples from the policy."""
    args = run.args
    levels = sources.parse_levels(args.levels)
    given = [] if synthetic_data(args) else sources.rm_records(args.data, args.math_problems,
                                                               levels)
    if not samples_policy(args):
        return given
    problems_ = problems(args)
    if args.samples:
        samples = sources.read_samples(args.samples, problems_)
    else:
        def draw():
            return sample(run, load(run, args.policy, trainable=False), problems_,
                          args.n_samples, "rm-data")
        samples = cached_records(run, "samples.jsonl", draw)   # what --samples reads
    records = []
    if args.algo in ("prm", "oprm"):
        # program-checked steps on the synthetic curriculum; rated steps from --data otherwise
        records += rm.prm_examples(samples, problems_, synthetic.label_solution) \
            if synthetic_data(args) else given
    if args.algo in ("orm", "oprm"):
        orm = rm.orm_examples(samples, random.Random(args.seed))
        if not orm and args.algo == "orm":
            raise ValueError(f"no ORM examples: no problem had both a correct and a wrong "
                             f"one among its {args.n_samples} samples ({len(samples)} samples, "
                             f"{sum(bool(s['correct']) for s in samples)} correct)")
        records += orm
    return records


def evaluate_rm(run, model) -> dict:
    """Step / outcome ROC-AUC on held-out synthetic solutions, easy and hard problems apart."""
    args = run.args
    if not args.eval_problems or args.hparams != "embedded" or args.data:
        return {}
    policy = load(run, args.policy, trainable=False)
    problems_ = sources.synthetic_problems(args.eval_problems, None, args.seed, "validation")
    samples = sample(run, policy, problems_, 1, "rm-eval", batch_size=args.eval_batch_size)
    records = rm.prm_examples(samples, problems_, synthetic.label_solution)
    out = {}
    with dist.gathered(model):
        for split, levels in (("easy", EASY_LEVELS), ("hard", HARD_LEVELS)):
            auc = step_and_outcome_auc(model, run.tok, [r for r in records if r["level"] in levels])
            out[f"{split}_step_auc"] = auc["step_auc"]
            out[f"{split}_outcome_auc"] = auc["outcome_auc"]
    return out


def train_rm(run) -> dict:
    args, tok = run.args, run.tok
    records = cached_records(run, "rm_train.jsonl", lambda: rm_records(run))
    base = args.model or args.policy
    trunk = load_or_init(base, args, tok)
    model = trunk if isinstance(trunk, RewardModel) else RewardModel(trunk)
    model = prepare(run, model, pretrained=base is not None)
    examples = encode_all(lambda r: rm.encode_rm(tok, r, max_len(run, model)), records,
                          args.algo.upper())
    opt = make_optimizer(model, args)
    run.restore(model, [opt])
    train_phase(run, model, opt, examples, partial(rm.rm_batch, pad_id=tok.pad_id), rm.loss_fn)
    return finish(run, model, {"examples": len(examples), **evaluate_rm(run, model)})
