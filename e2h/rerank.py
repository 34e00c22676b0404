"""Re-ranking N sampled solutions with an evaluator (PAPER.md, "Re-ranking").

- Majority voting: the most frequent final answer.
- Weighted voting: W(a) = sum of score_i over samples i whose answer is equivalent to a, with
  score_i = prod_k p_{i,k}; the answer with the largest W wins. A plain sum, no softmax.
- Best-of-N: the answer of the sample with the highest score (min_k p_{i,k} in the paper).

Callers pass the aggregated score of each sample (``e2h.rm.aggregate``), so these functions do
not know which aggregation they get.

Equivalent answers ("0.5" and "\\frac{1}{2}") form one group: each answer joins the first
group whose representative (its first member) ``e2h.grader.grade_answer(answer, rep)`` accepts,
else it opens a new group. Ties are broken deterministically: among groups of equal weight the
one whose first member comes earliest wins, and best-of-N picks the earliest of equally scored
samples. A None answer (no final answer found) never wins unless every answer is None, in
which case the result is None.

Letters: N samples, G answer groups.
"""
from __future__ import annotations

import re

import numpy as np

from e2h.grader import equivalent, normalize_answer

_INTEGER = re.compile(r"[-+]?\d{1,50}")


def group_answers(answers: list[str | None]) -> np.ndarray:
    """Group id of every answer, numbered by first occurrence; -1 for None. (N,) int64.

    Cost: each distinct string is normalized once and strings with one normal form share a
    group at once; a new normal form is checked against every group with the grader, except
    that two different integers are known to differ without it (most MATH answers are
    integers, and N = 1024 samples can hold hundreds of distinct answers). An answer whose
    normal form is empty ("$ $") counts as no answer.
    """
    groups = np.full(len(answers), -1, dtype=np.int64)
    reps: list[tuple[str, str]] = []   # (answer, normal form) of each group's first member
    by_text: dict[str, int] = {}
    by_form: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        if a not in by_text:
            form = normalize_answer(a)
            g = by_form.get(form) if form else -1
            if g is None:
                g = next((j for j, (rep, rep_form) in enumerate(reps)
                          if not _different_integers(form, rep_form) and equivalent(form, rep_form)),
                         len(reps))
                if g == len(reps):
                    reps.append((a, form))
                by_form[form] = g
            by_text[a] = g
        groups[i] = by_text[a]
    return groups


def _different_integers(x: str, y: str) -> bool:
    return bool(_INTEGER.fullmatch(x) and _INTEGER.fullmatch(y)) and int(x) != int(y)


def vote(groups: np.ndarray, weights) -> int | None:
    """Index of the winning sample: the first member of the group with the largest total weight.

    ``groups`` (N,) from ``group_answers`` (-1 = no answer), ``weights`` (N,). Among tied groups
    the one whose first member comes first wins. None when no sample has an answer.
    """
    groups = np.asarray(groups)
    valid = groups >= 0
    if not valid.any():
        return None
    weights = np.asarray(weights, dtype=np.float64)
    totals = np.bincount(groups[valid], weights=weights[valid])              # (G,)
    winners = np.flatnonzero(totals == totals.max())                         # tied groups
    return int(np.argmax(np.isin(groups, winners)))       # earliest sample of any tied group


def best_index(groups: np.ndarray, scores) -> int | None:
    """Index of the highest-scored sample with an answer (earliest on ties); None if none has."""
    valid = np.asarray(groups) >= 0
    if not valid.any():
        return None
    masked = np.where(valid, np.asarray(scores, dtype=np.float64), -np.inf)                   # (N,)
    return int(np.argmax(masked))                         # argmax returns the first maximum


def _pick(answers, index):
    return None if index is None else answers[index]


def majority_vote(answers: list[str | None]) -> str | None:
    """The most frequent answer up to equivalence (the first-occurring spelling of it)."""
    return _pick(answers, vote(group_answers(answers), np.ones(len(answers))))


def weighted_vote(answers: list[str | None], scores: list[float]) -> str | None:
    """The answer whose equivalent samples have the largest summed score (pass prod-scores)."""
    if len(answers) != len(scores):
        raise ValueError(f"weighted_vote: {len(answers)} answers but {len(scores)} scores")
    return _pick(answers, vote(group_answers(answers), scores))


def best_of_n(answers: list[str | None], scores: list[float]) -> str | None:
    """The answer of the highest-scored sample (pass min-scores)."""
    if len(answers) != len(scores):
        raise ValueError(f"best_of_n: {len(answers)} answers but {len(scores)} scores")
    groups = np.array([-1 if a is None else 0 for a in answers])
    return _pick(answers, best_index(groups, scores))
