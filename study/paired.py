"""Problem-level numbers behind the study's findings: each finding is a difference between two
methods on the same test problems, so it is measured problem by problem (a paired
difference), and its uncertainty over problems is a bootstrap interval.

Why paired: with 200 hard problems the standard error of one accuracy is about 3 points, but
two methods re-ranking the same samples agree on most problems, and the spread of their
per-problem difference is much smaller than that of either accuracy. The interval resamples
the problems of every seed with replacement (the seeds' test sets are independent) and takes
the mean over seeds of each resample's difference: 2.5th to 97.5th percentile of 2,000.

A part is one seed's evidence: a list of (hits, sign) whose signed means sum to the
difference in points, e.g. [(weighted - majority per problem, +1)] for a paired difference,
or [(easy hits, +1), (hard hits, -1)] for F4, whose two sides are different problems.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data.format import difficulty

Part = list   # [(np.ndarray of per-problem hits in [0, 1], +1 or -1), ...]


def rerank_hits(path: Path) -> dict | None:
    """{evaluator: {"split": (P,) str array, method: {n: (P,) hit rates}}} from e2h.evaluate's
    rerank.json (per problem: the hit rate over the random subsets); None without it."""
    if not path.is_file():
        return None
    out = {}
    for ev, table in json.loads(path.read_text()).items():
        if "per_problem" not in table:
            continue
        splits = np.array([p["split"] for p in table["problems"]])
        out[ev] = {"split": splits, **{m: {n: np.array(v) for n, v in by_n.items()}
                                       for m, by_n in table["per_problem"].items()}}
    return out


def greedy_hits(path: Path) -> dict | None:
    """{problem id: (split, 1.0 or 0.0)} from a run's data/<start|final>_test.jsonl."""
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["id"]: (difficulty(r["level"]), float(bool(r["correct"]))) for r in rows
            if r["correct"] is not None}


def in_split(split: str, splits: np.ndarray) -> np.ndarray:
    return np.ones(len(splits), bool) if split == "all" else splits == split


def method_gap(hits: dict, a: str, b: str, n: str, split: str) -> Part:
    """Method a minus method b, problem by problem, on one split (the same samples)."""
    keep = in_split(split, hits["split"])
    return [(hits[a][n][keep] - hits[b][n][keep], +1)]


def greedy_gap(after: dict, before: dict, split: str) -> Part:
    """Greedy correctness after minus before, on the problems both graded, one split."""
    ids = [i for i in before if i in after and split in ("all", before[i][0])]
    return [(np.array([after[i][1] - before[i][1] for i in ids]), +1)]


def split_gap(hits: dict, a: str = "easy", b: str = "hard") -> Part:
    """Accuracy on split a minus split b of one policy (different problems: not paired)."""
    side = lambda k: np.array([c for s, c in hits.values() if s == k])
    return [(side(a), +1), (side(b), -1)]


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
