"""Problem-level numbers behind the study's findings: each finding is a difference between two
methods on the same test problems, so it is measured problem by problem (a paired
difference), and its uncertainty over problems is a bootstrap interval. Both, and the parts
they are computed from, are e2h/paired.py's (an RL run's closing table uses the same ones);
this file reads a run's per-problem files and builds the study's other differences. The
interval resamples the problems of every seed (the seeds' test sets are independent) and takes
the mean over seeds of each resample's difference.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from e2h.paired import Part, hits_by_problem


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
    return hits_by_problem([json.loads(line) for line in path.read_text().splitlines()
                            if line.strip()])


def in_split(split: str, splits: np.ndarray) -> np.ndarray:
    return np.ones(len(splits), bool) if split == "all" else splits == split


def method_gap(hits: dict, a: str, b: str, n: str, split: str) -> Part:
    """Method a minus method b, problem by problem, on one split (the same samples)."""
    keep = in_split(split, hits["split"])
    return [(hits[a][n][keep] - hits[b][n][keep], +1)]


def split_gap(hits: dict, a: str = "easy", b: str = "hard") -> Part:
    """Accuracy on split a minus split b of one policy (different problems: not paired)."""
    side = lambda k: np.array([c for s, c in hits.values() if s == k])
    return [(side(a), +1), (side(b), -1)]
