"""KV-cache sampling with continuous batching: a fixed number of rows, each refilled as it ends.

Step 1 of the pipeline. Every stage that samples from a generator (ORM data, re-ranking, PPO
rollouts, DPO and ReST-EM pairs; docs/paper.md "Reward models", "Re-ranking", "RL") calls
``generate``; ``sample_solutions`` turns its ids into graded sample records.

- The B * n (prompt, sample) pairs stream through ``max_rows`` rows of one KVCache, allocated
  once. When a row's sequence ends (EOS, ``stop_fn`` or ``max_new_tokens``), the next pair takes
  the row: its prompt is prefilled and copied into the row while the other rows keep their
  place (rows are filled to different lengths; see KVCache). Short samples no longer wait for
  the longest one of their batch.
- The pairs admitted together are prefilled in one forward, right-padded (causal attention
  keeps the padding invisible to the real tokens), and the n samples of a prompt admitted
  together share its prefill. A prefill costs about a decode step, so free rows are refilled
  once ``max(1, rows // REFILL_EVERY_ROWS)`` of them wait, not one at a time.
- When no pair is left and at most half of the rows still decode, the finished rows leave the
  batch (KVCache.keep): the tail of a stream runs on the rows it needs.
- Each pair draws from its own stream: a seed per pair from ``generator``, ``max_new_tokens``
  uniforms from it, and token t is the inverse CDF of its distribution at uniform t. A seed thus
  reproduces a run, and a sample does not depend on ``max_rows`` or on the pairs that shared
  its batch.
- Rank 0 shows a progress bar of the samples done (samples/s) and the problems whose samples
  are all done (problems/s); the other ranks stay silent.
- ``logps`` are log_softmax(logits / temperature) of the sampled token under the unfiltered
  distribution (temperature 0: of the plain logits), in float32: the numbers a full forward
  over prompt + completion gives, which PPO's ratio and DPO's reference compare against.
  Top-k / top-p only restrict which tokens can be drawn.

Letters: R rows, U prompts in one prefill, P prompt length, M max_new_tokens, V vocab.
"""
from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.format import format_prompt
from e2h.infra import distributed as dist
from e2h.grader import extract_answer, grade_answer
from e2h.kv_cache import KVCache
from e2h.model import Transformer

# Rows streamed at once when the caller does not say (bench/README.md, "Continuous batching").
MAX_ROWS = 128
REFILL_EVERY_ROWS = 8
# Reading the `done` flags waits for the device; on a GPU that would stall the launch queue at
# every step, so finished rows are looked for every few steps there (and decode idly until then).
CHECK_DONE_EVERY = 8


@dataclass
class Sample:
    tokens: list[int] = field(default_factory=list)   # new tokens, ending with EOS if produced
    logps: list[float] = field(default_factory=list)  # one per new token
    finished: bool = False                            # ended by EOS or stop_fn, not by length


class Progress:
    """A progress bar on rank 0: items done (``unit``/s) and the problems whose items are all
    done, with their rate; ``problem_of[j]`` is the problem of item j."""

    def __init__(self, what: str, problem_of: list, unit: str = "sample"):
        self.problem_of, self.left, self.problems = problem_of, Counter(problem_of), 0
        self.bar = tqdm(total=len(problem_of), desc=what, unit=unit, leave=False,
                        dynamic_ncols=True, disable=not (dist.is_main() and problem_of))

    def done(self, items: list[int]):
        for j in items:
            self.left[self.problem_of[j]] -= 1
            self.problems += self.left[self.problem_of[j]] == 0
        if items and not self.bar.disable:
            rate = self.problems / max(self.bar.format_dict["elapsed"], 1e-9)
            self.bar.set_postfix_str(f"{self.problems}/{len(self.left)} problems, "
                                     f"{rate:.3g} problems/s", refresh=False)
            self.bar.update(len(items))

    def close(self):
        self.bar.close()


def pair_seeds(n_pairs: int, generator: torch.Generator | None = None) -> list[int]:
    """One seed per (prompt, sample) pair, drawn from ``generator`` (None: torch's global one)."""
    device = generator.device if generator is not None else "cpu"
    return torch.randint(2**62, (n_pairs,), generator=generator, device=device).tolist()


