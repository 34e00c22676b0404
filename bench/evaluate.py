"""Throughput of the whole evaluate path: sample N solutions per problem, score them with a
reward model, re-rank (samples per second, end to end).

Best-of-n and weighted voting spend nearly all their time here. The N samples of a prompt share
one prefill (``generate(..., n=N)``) and the reward model scores ``--rm-batch-size`` samples
per forward.

Sampling is timed three ways, in alternation, on the same problems: without continuous
batching (``static_generate`` below, the sampler before it: every sample of a call in one batch
that decodes until its longest sample ends), ``--sample-batch-size`` problems per call; with it
(``e2h.sample.generate``: ``--max-rows`` rows, each refilled as its sample ends, the tail
compacted) on the same calls; and with it streaming every problem through one call, which is
what continuous batching is for. All draw every sample from the same seeded stream, so they
return the same samples (checked) and do the same useful work. For comparison, sampling with
every sample prefilled on its own (the prompt repeated N times, n=1) is timed too.

Models have random weights (throughput does not depend on them); problems come from the
synthetic curriculum. A sample ends at EOS (random weights draw it now and then) or at
``--max-new-tokens``; the tokens actually sampled are counted and reported.

    python bench/evaluate.py --threads 1                                   # CPU, small preset
    python bench/evaluate.py --device cuda --preset llemma-7b --dtype bfloat16 \\
        --tokenizer ../shared/data/tokenizer/llama2/tokenizer.json --problems 64 --n 16 --max-new-tokens 256
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import e2h.sample  # noqa: E402
from data.format import format_prompt  # noqa: E402
from data.synthetic import make_split, reference_completion  # noqa: E402
from e2h.kv_cache import KVCache  # noqa: E402
from e2h.model import ModelArgs, RewardModel, Transformer  # noqa: E402
from e2h.rerank import rerank_table  # noqa: E402
from e2h.sample import Sample, generate, prefill, sample_solutions, sample_token  # noqa: E402
from e2h.score import score_samples  # noqa: E402
from e2h.tokenizer import Tokenizer, train_tokenizer  # noqa: E402


def random_model(preset: str, vocab_size: int, dtype, device) -> Transformer:
    """Built on the meta device and initialized in place: no float32 copy of a 7B model."""
    args = ModelArgs.from_name(preset)
    with torch.device("meta"):
        model = Transformer(ModelArgs.from_name(preset, vocab_size=max(args.vocab_size, vocab_size)))
    model = model.to(dtype).to_empty(device=device)
    model.init_weights()
    return model.eval()


@torch.no_grad()
def static_generate(model, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                    n=1, eos_id=None, stop_fn=None, generator=None, max_rows=None):
    """``generate`` without continuous batching: all B * n sequences decode together until the
    last one ends (finished rows keep decoding). Same seeded streams as ``generate``."""
    assert stop_fn is None and temperature > 0
    device, dtype, M = model.embed_tokens.weight.device, model.embed_tokens.weight.dtype, max_new_tokens
    pairs = torch.arange(len(prompts), device=device).repeat_interleave(n)      # (N,)
    seeds = torch.randint(2**62, (len(pairs),), generator=generator, device=generator.device)
    uniforms = torch.stack([torch.rand(M, generator=torch.Generator(device).manual_seed(s),
                                       device=device) for s in seeds.tolist()])   # (N, M)
    source, lengths, logits = prefill(model, prompts, dtype, device)
    cache = KVCache(model.args, len(pairs), max(map(len, prompts)) + M, dtype, device)
    cache.insert(torch.arange(len(pairs), device=device), source, pairs, lengths[pairs])
    logits, ids, logps = logits[pairs], [], []
    done = torch.zeros(len(pairs), dtype=torch.bool, device=device)
    count = torch.zeros(len(pairs), dtype=torch.long, device=device)
    for t in range(M):
        token, logp = sample_token(logits, temperature, top_k, top_p, uniforms[:, t])
        ids.append(token), logps.append(logp)
        count += ~done
        done |= token == eos_id
        if t == M - 1 or bool(done.all()):
            break
        logits = e2h.sample.decode_one_token(model, token, cache)
    ids, logps = torch.stack(ids, 1).tolist(), torch.stack(logps, 1).tolist()
    return [Sample(i[:k], lp[:k], i[k - 1] == eos_id)
            for i, lp, k in zip(ids, logps, count.tolist())]


def sample_with(sampler, counter: list):
    """Point the evaluator at ``sampler``, counting the sampled tokens instead of re-encoding."""
    def counting(*args, **kwargs):
        outs = sampler(*args, **kwargs)
        counter[0] += sum(len(o.tokens) for o in outs)
        return outs
    e2h.sample.generate = counting


def median(xs):
    return sorted(xs)[len(xs) // 2]


def timed(fn, device, repeats: int):
    """(result, fastest wall time of ``repeats`` runs): the minimum is the least disturbed by
    other processes on a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # workload
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the models run")
    p.add_argument("--preset", default="small", help="model preset (ModelArgs.from_name)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model dtype")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: train one on the problems)")
    p.add_argument("--problems", type=int, default=10, help="problems (spread over levels 1-5)")
    p.add_argument("--n", type=int, default=16, help="samples per problem")
    p.add_argument("--max-new-tokens", type=int, default=96, help="longest completion")
    p.add_argument("--sample-batch-size", type=int, default=5, help="problems per generate call")
    p.add_argument("--max-rows", type=int, default=None,
                   help="rows of continuous batching (default: generate's own)")
    p.add_argument("--rm-batch-size", type=int, default=32, help="sequences per reward-model forward")
    # how
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs per phase: the median counts for sampling, the fastest else")
    p.add_argument("--skip-unshared", action="store_true", help="do not time the unshared-prefill baseline")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (dynamic shapes: one compile for every row count)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {name}")
    print(vars(args))

    problems = make_split(-(-args.problems // 5), split="test")[:args.problems]
    if args.tokenizer:
        tok = Tokenizer(args.tokenizer)
    else:
        texts = [format_prompt(q["question"]) + reference_completion(q) for q in problems]
        tok = train_tokenizer(texts, Path(tempfile.mkdtemp()) / "tokenizer.json", vocab_size=128)
    torch.manual_seed(0)
    policy = random_model(args.preset, tok.vocab_size, dtype, device)
    rm = RewardModel.from_policy(policy).to(device=device, dtype=dtype).eval()

    rows = {} if args.max_rows is None else {"max_rows": args.max_rows}
    if args.compile:
        e2h.sample.decode_one_token = torch.compile(e2h.sample.decode_one_token, dynamic=True)

    def sample(probs, n, sampler, batch_size):
        """``batch_size`` problems per sampler call (sample_solutions streams what it is given)."""
        sample_with(sampler, counter)
        gen = torch.Generator(device).manual_seed(0)
        return [r for i in range(0, len(probs), batch_size)
                for r in sample_solutions(policy, tok, probs[i:i + batch_size], n=n,
                                          temperature=0.7, top_k=20,
                                          max_new_tokens=args.max_new_tokens, generator=gen,
                                          batch_size=batch_size)]

    counter = [0]
    streaming = lambda *a, **kw: generate(*a, **{**kw, **rows})  # noqa: E731
    # (name, sampler, problems per generate call): the sampler before continuous batching,
    # generate on the same calls, and generate streaming every problem through one call
    runs = [("static", static_generate, args.sample_batch_size),
            ("continuous", streaming, args.sample_batch_size),
            ("continuous, one call", streaming, len(problems))]
    t0 = time.perf_counter()
    for _, sampler, _ in runs:
        sample(problems[:1], 2, sampler, 1)                                     # warm-up
    print(f"warm-up {time.perf_counter() - t0:.1f} s")
    times, outs = {name: [] for name, _, _ in runs}, {}
    for _ in range(args.repeats):           # alternate, so all see the same machine load
        for name, sampler, batch_size in runs:
            outs[name], t = timed(lambda: sample(problems, args.n, sampler, batch_size), device, 1)
            times[name].append(t)
    samples = outs["continuous, one call"]
    same = all([s["completion"] for s in out] == [s["completion"] for s in samples]
               for out in outs.values())
    n_tokens = counter[0] / (len(runs) * args.repeats)
    _, t_score = timed(lambda: score_samples(rm, tok, samples, args.rm_batch_size), device, args.repeats)
    _, t_rerank = timed(lambda: rerank_table(samples, n_subsets=32), device, args.repeats)
    n_samples = len(samples)
    print(f"{n_samples} samples, {n_tokens / n_samples:.0f} sampled tokens on average, "
          f"the same samples from every sampler: {same}")
    print("| device | threads | preset | problems x N | batching | problems per call | sample (s) "
          "| score (s) | re-rank (s) | samples/s | sampled tok/s | sampling vs static |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    t_static = median(times["static"])
    for name, _, batch_size in runs:
        t = median(times[name])
        print(f"| {args.device} | {args.threads} | {args.preset} {args.dtype} "
              f"| {len(problems)} x {args.n} | {name} | {batch_size} | {t:.2f} | {t_score:.2f} "
              f"| {t_rerank:.2f} | {n_samples / (t + t_score + t_rerank):.1f} "
              f"| {n_tokens / t:,.0f} | {t_static / t:.2f}x |")
    t_sample = median(times["continuous, one call"])
    print(f"medians of {args.repeats} alternating runs; end to end, one call against static: "
          f"{(t_static + t_score + t_rerank) / (t_sample + t_score + t_rerank):.2f}x samples/s")
    if not args.skip_unshared:
        # every sample its own prompt copy: N prefills per problem instead of one
        repeated = [q for q in problems for _ in range(args.n)]
        batch_size, args.sample_batch_size = args.sample_batch_size, args.sample_batch_size * args.n
        _, t_unshared = timed(lambda: sample(repeated, 1, streaming, len(repeated)), device,
                              args.repeats)
        args.sample_batch_size = batch_size
        print(f"unshared prefill: sample {t_unshared:.2f} s ({t_unshared / t_sample:.2f}x the shared time)")


if __name__ == "__main__":
    main()
