"""The generators: supervised fine-tuning and few-shot prompting (docs/paper.md, "Generators").

SFT is next-token cross-entropy on the target tokens of each example, the completion and its
EOS; BOS and the prompt are masked (the masks come from ``data.format.tokenize_sft``):

    loss = -sum_{b,t} mask[b,t] * log p(tokens[b,t] | tokens[b,<t]) / sum_{b,t} mask[b,t]

The loss is averaged over all target tokens of the batch, so every token weighs the same and a
long solution counts more than a short one. This is what the paper's code does
(``cross_entropy(..., reduction="mean")`` over unmasked labels) and what the usual libraries do.
The alternative, averaging each sequence first and then over sequences, weighs every
*example* the same and up-weights the tokens of short solutions; it is not used here.

The paper fine-tunes with the input and output embeddings and all norms frozen
(``freeze_embeddings``). The few-shot baseline, the other generator of Table 1, is e2h/icl.py.

Letters: B batch, T time, V vocab.
"""
from __future__ import annotations

import torch

from data.format import format_prompt, tokenize_sft
from e2h.sequences import collate, token_logps

def encode_sft(tok, record: dict, max_len: int | None = None):
    """Tokens and loss mask of one SFT record: ``question`` (or ``prompt``) + ``completion``.

    ``eos`` (default true) is false for a PRM800K middle step: its target ends with "\n\n",
    and an EOS there would teach the model to stop after every step. With ``max_len`` the
    example is cut to it, and None when no target token is left.
    """
    prompt = record["prompt"] if "prompt" in record else format_prompt(record["question"])
    tokens, mask = tokenize_sft(tok, prompt, record["completion"], eos=record.get("eos", True))
    if max_len is None:
        return tokens, mask
    tokens, mask = tokens[:max_len], mask[:max_len]
    return (tokens, mask) if sum(mask[1:]) else None


def sft_batch(encoded: list[tuple[list[int], list[int]]], pad_id: int,
              max_len: int | None = None) -> dict:
    """{"tokens", "loss_mask"} (B, T) from ``encode_sft`` outputs; pads are never targets."""
    return {"tokens": collate([t for t, _ in encoded], pad_id, max_len),
            "loss_mask": collate([m for _, m in encoded], 0, max_len)}


def sft_loss(logits: torch.Tensor, tokens: torch.Tensor, loss_mask: torch.Tensor):
    """Masked next-token cross-entropy, averaged over all target tokens of the batch.

    logits (B, T, V), tokens (B, T), loss_mask (B, T) with 1 where token t is a target.
    Returns (loss, metrics): loss is a scalar; metrics are detached: ``n_tokens`` (targets in the
    batch; a loop that accumulates micro-batches weighs each loss by it to keep the token
    average), ``nll`` (the loss), ``mean_token_accuracy`` (greedy next-token accuracy on
    targets; TRL's SFTTrainer logs it under that name).
    """
    logps = token_logps(logits, tokens)                                     # (B, T-1)
    mask = loss_mask[:, 1:].to(logps.dtype)                                 # (B, T-1)
    n_tokens = mask.sum()
    loss = -(logps * mask).sum() / n_tokens.clamp(min=1)
    with torch.no_grad():
        hits = (logits[:, :-1].argmax(-1) == tokens[:, 1:]).to(mask.dtype)  # (B, T-1)
        accuracy = (hits * mask).sum() / n_tokens.clamp(min=1)
    return loss, {"nll": loss.detach(), "n_tokens": n_tokens, "mean_token_accuracy": accuracy}


def loss_fn(model, batch: dict):
    """SFT loss of ``model`` on a batch {"tokens", "loss_mask"} (B, T)."""
    return sft_loss(model(batch["tokens"]), batch["tokens"], batch["loss_mask"])


def freeze_embeddings(model) -> list[str]:
    """Freeze the token embeddings, every RMSNorm and the LM head, as the paper trains.

    "Norms" are all of them (per-layer and final), as in the paper's code. Works on a
    Transformer or on anything holding one (a RewardModel's trunk). Returns the frozen names.
    """
    frozen = []
    for name, p in model.named_parameters():
        parts = name.split(".")[:-1]                    # module path, without "weight"
        if any(m in ("embed_tokens", "lm_head") or m.endswith("norm") for m in parts):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen
