"""Reward models (evaluators): ORM, PRM and OPRM (docs/paper.md, "Reward models").

A reward model (``e2h.model.RewardModel``) is the language model's trunk with its LM head
replaced by a zero-initialized linear head that gives one logit per position; p = sigmoid(logit).
This file is its training objective and data; reading scores off it is e2h/score.py.

Loss: per-token binary cross-entropy weighted by a 0/1 mask, loss = sum(w * BCE) / sum(w).
Which tokens carry which label is decided in ``data.format.tokenize_rm``:
- PRM: every token of a step, its trailing "\\n\\n" included, carries the step's label;
- ORM: every solution token carries the outcome (final-answer) label;
- OPRM: the union of both kinds of example; nothing here differs.

ORM data: sampled solutions of easy problems labelled by their final answer, each problem
rebalanced to between 1:3 and 3:1 correct:incorrect by subsampling the larger class. A problem
whose samples are all correct or all wrong cannot be brought into that range and is dropped:
it says nothing about which of *its* solutions are better.

Letters: B batch, T time, C model dim, N samples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from data.format import parse_solution, tokenize_rm
from e2h.model import RewardModel
from e2h.sequences import collate


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


def encode_rm(tok, record: dict, max_len: int | None = None):
    """(tokens, labels, weights) of one canonical RM record; with ``max_len``, cut to it, and
    None when no labelled token is left."""
    tokens, labels, weights = tokenize_rm(tok, record["question"], record["steps"],
                                          record["answer"], record["step_labels"],
                                          record["outcome_label"])
    if max_len is None:
        return tokens, labels, weights
    tokens, labels, weights = tokens[:max_len], labels[:max_len], weights[:max_len]
    return (tokens, labels, weights) if sum(weights) else None


def rm_batch(encoded: list[tuple], pad_id: int, max_len: int | None = None) -> dict:
    """{"tokens", "labels", "weights"} (B, T) from ``encode_rm`` outputs; pads have weight 0."""
    return {"tokens": collate([e[0] for e in encoded], pad_id, max_len),
            "labels": collate([[float(x) for x in e[1]] for e in encoded], 0.0, max_len),
            "weights": collate([[float(x) for x in e[2]] for e in encoded], 0.0, max_len)}

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
