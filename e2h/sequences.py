"""Per-token and per-sequence log-probabilities, and padding: what every objective shares.

SFT, DPO, PPO and the study's confidence measure all read the same quantity, the log-prob of
each next token under a model, on the same right-padded (B, T) token grid: entry t of a
(B, T-1) result belongs to token t+1. PPO and GRPO put their sampled solutions on that grid
with ``trajectories`` and run their frozen models over it in chunks with ``forward_rows``.

Letters: B batch, T time, V vocab.
"""
from __future__ import annotations

import torch

from data.format import score_positions


def collate(seqs: list[list], pad_value, max_len: int | None = None) -> torch.Tensor:
    """Right-pad (and cut to ``max_len``) a list of sequences into one (B, T) tensor.

    The dtype follows the values: int lists give int64, lists holding floats give float32.
    """
    if not seqs:
        raise ValueError("collate: no sequences")
    if max_len is not None:
        seqs = [s[:max_len] for s in seqs]
    T = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [pad_value] * (T - len(s)) for s in seqs])


def token_logps(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(tokens[:, t+1] | tokens[:, :t+1]) under softmax(logits / temperature): (B, T-1) float32.

    Computed as logit - logsumexp(logits) in float32 whatever the model dtype: a bf16
    log-softmax over 32k entries loses the small differences that ratios and KLs are made of.
    """
    logits = logits[:, :-1].float()                                          # (B, T-1, V)
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, tokens[:, 1:, None]).squeeze(-1)             # (B, T-1)
    return picked - torch.logsumexp(logits, dim=-1)                         # (B, T-1)


def sequence_logps(model, tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probs of the target tokens (loss_mask 1: completion and EOS): (B,) float32."""
    mask = loss_mask[:, 1:].float()                                   # (B, T-1): token t+1
    empty = (mask.sum(-1) == 0).nonzero()
    if len(empty):
        raise ValueError(f"sequence_logps: sequence {empty[0].item()} has no completion tokens")
    return (token_logps(model(tokens), tokens) * mask).sum(-1)        # (B,)


def trajectories(tok, prompts: list[list[int]], samples):
    """Sampled ids (``e2h.sample.Sample``) -> tokens (B, T), mask and recorded logps (B, T-1),
    grid positions of step delimiters and of each last trained token, and the completion texts."""
    seqs, masks, logps, steps, last, texts = [], [], [], [], [], []
    for b, (prompt, s) in enumerate(zip(prompts, samples)):
        completion = list(s.tokens)
        if not completion:
            raise ValueError(f"rollout: sample {b} has no completion tokens")
        # EOS is not trained, unless it is all there is (its format penalty needs a token)
        n = len(completion) - (completion[-1] == tok.eos_id and len(completion) > 1)
        P, tail = len(prompt), len(completion) - n   # completion token c sits at grid P-1+c
        seqs.append(prompt + completion)
        masks.append([0] * (P - 1) + [1] * n + [0] * tail)                 # len(seq) - 1
        logps.append([0.0] * (P - 1) + list(s.logps[:n]) + [0.0] * tail)
        step_positions, _ = score_positions(tok, completion[:n])
        steps.append([P - 1 + c for c in step_positions])
        last.append(P - 2 + n)
        texts.append(tok.decode(completion))
    return (collate(seqs, tok.pad_id), collate(masks, 0).float(), collate(logps, 0.0).float(),
            steps, last, texts)


def forward_rows(fn, tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """fn over row chunks of tokens (B, T), concatenated along the batch."""
    return torch.cat([fn(x) for x in tokens.split(batch_size)])
