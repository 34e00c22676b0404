"""Paired differences between two sets of results on the same problems, with a bootstrap
interval over problems: how the closing table of an RL run (e2h/validate.py) and the study's
findings (study/paired.py) say whether a change is larger than the luck of the problems drawn.

Why paired: with 200 hard problems the standard error of one accuracy is about 3 points, but
two policies (or two re-ranking methods) agree on most problems, and the spread of their
per-problem difference is much smaller than that of either accuracy. So the difference is
taken problem by problem (matched by problem id) and its uncertainty is that of the mean of
those differences.

The interval: resample the problems with replacement 2,000 times (numpy's generator, seed 0,
so a run's interval is reproducible), take each resample's mean difference in points, and
report the 2.5th and 97.5th percentiles. With several seeds (independent test sets) each seed's
problems are resampled on their own and a resample's value is the mean over seeds.

A part is one seed's evidence: a list of (hits, sign) whose signed means sum to the
difference in points, e.g. [(after - before per problem, +1)] for a paired difference,
or [(easy hits, +1), (hard hits, -1)] when the two sides are different problems.

Only numpy: the study, which never imports torch, uses it too.
"""
from __future__ import annotations

import numpy as np

from data.format import difficulty

Part = list   # [(np.ndarray of per-problem hits in [0, 1], +1 or -1), ...]


def hits_by_problem(records: list[dict]) -> dict:
    """{problem id: (split, 1.0 or 0.0)} from greedy records {id, level, correct} (one per
    problem, as e2h.validate writes to data/<start|final>_test.jsonl); ungraded ones left out."""
    return {r["id"]: (difficulty(r["level"]), float(bool(r["correct"]))) for r in records
            if r["correct"] is not None}


def greedy_gap(after: dict, before: dict, split: str) -> Part:
    """Greedy correctness after minus before, on the problems both graded, one split."""
    ids = [i for i in before if i in after and split in ("all", before[i][0])]
    return [(np.array([after[i][1] - before[i][1] for i in ids]), +1)]


def points(part: Part) -> float:
    return float(sum(sign * 100 * np.mean(x) for x, sign in part))


def bootstrap(parts: list[Part], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval (points) of the mean over seeds of the difference, resampling problems."""
    rng = np.random.default_rng(seed)
    total = np.zeros(draws)
    for part in parts:
        for x, sign in part:
            idx = rng.integers(0, len(x), size=(draws, len(x)))                # (draws, P)
            total += sign * 100 * x[idx].mean(axis=1) / len(parts)
    lo, hi = np.percentile(total, [2.5, 97.5])
    return float(lo), float(hi)


def greedy_difference(before: list[dict], after: list[dict], split: str) -> dict:
    """After minus before on one split of the problems both graded, paired by problem id:
    {"diff", "lo", "hi"} in points (the 95% bootstrap interval) and "problems", the count;
    nan values when no problem of the split was graded both times."""
    part = greedy_gap(hits_by_problem(after), hits_by_problem(before), split)
    n = len(part[0][0])
    if n == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "problems": 0}
    lo, hi = bootstrap([part])
    return {"diff": points(part), "lo": lo, "hi": hi, "problems": n}
