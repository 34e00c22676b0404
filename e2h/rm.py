"""Reward models (evaluators): ORM, PRM and OPRM (PAPER.md, "Reward models").

A reward model is the language model's trunk with its LM head replaced by a zero-initialized
linear head that gives one logit per position; p = sigmoid(logit). The zero init makes every
prediction 0.5 at step 0, so training starts from "no opinion" rather than from noise. Value
models (PPO) reuse the same module.

Loss: per-token binary cross-entropy weighted by a 0/1 mask, loss = sum(w * BCE) / sum(w).
Which tokens carry which label is decided in ``data.format.tokenize_rm``:
- PRM: every token of a step, its trailing "\\n\\n" included, carries the step's label;
- ORM: every solution token carries the outcome (final-answer) label;
- OPRM: the union of both kinds of example; nothing here differs.

Scoring: a step score at the first token of each "\\n\\n" that ends a step, an outcome score at
the last answer token (``data.format.score_positions``), aggregated by min, prod, mean or last.

ORM data: sampled solutions of easy problems labelled by their final answer, each problem
rebalanced to between 1:3 and 3:1 correct:incorrect by subsampling the larger class. A problem
whose samples are all correct or all wrong cannot be brought into that range and is dropped:
it says nothing about which of *its* solutions are better.

Letters: B batch, T time, C model dim, N samples.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data.format import (STEP_SEP, format_prompt, format_solution, parse_solution, score_positions,
                         tokenize_rm)
from e2h.sft import collate


class RewardModel(nn.Module):
    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk
        if trunk.lm_head is not None:
            # never used: frozen so optimizers skip it and DDP finds no unused trainable parameter
            trunk.lm_head.requires_grad_(False)
        w = trunk.embed_tokens.weight                # the head lives where the trunk does
        self.score = nn.Linear(trunk.args.dim, 1, device=w.device, dtype=w.dtype)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    @classmethod
    def from_policy(cls, model: nn.Module) -> "RewardModel":
        """A reward (or value) model whose trunk is a copy of ``model``; ``model`` is untouched."""
        return cls(copy.deepcopy(model))

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) -> float32 logits (B, T), one per position."""
        h = self.trunk.hidden(tokens, positions)                             # (B, T, C)
        return self.score(h).squeeze(-1).float()                             # (B, T)


def rm_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor):
    """Weighted per-token BCE, sum(w * BCE) / sum(w) over the whole batch.

    logits, labels, weights: (B, T) (labels in {0, 1}, weights 0/1). Returns (loss, metrics);
    metrics are detached: ``n_tokens`` = sum(w), ``accuracy`` = weighted share of tokens with
    (p > 0.5) == label, ``mean_p`` = weighted mean probability.
    """
    weights = weights.to(logits.dtype)
    labels = labels.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")   # (B, T)
    n_tokens = weights.sum()
    loss = (weights * bce).sum() / n_tokens.clamp(min=1)
    with torch.no_grad():
        hits = ((logits > 0).to(logits.dtype) == labels).to(logits.dtype)
        accuracy = (weights * hits).sum() / n_tokens.clamp(min=1)
        mean_p = (weights * torch.sigmoid(logits)).sum() / n_tokens.clamp(min=1)
    metrics = {"bce": loss.detach(), "n_tokens": n_tokens, "accuracy": accuracy, "mean_p": mean_p}
    return loss, metrics


def loss_fn(rm: RewardModel, batch: dict):
    """Reward-model loss on a batch {"tokens", "labels", "weights"} (B, T)."""
    return rm_loss(rm(batch["tokens"]), batch["labels"], batch["weights"])


def encode_rm(tok, record: dict):
    """(tokens, labels, weights) of one canonical RM record."""
    return tokenize_rm(tok, record["question"], record["steps"], record["answer"],
                       record["step_labels"], record["outcome_label"])


def rm_batch(encoded: list[tuple], pad_id: int, max_len: int | None = None) -> dict:
    """{"tokens", "labels", "weights"} (B, T) from ``encode_rm`` outputs; pads have weight 0."""
    return {"tokens": collate([e[0] for e in encoded], pad_id, max_len),
            "labels": collate([[float(x) for x in e[1]] for e in encoded], 0.0, max_len),
            "weights": collate([[float(x) for x in e[2]] for e in encoded], 0.0, max_len)}

# ----------------------------------------------------------------------------- scoring


