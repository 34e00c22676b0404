"""Re-ranking N sampled solutions with an evaluator (docs/paper.md, "Re-ranking").

- Majority voting: the most frequent final answer.
- Weighted voting: W(a) = sum of score_i over samples i whose answer is equivalent to a, with
  score_i = prod_k p_{i,k}; the answer with the largest W wins. A plain sum, no softmax.
- Best-of-N: the answer of the sample with the highest score (min_k p_{i,k} in the paper).

Callers pass the aggregated score of each sample (``e2h.score.aggregate``), so the voting
functions do not know which aggregation they get; ``METHODS`` is the one map from method to
aggregation, and ``rerank_table`` is the evaluation protocol: accuracy at n = 1, 2, 4, ..., N
over random size-n subsets of each problem's samples, the same subsets for every method.

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

from data.format import difficulty
from e2h.grader import equivalent, normalize_answer
from e2h.score import SPLITS, outcome_aucs, sample_score

METHODS = {"majority": None, "weighted": "prod", "best_of_n": "min"}   # method -> aggregation

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

# ----------------------------------------------------------------------------- the protocol


def accuracy_by_split(samples: list[dict]) -> dict:
    """Accuracy (%) of one graded sample per problem, per split (ungraded samples left out)."""
    hits = {k: [] for k in SPLITS}
    for s in samples:
        if s["correct"] is not None:
            for k in (difficulty(s["level"]), "all"):
                if k is not None:
                    hits[k].append(float(s["correct"]))
    return {k: 100 * float(np.mean(v)) if v else float("nan") for k, v in hits.items()}


def _problem_arrays(samples: list[dict], methods) -> list[dict]:
    by_id: dict[str, list[dict]] = {}
    for s in samples:
        by_id.setdefault(s["id"], []).append(s)
    problems = []
    for group in by_id.values():
        if any(s["correct"] is None for s in group):
            continue                                    # no reference answer: nothing to score
        weights = {m: np.array([1.0 if how is None else sample_score(s, how) for s in group])
                   for m, how in methods.items()}                                  # (N,) each
        problems.append({"id": group[0]["id"], "split": difficulty(group[0]["level"]),
                         "correct": np.array([bool(s["correct"]) for s in group]),   # (N,)
                         "groups": group_answers([s["answer"] for s in group]),      # (N,)
                         "weights": weights})
    return problems


def _choose(method: str, groups, weights):
    return best_index(groups, weights) if method == "best_of_n" else vote(groups, weights)


def rerank_table(samples: list[dict], ns=None, n_subsets: int = 32, seed: int = 0,
                 greedy: list[dict] | None = None, with_rm: bool | None = None) -> dict:
    """Accuracy (%) at each n in ``ns`` for each re-ranking method, mean and std over subsets
    (default ``ns``: 1, 2, 4, ... and N, the fewest samples a problem has).

    For every n, ``n_subsets`` draws (one when n equals every problem's sample count) each
    pick, per problem, n of its samples uniformly without replacement (kept in sample order,
    so ties go to the earlier sample). A draw's accuracy per split is the mean over problems;
    the table reports the mean and (population) std of that over draws. A problem's answers
    are grouped once, over all its samples, and every subset votes with those groups; a chosen
    group is right when its first member in the subset is. ``per_problem`` holds each
    problem's hit rate over the draws (its id and split in ``problems``), which paired
    comparisons of two methods on the same problems need. Methods needing scores
    run when ``with_rm`` (default: some sample has scores). Problems without a reference answer
    are skipped.
    """
    if with_rm is None:
        with_rm = any(s.get("step_scores") or s.get("outcome_score") is not None for s in samples)
    methods = {m: how for m, how in METHODS.items() if with_rm or how is None}
    problems = _problem_arrays(samples, methods)
    if not problems:
        raise ValueError("rerank_table: no graded samples")
    sizes = {len(p["correct"]) for p in problems}
    if ns is None:   # 1, 2, 4, ... and N itself (N = 3 ends at 3, not 2)
        ns = sorted({2 ** i for i in range(min(sizes).bit_length())} | {min(sizes)})
    ns = list(ns)
    if max(ns) > min(sizes):
        raise ValueError(f"rerank_table: n={max(ns)} but a problem has only {min(sizes)} samples")
    rng = np.random.default_rng(seed)
    table = {m: {} for m in methods}
    per_problem = {m: {} for m in methods}
    for n in ns:
        draws = 1 if sizes == {n} else n_subsets
        acc = {m: {k: [] for k in SPLITS} for m in methods}                   # per draw
        rate = {m: np.zeros(len(problems)) for m in methods}                  # (P,) hits
        for _ in range(draws):
            hits = {m: {k: [] for k in SPLITS} for m in methods}
            for j, p in enumerate(problems):
                idx = np.sort(rng.choice(len(p["correct"]), size=n, replace=False))   # (n,)
                for m in methods:
                    i = _choose(m, p["groups"][idx], p["weights"][m][idx])
                    hit = float(i is not None and p["correct"][idx][i])
                    rate[m][j] += hit / draws
                    for k in (p["split"], "all"):
                        if k is not None:
                            hits[m][k].append(hit)
            for m in methods:
                for k in SPLITS:
                    acc[m][k].append(100 * np.mean(hits[m][k]) if hits[m][k] else float("nan"))
        for m in methods:
            table[m][str(n)] = {k: [float(np.mean(v)), float(np.std(v))] for k, v in acc[m].items()}
            per_problem[m][str(n)] = [round(float(x), 4) for x in rate[m]]
    counts = {k: sum(p["split"] == k for p in problems) for k in ("easy", "hard")}
    return {"n_problems": {**counts, "all": len(problems)}, "ns": ns, "n_subsets": n_subsets,
            "seed": seed, "greedy": accuracy_by_split(greedy) if greedy else None,
            "methods": table, "auc": outcome_aucs(samples) if with_rm else None,
            "problems": [{"id": p["id"], "split": p["split"]} for p in problems],
            "per_problem": per_problem}


def format_table(table: dict) -> str:
    """Markdown: the paper's Easy / Hard / All table at the largest n, then the All curve over n."""
    names = {"majority": "majority voting", "weighted": "weighted voting (prod)",
             "best_of_n": "best-of-n (min)"}
    top = str(table["ns"][-1])
    c = table["n_problems"]
    lines = [f"Accuracy (%) on {c['all']} problems ({c['easy']} easy, {c['hard']} hard); "
             f"re-ranking at N = {top}, mean ± std over random subsets.", "",
             "| method | Easy | Hard | All |", "|---|---|---|---|"]
    if table["greedy"]:
        lines.append("| greedy | " + " | ".join(f"{table['greedy'][k]:.1f}" for k in SPLITS) + " |")
    for m, by_n in table["methods"].items():
        cells = [f"{by_n[top][k][0]:.1f} ± {by_n[top][k][1]:.1f}" for k in SPLITS]
        lines.append(f"| {names[m]} | " + " | ".join(cells) + " |")
    lines += ["", "All (%) by N:", "", "| method | " + " | ".join(map(str, table["ns"])) + " |",
              "|---" * (len(table["ns"]) + 1) + "|"]
    for m, by_n in table["methods"].items():
        cells = [f"{by_n[str(n)]['all'][0]:.1f}" for n in table["ns"]]
        lines.append(f"| {names[m]} | " + " | ".join(cells) + " |")
    if table["auc"]:
        aucs = [f"{how} " + " / ".join(f"{v:.3f}" for v in by_split.values())
                for how, by_split in table["auc"].items()]
        lines += ["", "Outcome ROC-AUC of the aggregated score (Easy / Hard / All): "
                  + ", ".join(aucs)]
    return "\n".join(lines) + "\n"
