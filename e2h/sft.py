"""The generators: supervised fine-tuning and few-shot prompting (PAPER.md, "Generators").

SFT is next-token cross-entropy on the target tokens of each example, the completion and its
EOS; BOS and the prompt are masked (the masks come from ``data.format.tokenize_sft``):

    loss = -sum_{b,t} mask[b,t] * log p(tokens[b,t] | tokens[b,<t]) / sum_{b,t} mask[b,t]

The loss is averaged over all target tokens of the batch, so every token weighs the same and a
long solution counts more than a short one. This is what the paper's code does
(``cross_entropy(..., reduction="mean")`` over unmasked labels) and what the usual libraries do.
The alternative, averaging each sequence first and then over sequences, weighs every
*example* the same and up-weights the tokens of short solutions; it is not used here.

The paper fine-tunes with the input and output embeddings and all norms frozen
(``freeze_embeddings``).

ICL baseline: a 4-shot prompt in the Minerva style ("Problem:" / "Solution:" / "Final Answer:
The final answer is $X$. I hope it is correct."), exemplars drawn from easy, hard or all levels,
decoded greedily with no training.

Letters: B batch, T time, V vocab.
"""
from __future__ import annotations

import re

import torch

from data.format import format_prompt, tokenize_sft

# ----------------------------------------------------------------------------- SFT


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


def encode_sft(tok, record: dict) -> tuple[list[int], list[int]]:
    """Tokens and loss mask of one SFT record: ``question`` (or ``prompt``) + ``completion``.

    ``eos`` (default true) is false for a PRM800K middle step: its target ends with "\n\n",
    and an EOS there would teach the model to stop after every step.
    """
    prompt = record["prompt"] if "prompt" in record else format_prompt(record["question"])
    return tokenize_sft(tok, prompt, record["completion"], eos=record.get("eos", True))


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
    average), ``nll`` (the loss), ``accuracy`` (greedy next-token accuracy on targets).
    """
    logps = token_logps(logits, tokens)                                     # (B, T-1)
    mask = loss_mask[:, 1:].to(logps.dtype)                                 # (B, T-1)
    n_tokens = mask.sum()
    loss = -(logps * mask).sum() / n_tokens.clamp(min=1)
    with torch.no_grad():
        hits = (logits[:, :-1].argmax(-1) == tokens[:, 1:]).to(mask.dtype)  # (B, T-1)
        accuracy = (hits * mask).sum() / n_tokens.clamp(min=1)
    return loss, {"nll": loss.detach(), "n_tokens": n_tokens, "accuracy": accuracy}


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

# ----------------------------------------------------------------------------- ICL

ICL_STOP = "\n\nProblem:"   # the model, left alone, goes on to write the next exemplar
_FINAL = re.compile(r"Final Answer: The final answer is (.*?)\. I hope it is correct\.", re.S)


def icl_exemplar(question: str, solution: str, answer: str) -> str:
    return (f"Problem:\n{question.strip()}\n\nSolution:\n{solution.strip()}\n"
            f"Final Answer: The final answer is ${answer.strip()}$. I hope it is correct.")


def icl_prompt(exemplars: list[dict], question: str) -> str:
    """Minerva-style few-shot prompt: the exemplars, then the question, ending at "Solution:\\n".

    Each exemplar is a problem record with ``question``, ``answer`` and a worked solution
    (``solution`` text, else its ``steps`` joined by newlines).
    """
    shots = [icl_exemplar(e["question"], _solution_text(e), e["answer"]) for e in exemplars]
    return "\n\n".join(shots + [f"Problem:\n{question.strip()}\n\nSolution:\n"])


def _solution_text(problem: dict) -> str:
    return problem.get("solution") or "\n".join(problem.get("steps") or [])


def pick_exemplars(problems: list[dict], which: str, k: int = 4, rng=None) -> list[dict]:
    """k exemplars from the easy (levels 1-3), hard (4-5) or all problems that have a solution.

    ``rng`` is a ``random.Random``; the pool keeps the order of ``problems``.
    """
    levels = {"easy": (1, 2, 3), "hard": (4, 5), "all": (1, 2, 3, 4, 5)}
    if which not in levels:
        raise ValueError(f"pick_exemplars: which={which!r}; choose easy, hard or all")
    pool = [p for p in problems
            if p.get("level") in levels[which] and p.get("answer") and _solution_text(p)]
    if len(pool) < k:
        raise ValueError(f"pick_exemplars: only {len(pool)} {which} problems with a solution, "
                         f"need {k}")
    return rng.sample(pool, k)


def extract_icl_answer(text: str) -> str | None:
    """The answer of a Minerva-style continuation: the "Final Answer" line of the first solution,
    else the last ``\\boxed{}`` / "# Answer" of it (``e2h.grader.extract_answer``)."""
    from e2h.grader import extract_answer
    text = text.split(ICL_STOP)[0]
    m = _FINAL.search(text)
    if m:
        answer = m.group(1).strip()
        if answer.startswith("$") and answer.endswith("$") and len(answer) > 1:
            answer = answer[1:-1].strip()
        return answer or None
    return extract_answer(text)


def evaluate_icl(model, tok, problems: list[dict], exemplars: list[dict], max_new_tokens: int = 512,
                 batch_size: int = 8) -> tuple[list[dict], dict]:
    """Greedy few-shot accuracy of an untrained model: (sample records, accuracy per split)."""
    from e2h.evaluate import accuracy_by_split, sample_solutions
    samples = sample_solutions(model, tok, problems, n=1, temperature=0.0, top_k=None,
                               max_new_tokens=max_new_tokens, batch_size=batch_size,
                               prompt_fn=lambda q: icl_prompt(exemplars, q),
                               answer_fn=extract_icl_answer,
                               stop_fn=lambda ids: ICL_STOP in tok.decode(ids[-len(ICL_STOP):]))
    return samples, accuracy_by_split(samples)