def encode_completion(tok, question: str, completion: str) -> tuple[list[int], list[int]]:
    """[BOS] + prompt ids and completion ids, tokenized together as in ``tokenize_rm`` (a
    tokenizer that marks word starts would encode the completion alone differently)."""
    prompt = format_prompt(question)
    ids, offsets = tok.encode_with_offsets(prompt + completion)
    n_prompt = sum(1 for start, _ in offsets if start < len(prompt))
    return [tok.bos_id] + ids[:n_prompt], ids[n_prompt:]


@torch.no_grad()
def score_completions(rm: RewardModel, tok, prompt_ids: list[list[int]],
                      completions: list[list[int]], batch_size: int = 16) -> list[dict]:
    """Step and outcome probabilities of N completions, ``batch_size`` sequences per forward.

    ``prompt_ids[i]`` + ``completions[i]`` is sequence i; it is right-padded, so padding never
    changes a real position's score under causal attention. Sequences are batched longest
    first to waste little on padding. Returns, in input order, dicts
    {"step_scores": [p_1..p_K], "outcome_score": p | None}.
    """
    if len(prompt_ids) != len(completions):
        raise ValueError(f"score_completions: {len(prompt_ids)} prompts for "
                         f"{len(completions)} completions")
    device = next(rm.parameters()).device
    seqs = [list(p) + list(c) for p, c in zip(prompt_ids, completions)]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    scores = [None] * len(seqs)
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        tokens = collate([seqs[i] for i in rows], tok.pad_id).to(device)   # (B, T)
        probs = torch.sigmoid(rm(tokens)).cpu().tolist()                     # (B, T)
        for p, i in zip(probs, rows):
            steps, answer = score_positions(tok, completions[i])
            off = len(prompt_ids[i])
            scores[i] = {"step_scores": [p[off + k] for k in steps],
                         "outcome_score": p[off + answer] if answer is not None else None}
    return scores


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

# ----------------------------------------------------------------------------- data


def _rm_record(sample: dict, step_labels, outcome_label: int) -> dict:
    steps, answer = parse_solution(sample["completion"])
    return {"id": sample["id"], "question": sample["question"], "steps": steps, "answer": answer,
            "step_labels": list(step_labels) if step_labels is not None else [None] * len(steps),
            "outcome_label": int(outcome_label), "level": sample.get("level")}


def orm_examples(samples: list[dict], rng, max_ratio: int = 3) -> list[dict]:
    """ORM records from graded sample records, each problem rebalanced by subsampling.

    Per problem (``id``), with P correct and Q incorrect samples: if P > max_ratio * Q keep a
    random max_ratio * Q of the correct ones, if Q > max_ratio * P likewise; problems with
    P = 0 or Q = 0 are dropped, as are empty completions and samples with ``correct`` None
    (no reference answer).
    ``rng`` is a ``random.Random``; kept samples stay in their input order.
    """
    groups: dict[str, list[dict]] = {}
    for s in samples:
        if s.get("correct") is not None and s["completion"].strip():
            groups.setdefault(s["id"], []).append(s)
    records = []
    for group in groups.values():
        pos = [i for i, s in enumerate(group) if s["correct"]]
        neg = [i for i, s in enumerate(group) if not s["correct"]]
        if not pos or not neg:
            continue
        if len(pos) > max_ratio * len(neg):
            pos = rng.sample(pos, max_ratio * len(neg))
        elif len(neg) > max_ratio * len(pos):
            neg = rng.sample(neg, max_ratio * len(pos))
        for i in sorted(pos + neg):
            records.append(_rm_record(group[i], None, group[i]["correct"]))
    return records


def prm_examples(samples: list[dict], problems: list[dict], labeler) -> list[dict]:
    """PRM records from sample records whose steps a program can check.

    ``labeler(problem, completion) -> (step_labels, outcome_label)`` (e.g.
    ``data.synthetic.label_solution``), one label per step of ``parse_solution(completion)``.
    """
    by_id = {p["id"]: p for p in problems}
    records = []
    for s in samples:
        if s["id"] not in by_id:
            raise ValueError(f"prm_examples: sample id {s['id']!r} is not among the problems")
        step_labels, outcome_label = labeler(by_id[s["id"]], s["completion"])
        record = _rm_record(s, step_labels, outcome_label)
        if len(record["step_labels"]) != len(record["steps"]):
            raise ValueError(f"prm_examples: id {s['id']!r}: {len(record['steps'])} steps but "
                             f"{len(record['step_labels'])} step labels from the labeler")
        records.append(record)
    return records

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
