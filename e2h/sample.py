"""KV-cache sampling: one batched prefill of the prompts, then one token at a time.

Step 1 of the pipeline. Every stage that samples from a generator (ORM data, re-ranking, PPO
rollouts, DPO and ReST-EM pairs; PAPER.md "Reward models", "Re-ranking", "RL") calls
``generate``; ``sample_solutions`` turns its ids into graded sample records.

- Prompts of different lengths share a batch by left padding. Row b's prompt fills cache slots
  [start[b], P); ``cache.start`` masks the pad slots out of attention and positions count from
  the first real token, so each row sees exactly the keys and positions it would see alone.
- The B prompts are prefilled once; ``cache.repeat_interleave(n)`` then lets n samples per
  prompt share that prefill.
- ``logps`` are log_softmax(logits / temperature) of the sampled token under the unfiltered
  distribution (temperature 0: of the plain logits), in float32: the numbers a full forward
  over prompt + completion gives, which PPO's ratio and DPO's reference compare against.
  Top-k / top-p only restrict which tokens can be drawn.
- Draws use an explicit ``torch.Generator``, so a seed reproduces a run.

Letters: B prompts, N = B * n sequences, P longest prompt, V vocab.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from data.format import format_prompt
from e2h.grader import extract_answer, grade_answer
from e2h.model import KVCache, Transformer

# Reading the `done` flags waits for the device; checking them every step would stall the
# launch queue on a GPU, so all-finished is checked every few steps (finished rows idle).
CHECK_DONE_EVERY = 8


@dataclass
class Sample:
    tokens: list[int] = field(default_factory=list)   # new tokens, ending with EOS if produced
    logps: list[float] = field(default_factory=list)  # one per new token
    finished: bool = False                            # ended by EOS or stop_fn, not by length


def prefill(model: Transformer, tokens, positions, cache: KVCache) -> torch.Tensor:
    """Run the prompts (B, P) through the model, filling the cache; logits (B, V) of the last slot."""
    h = model.hidden(tokens, positions, cache)                     # (B, P, C)
    return model.logits(h[:, -1:])[:, -1]                          # (B, V): only the last is needed


def decode_one_token(model: Transformer, token, positions, cache: KVCache) -> torch.Tensor:
    """Feed token (N,) at positions (N,); logits (N, V) for the next one."""
    h = model.hidden(token[:, None], positions[:, None], cache)    # (N, 1, C)
    return model.logits(h)[:, -1]                                  # (N, V)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Top-k then top-p (nucleus): tokens outside the kept set get -inf. (N, V) -> (N, V)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]    # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)   # (N, V)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass;
        # the most likely token is always kept
        drop = probs.cumsum(-1) - probs > top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def sample_token(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None):
    """Draw one token per row of logits (N, V); returns (tokens (N,), logps (N,) float32)."""
    logits = logits.float()
    if temperature == 0:                                           # greedy
        logps = F.log_softmax(logits, dim=-1)
        token = logits.argmax(-1)
    else:
        logps = F.log_softmax(logits / temperature, dim=-1)        # (N, V)
        probs = filter_logits(logps, top_k, top_p).softmax(-1)
        token = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return token, logps.gather(-1, token[:, None])[:, 0]           # (N,), (N,)


def _left_pad(prompts: list[list[int]], pad_id: int, device):
    """Prompts -> tokens (B, P) padded on the left, start (B,) first real slot, positions (B, P)."""
    P = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    for b, p in enumerate(prompts):
        tokens[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
    start = torch.tensor([P - len(p) for p in prompts], dtype=torch.long)
    positions = (torch.arange(P)[None, :] - start[:, None]).clamp(min=0)   # (B, P)
    return tokens.to(device), start.to(device), positions.to(device)


@torch.no_grad()
def generate(model: Transformer, prompts: list[list[int]], max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             n: int = 1, eos_id: int | None = None, stop_fn=None,
             generator: torch.Generator | None = None) -> list[Sample]:
    """n samples for each prompt (token-id lists), prompt-major: result[b * n + i].

    A sequence stops at ``eos_id`` (kept as its last token) or when ``stop_fn(new_ids)`` returns
    True for its new ids so far (e.g. a stop string in their text); the loop ends when every
    sequence has stopped or after ``max_new_tokens``. temperature 0 is greedy. ``generator``
    (on the model's device) makes the draws reproducible for the same call.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    if temperature < 0 or n < 1 or max_new_tokens < 1:
        raise ValueError(f"generate: need temperature >= 0, n >= 1, max_new_tokens >= 1 "
                         f"(got {temperature}, {n}, {max_new_tokens})")
    weight = model.embed_tokens.weight
    tokens, start, positions = _left_pad(prompts, 0, weight.device)
    P = tokens.shape[1]
    if P + max_new_tokens > model.args.max_seq_len:
        raise ValueError(f"generate: longest prompt {P} + {max_new_tokens} new tokens exceeds "
                         f"max_seq_len {model.args.max_seq_len}")
    was_training = model.training
    model.eval()
    try:
        cache = KVCache(model.args, len(prompts), P + max_new_tokens, weight.dtype, weight.device)
        cache.start = start
        logits = prefill(model, tokens, positions, cache)          # (B, V)
        if n > 1:
            cache.repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)            # (N, V)
        new, logps, done = _decode(model, cache, logits, max_new_tokens, temperature, top_k,
                                   top_p, eos_id, stop_fn, generator)
    finally:
        model.train(was_training)
    return [Sample(ids, lp, fin) for ids, lp, fin in zip(new, logps, done)]