def prefill(model: Transformer, prompts: list[list[int]], dtype, device):
    """The prompts through the model into a fresh cache of U rows, right-padded (slot p of a row
    is position p); returns (cache, prompt lengths (U,), logits (U, V) of each last token)."""
    lengths = torch.tensor([len(p) for p in prompts], device=device)          # (U,)
    tokens = torch.zeros(len(prompts), max(len(p) for p in prompts), dtype=torch.long)
    for u, p in enumerate(prompts):
        tokens[u, :len(p)] = torch.tensor(p, dtype=torch.long)
    cache = KVCache(model.args, len(prompts), tokens.shape[1], dtype, device)
    h = model.hidden(tokens.to(device), cache=cache)                          # (U, P, C)
    last = h[torch.arange(len(prompts), device=device), lengths - 1]          # (U, C)
    return cache, lengths, model.logits(last)                                 # (U, V)


def decode_one_token(model: Transformer, token, cache: KVCache) -> torch.Tensor:
    """Feed token (R,), each at its row's next slot; logits (R, V) for the next one."""
    h = model.hidden(token[:, None], cache.lengths[:, None], cache)          # (R, 1, C)
    return model.logits(h)[:, -1]                                            # (R, V)


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


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The first token whose cumulative probability exceeds u * total, per row: (N, V), (N,) in
    [0, 1) -> (N,). A token of probability 0 adds nothing to the sum, so it is never drawn."""
    cdf = probs.cumsum(-1)                                                    # (N, V)
    total = cdf[:, -1]
    x = torch.minimum(uniforms * total, total.nextafter(torch.zeros_like(total)))   # < total
    return torch.searchsorted(cdf, x[:, None], right=True)[:, 0]


def sample_token(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                 top_p: float | None = None, uniforms: torch.Tensor | None = None):
    """One token per row of logits (N, V), drawn at uniforms (N,) in [0, 1) unless greedy (None:
    fresh ones from torch's global generator); returns (tokens (N,), logps (N,) float32)."""
    logits = logits.float()
    if temperature == 0:                                           # greedy
        token = logits.argmax(-1)
        logps = F.log_softmax(logits, dim=-1)
    else:
        logps = F.log_softmax(logits / temperature, dim=-1)        # (N, V)
        if uniforms is None:
            uniforms = torch.rand(logits.shape[0], device=logits.device)
        token = inverse_cdf(filter_logits(logps, top_k, top_p).softmax(-1), uniforms)
    return token, logps.gather(-1, token[:, None])[:, 0]           # (N,), (N,)


class _Rows:
    """Per-row state of a stream: the pair in each row and what it has produced so far.

    A row whose pair ended, or that holds none, is ``done``: it still decodes with the others
    until it is refilled, but writes its tokens to the spare column M.
    """

    def __init__(self, R: int, M: int, device):
        self.pair = [None] * R                                    # host: pair index or None
        self.count = torch.zeros(R, dtype=torch.long, device=device)          # tokens so far
        self.done = torch.ones(R, dtype=torch.bool, device=device)
        self.ended = torch.zeros(R, dtype=torch.bool, device=device)          # by EOS / stop_fn
        self.ids = torch.zeros(R, M + 1, dtype=torch.long, device=device)     # (R, M + 1)
        self.logps = torch.zeros(R, M + 1, dtype=torch.float32, device=device)
        self.uniforms = torch.zeros(R, M, dtype=torch.float32, device=device)
        self.host_ids = [[] for _ in range(R)]                    # new ids, for stop_fn

    def start(self, rows: list[int], pairs: list[int], seeds: list[int] | None):
        """Rows ``rows`` begin pairs ``pairs``, each with the uniforms of its own seed."""
        index = torch.tensor(rows, device=self.count.device)
        self.count[index], self.done[index], self.ended[index] = 0, False, False
        for r, j in zip(rows, pairs):
            self.pair[r], self.host_ids[r] = j, []
            if seeds is not None:
                g = torch.Generator(self.count.device).manual_seed(seeds[j])
                self.uniforms[r] = torch.rand(self.uniforms.shape[1], generator=g,
                                              device=self.count.device)

    def record(self, token, logp, eos_id, M: int):
        """Append this step's token and logp to every row that was not done; update done.
        Returns those rows (R,) bool."""
        active = ~self.done
        column = torch.where(active, self.count, M)[:, None]                 # (R, 1)
        self.ids.scatter_(1, column, token[:, None])
        self.logps.scatter_(1, column, logp[:, None])
        self.count += active
        if eos_id is not None:
            self.ended |= active & (token == eos_id)
        self.done |= self.ended | (self.count >= M)
        return active

    def check_stop(self, token, active, stop_fn):
        """stop_fn on the new ids of every active row not ended by EOS (on the host); the
        last token a length allows is checked too."""
        for r, (tok, act, ended) in enumerate(zip(token.tolist(), active.tolist(),
                                                  self.ended.tolist())):
            if act and not ended:
                self.host_ids[r].append(tok)
                if stop_fn(self.host_ids[r]):
                    self.done[r] = self.ended[r] = True

    def harvest(self, samples: list, progress: Progress) -> list[int]:
        """Move the finished rows' sequences into ``samples``; return every free row."""
        finished = [r for r, (j, done) in enumerate(zip(self.pair, self.done.tolist()))
                    if j is not None and done]
        progress.done([self.pair[r] for r in finished])
        if finished:
            index = torch.tensor(finished, device=self.count.device)
            for r, k, ids, logps, ended in zip(finished, self.count[index].tolist(),
                                               self.ids[index].tolist(),
                                               self.logps[index].tolist(),
                                               self.ended[index].tolist()):
                samples[self.pair[r]] = Sample(ids[:k], logps[:k], ended)
                self.pair[r] = None
        return [r for r, j in enumerate(self.pair) if j is None]

    def keep(self, rows: list[int]):
        index = torch.tensor(rows, device=self.count.device)
        for name in ("count", "done", "ended", "ids", "logps", "uniforms"):
            setattr(self, name, getattr(self, name)[index])
        self.pair = [self.pair[r] for r in rows]
        self.host_ids = [self.host_ids[r] for r in rows]


@torch.no_grad()
def generate(model: Transformer, prompts: list[list[int]], max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             n: int = 1, eos_id: int | None = None, stop_fn=None,
             generator: torch.Generator | None = None, max_rows: int = MAX_ROWS,
             seeds: list[int] | None = None) -> list[Sample]:
    """n samples for each prompt (token-id lists), prompt-major: result[b * n + i].

    A sequence stops at ``eos_id`` (kept as its last token), when ``stop_fn(new_ids)`` returns
    True for its new ids so far (e.g. a stop string in their text), or after
    ``max_new_tokens``. temperature 0 is greedy. ``generator`` seeds every sample's own stream
    (module docstring); without it the seeds come from torch's global generator; ``seeds``
    (one per pair, prompt-major) replaces both, so a share of a larger call's pairs samples
    what that call would (e2h/evaluate.py spreads problems over ranks so). At most
    ``max_rows`` sequences decode at once.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    if temperature < 0 or n < 1 or max_new_tokens < 1 or max_rows < 1:
        raise ValueError(f"generate: need temperature >= 0 and n, max_new_tokens, max_rows >= 1 "
                         f"(got {temperature}, {n}, {max_new_tokens}, {max_rows})")
    P = max(len(p) for p in prompts)
    if P + max_new_tokens > model.args.max_seq_len:
        raise ValueError(f"generate: longest prompt {P} + {max_new_tokens} new tokens exceeds "
                         f"max_seq_len {model.args.max_seq_len}")
    pairs = [b for b in range(len(prompts)) for _ in range(n)]    # pair j -> its prompt
    if temperature == 0:
        seeds = None
    elif seeds is None:
        seeds = pair_seeds(len(pairs), generator)
    elif len(seeds) != len(pairs):
        raise ValueError(f"generate: {len(seeds)} seeds for {len(pairs)} (prompt, sample) pairs")
    was_training = model.training
    model.eval()
    progress = Progress("sampling", pairs)
    try:
        return _stream(model, prompts, pairs, seeds, min(max_rows, len(pairs)), max_new_tokens,
                       temperature, top_k, top_p, eos_id, stop_fn, progress)
    finally:
        progress.close()
        model.train(was_training)


def _check_every(device, stop_fn) -> int:
    """Steps between looks at the done flags: every step where that costs nothing (CPU) or
    where stop_fn reads every token on the host anyway."""
    return 1 if device.type == "cpu" or stop_fn is not None else CHECK_DONE_EVERY


def _stream(model, prompts, pairs, seeds, R, M, temperature, top_k, top_p, eos_id, stop_fn,
            progress):
    """The decode loop of ``generate``: one Sample per pair, in pair order."""
    weight = model.embed_tokens.weight
    device = weight.device
    # under autocast the keys and values are computed in the autocast dtype (bf16 on CUDA),
    # not in the float32 of the master weights: the cache must hold what attention is given
    dtype = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
             else weight.dtype)
    check_every = _check_every(device, stop_fn)
    # a finished row decodes up to check_every - 1 more steps before it is seen: spare slots
    cache = KVCache(model.args, R, max(map(len, prompts)) + M + check_every - 1, dtype, device)
    rows = _Rows(R, M, device)
    logits = torch.zeros(R, model.args.vocab_size, device=device)
    samples, admitted = [None] * len(pairs), 0

    def admit(free: list[int]) -> int:
        """The next pairs into rows ``free``; their prompts prefilled once each."""
        free = free[:len(pairs) - admitted]
        js = list(range(admitted, admitted + len(free)))
        prompt_ids = sorted({pairs[j] for j in js})
        source, lengths, first = prefill(model, [prompts[b] for b in prompt_ids], dtype, device)
        src = torch.tensor([prompt_ids.index(pairs[j]) for j in js], device=device)
        index = torch.tensor(free, device=device)
        cache.insert(index, source, src, lengths[src])
        logits[index] = first[src]
        rows.start(free, js, seeds)
        return admitted + len(free)

    admitted = admit(list(range(R)))
    for step in itertools.count(1):
        u = None if seeds is None else rows.uniforms.gather(
            1, rows.count.clamp(max=M - 1)[:, None])[:, 0]                   # (R,)
        token, logp = sample_token(logits, temperature, top_k, top_p, u)
        active = rows.record(token, logp, eos_id, M)
        if stop_fn is not None:
            rows.check_stop(token, active, stop_fn)
        free = []
        if step % check_every == 0:
            free = rows.harvest(samples, progress)
            if len(free) == len(rows.pair) and admitted == len(pairs):
                return samples
            if admitted == len(pairs) and 2 * len(free) >= len(rows.pair):
                keep = [r for r, j in enumerate(rows.pair) if j is not None]
                index = torch.tensor(keep, device=device)
                rows.keep(keep)
                cache.keep(index)
                token, free = token[index], []
            elif free:
                cache.clear(torch.tensor(free, device=device))   # idle rows stay short
        if len(free) < len(rows.pair):                   # some row is still decoding
            logits = decode_one_token(model, token, cache)
        if free and admitted < len(pairs) and (len(free) >= max(1, R // REFILL_EVERY_ROWS)
                                               or len(free) == len(rows.pair)):
            admitted = admit(free)

# ----------------------------------------------------------------------------- sample records


@torch.no_grad()
def sample_solutions(policy, tok, problems: list[dict], *, n: int, temperature: float,
                     top_k: int | None, max_new_tokens: int, batch_size: int, generator=None,
                     seeds=None, prompt_fn=format_prompt, answer_fn=extract_answer,
                     stop_fn=None) -> list[dict]:
    """n sample records per problem (problem-major), graded against ``answer`` when present.

    All problems stream through one ``generate`` call on batch_size * n rows (continuous
    batching: a finished row takes the next sample). Sampling stops at EOS, which is not part
    of the text. ``generator`` / ``seeds``: see ``generate``.
    ``prompt_fn`` / ``answer_fn`` / ``stop_fn`` (see ``generate``) switch the format: the
    few-shot baseline uses its own.
    """
    if not problems:
        return []
    prompts = [tok.encode(prompt_fn(p["question"]), bos=True) for p in problems]
    outs = generate(policy, prompts, max_new_tokens, temperature=temperature, top_k=top_k, n=n,
                    eos_id=tok.eos_id, stop_fn=stop_fn, generator=generator,
                    max_rows=batch_size * n, seeds=seeds)
    samples = []
    for j, out in enumerate(outs):
        p = problems[j // n]
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
