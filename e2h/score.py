"""Step 2 of the pipeline, scoring: an evaluator reads a probability off each step of a sampled
solution (docs/paper.md, "Reward models" and "Re-ranking"), and ROC-AUC says how well those
probabilities tell right from wrong.

- A step score sits at the first token of each "\\n\\n" that ends a step, the outcome score at
  the last answer token (``data.format.score_positions``). A solution is re-tokenized from its
  text, prompt and completion together, exactly as the reward model's training examples were,
  so a saved samples.jsonl alone is enough to re-score a run.
- ``aggregate`` turns the step probabilities into one score: min (best-of-n), prod (weighted
  voting), mean, or last (the ORM-style outcome score).
- AUCs: over held-out step labels, over final-answer correctness (globally), and *within* each
  problem's own samples, which is what voting depends on (a global AUC also rewards telling
  easy problems from hard ones).

Letters: B batch, T time, N samples.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from data.format import STEP_SEP, difficulty, format_prompt, format_solution, score_positions
from e2h.model import RewardModel
from e2h.sample import Progress
from e2h.sequences import collate, token_logps

SPLITS = ("easy", "hard", "all")


def encode_completion(tok, question: str, completion: str) -> tuple[list[int], list[int]]:
    """[BOS] + prompt ids and completion ids, tokenized together as in ``tokenize_rm`` (a
    tokenizer that marks word starts would encode the completion alone differently)."""
    prompt = format_prompt(question)
    ids, offsets = tok.encode_with_offsets(prompt + completion)
    n_prompt = sum(1 for start, _ in offsets if start < len(prompt))
    return [tok.bos_id] + ids[:n_prompt], ids[n_prompt:]


@torch.no_grad()
def score_completions(rm: RewardModel, tok, prompt_ids: list[list[int]],
                      completions: list[list[int]], batch_size: int = 16,
                      problem_of: list | None = None) -> list[dict]:
    """Step and outcome probabilities of N completions, ``batch_size`` sequences per forward.

    ``prompt_ids[i]`` + ``completions[i]`` is sequence i; it is right-padded, so padding never
    changes a real position's score under causal attention. Sequences are batched longest
    first to waste little on padding. Returns, in input order, dicts
    {"step_scores": [p_1..p_K], "outcome_score": p | None}. Rank 0 shows the progress
    (``problem_of[i]``: the problem of sequence i, for the problems' rate; default one each).
    """
    if len(prompt_ids) != len(completions):
        raise ValueError(f"score_completions: {len(prompt_ids)} prompts for "
                         f"{len(completions)} completions")
    device = next(rm.parameters()).device
    seqs = [list(p) + list(c) for p, c in zip(prompt_ids, completions)]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    scores = [None] * len(seqs)
    progress = Progress("scoring", problem_of or list(range(len(seqs))))
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        tokens = collate([seqs[i] for i in rows], tok.pad_id).to(device)   # (B, T)
        probs = torch.sigmoid(rm(tokens)).cpu().tolist()                     # (B, T)
        for p, i in zip(probs, rows):
            steps, answer = score_positions(tok, completions[i])
            off = len(prompt_ids[i])
            scores[i] = {"step_scores": [p[off + k] for k in steps],
                         "outcome_score": p[off + answer] if answer is not None else None}
        progress.done(rows)
    progress.close()
    return scores


def score_samples(rm: RewardModel, tok, samples: list[dict], batch_size: int = 16) -> list[dict]:
    """Fill in ``step_scores`` / ``outcome_score`` of every sample record (in place), one pass."""
    encoded = [encode_completion(tok, s["question"], s["completion"]) for s in samples]
    prompts, completions = [e[0] for e in encoded], [e[1] for e in encoded]
    ids = [s["id"] for s in samples]
    for s, sc in zip(samples, score_completions(rm, tok, prompts, completions, batch_size, ids)):
        s.update(sc)
    return samples


AGGREGATIONS = {"min": min, "prod": math.prod, "mean": lambda p: sum(p) / len(p)}


def aggregate(step_scores: list[float], outcome_score: float | None, how: str) -> float:
    """One score per solution from its step probabilities.

    min / prod / mean run over the step scores; a solution with no step before its answer uses
    its outcome score instead. last = the outcome score at the answer token (ORM-style), else
    the last step score. A solution with nothing to score gets 0.0 (it has no answer to win with).
    """
    if how == "last":
        scores = [outcome_score] if outcome_score is not None else step_scores[-1:]
    elif how in AGGREGATIONS:
        scores = step_scores or ([outcome_score] if outcome_score is not None else [])
    else:
        raise ValueError(f"aggregate: how={how!r}; choose from {sorted(AGGREGATIONS) + ['last']}")
    if not scores:
        return 0.0
    return scores[0] if how == "last" else float(AGGREGATIONS[how](scores))


def sample_score(sample: dict, how: str) -> float:
    """``aggregate`` of a scored sample record."""
    return aggregate(sample.get("step_scores") or [], sample.get("outcome_score"), how)

# ----------------------------------------------------------------------------- ROC-AUC


def roc_auc(scores, labels) -> float:
    """Exact ROC-AUC = P(score of a random positive > that of a random negative), ties counting 1/2.

    Rank form (Mann-Whitney U): (sum of positive ranks - P(P+1)/2) / (P * Q), tied scores
    sharing their average rank. NaN when either class is empty.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2                         # mean 1-based rank
    ranks = avg_rank[inverse]                                               # (N,)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def step_and_outcome_auc(rm: RewardModel, tok, records: list[dict], batch_size: int = 16) -> dict:
    """Step- and outcome-level ROC-AUC of ``rm`` on held-out RM records.

    Each record's solution is scored as a sampled one would be: a last step without an answer
    gets its "\\n\\n" so that it has a delimiter to be read at. Steps with label None are
    skipped; a record whose delimiters do not match its steps one to one (a step with a blank
    line inside) contributes no step pairs.
    """
    encoded = []
    for r in records:
        text = format_solution(r["steps"], r["answer"])
        if r["answer"] is None and r["steps"]:
            text += STEP_SEP
        encoded.append(encode_completion(tok, r["question"], text))
    prompts, completions = [e[0] for e in encoded], [e[1] for e in encoded]
    scored = score_completions(rm, tok, prompts, completions, batch_size)
    step_s, step_y, out_s, out_y = [], [], [], []
    for r, sc in zip(records, scored):
        if len(sc["step_scores"]) == len(r["steps"]):
            for p, y in zip(sc["step_scores"], r["step_labels"]):
                if y is not None:
                    step_s.append(p)
                    step_y.append(y)
        if r["outcome_label"] is not None and sc["outcome_score"] is not None:
            out_s.append(sc["outcome_score"])
            out_y.append(r["outcome_label"])
    return {"step_auc": roc_auc(step_s, step_y), "n_steps": len(step_s),
            "outcome_auc": roc_auc(out_s, out_y), "n_outcomes": len(out_s)}


def auc_by_difficulty(rm: RewardModel, tok, records: list[dict], batch_size: int = 16) -> dict:
    """``step_and_outcome_auc`` on the easy, hard and all held-out records."""
    return {k: step_and_outcome_auc(rm, tok, [r for r in records
                                              if k == "all" or difficulty(r.get("level")) == k],
                                    batch_size) for k in SPLITS}


def outcome_aucs(samples: list[dict]) -> dict:
    """ROC-AUC (answer correct vs not) of each aggregated score, per split."""
    out = {}
    for how in ("min", "prod", "mean", "last"):
        pairs = [(difficulty(s["level"]), sample_score(s, how), s["correct"])
                 for s in samples if s["correct"] is not None]
        out[how] = {k: roc_auc([x for sp, x, _ in pairs if k in (sp, "all")],
                               [y for sp, _, y in pairs if k in (sp, "all")]) for k in SPLITS}
    return out


def within_problem_auc(samples: list[dict], scores: list[float]) -> dict:
    """Mean over problems (with both right and wrong samples) of the ROC-AUC of ``scores``
    against correctness among that problem's own samples, per difficulty."""
    by_id = {}
    for s, score in zip(samples, scores):
        by_id.setdefault(s["id"], []).append((score, bool(s["correct"]), difficulty(s["level"])))
    out = {}
    for split in ("easy", "hard"):
        aucs = [roc_auc([x[0] for x in g], [x[1] for x in g]) for g in by_id.values()
                if g[0][2] == split and 0 < sum(x[1] for x in g) < len(g)]
        out[split] = float(np.mean(aucs)) if aucs else float("nan")
        out[f"{split}_problems"] = len(aucs)
    return out


@torch.no_grad()
def min_token_probs(policy, tok, samples: list[dict], batch_size: int = 64) -> list[float]:
    """Each sample's smallest completion-token probability under ``policy`` (temperature 1):
    the generator's own confidence, the baseline an evaluator has to beat."""
    out = []
    for i in range(0, len(samples), batch_size):
        part = [encode_completion(tok, s["question"], s["completion"]) for s in samples[i:i + batch_size]]
        tokens = collate([p + c for p, c in part], tok.pad_id).to(next(policy.parameters()).device)
        logps = token_logps(policy(tokens), tokens)                          # (B, T-1)
        for b, (p, c) in enumerate(part):
            out.append(float(logps[b, len(p) - 1:len(p) - 1 + len(c)].min().exp()) if c else 0.0)
    return out