def _decode(model, cache, logits, max_new_tokens, temperature, top_k, top_p, eos_id, stop_fn,
            generator):
    """The token loop of ``generate``; returns per-row new ids, logps and finished flags."""
    N, device = logits.shape[0], logits.device
    new = torch.zeros(N, max_new_tokens, dtype=torch.long, device=device)
    logps = torch.zeros(N, max_new_tokens, dtype=torch.float32, device=device)
    lengths = torch.zeros(N, dtype=torch.long, device=device)
    done = torch.zeros(N, dtype=torch.bool, device=device)
    host_ids = [[] for _ in range(N)] if stop_fn is not None else None
    for t in range(max_new_tokens):
        token, logp = sample_token(logits, temperature, top_k, top_p, generator)
        # a stopped row keeps decoding (it shares the batch) but its tokens are discarded
        new[:, t] = token.masked_fill(done, 0)
        logps[:, t] = logp.masked_fill(done, 0.0)
        lengths += (~done).long()
        if eos_id is not None:
            done |= token == eos_id
        if stop_fn is not None:
            for i, (tok, fin) in enumerate(zip(token.tolist(), done.tolist())):
                host_ids[i].append(tok)
                if not fin and stop_fn(host_ids[i]):
                    done[i] = True
        if t == max_new_tokens - 1:
            break
        if (stop_fn is not None or (t + 1) % CHECK_DONE_EVERY == 0) and bool(done.all()):
            break
        positions = cache.length - cache.start                     # (N,) slot minus first real slot
        logits = decode_one_token(model, token, positions, cache)
    lengths, done = lengths.tolist(), done.tolist()
    new = [row[:k] for row, k in zip(new.tolist(), lengths)]
    logps = [row[:k] for row, k in zip(logps.tolist(), lengths)]
    return new, logps, done

# ----------------------------------------------------------------------------- sample records


@torch.no_grad()
def sample_solutions(policy, tok, problems: list[dict], *, n: int, temperature: float,
                     top_k: int | None, max_new_tokens: int, batch_size: int, generator=None,
                     prompt_fn=format_prompt, answer_fn=extract_answer,
                     stop_fn=None) -> list[dict]:
    """n sample records per problem (problem-major), graded against ``answer`` when present.

    ``batch_size`` problems go to ``generate`` at once, i.e. batch_size * n rows decoding
    together after batch_size prefills. Sampling stops at EOS, which is not part of the text.
    ``prompt_fn`` / ``answer_fn`` / ``stop_fn`` (see ``generate``) switch the format: the
    few-shot baseline uses its own.
    """
    samples = []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start:start + batch_size]
        prompts = [tok.encode(prompt_fn(p["question"]), bos=True) for p in chunk]
        outs = generate(policy, prompts, max_new_tokens, temperature=temperature, top_k=top_k,
                        n=n, eos_id=tok.eos_id, stop_fn=stop_fn, generator=generator)
        for j, out in enumerate(outs):
            p = chunk[j // n]
            ids = list(out.tokens)
            if tok.eos_id in ids:
                ids = ids[:ids.index(tok.eos_id)]
            completion = tok.decode(ids)
            answer = answer_fn(completion)
            correct = None if p.get("answer") is None else grade_answer(answer, p["answer"])
            samples.append({"id": p["id"], "question": p["question"], "completion": completion,
                            "answer": answer, "correct": correct, "level": p.get("level"),
                            "step_scores": [], "outcome_score": None})
    return samples
