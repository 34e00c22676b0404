"""Throughput of the whole evaluate path: sample N solutions per problem, score them with a
reward model, re-rank (samples per second, end to end).

Best-of-n and weighted voting spend nearly all their time here. The N samples of a prompt share
one prefill (``generate(..., n=N)``) and the reward model scores ``--rm-batch-size`` samples
per forward. For comparison, the same work with every sample prefilled on its own (the prompt
repeated N times, n=1) is timed too.

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
from e2h.model import ModelArgs, RewardModel, Transformer  # noqa: E402
from e2h.rerank import rerank_table  # noqa: E402
from e2h.sample import sample_solutions  # noqa: E402
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


def count_sampled_tokens(counter: list):
    """Wrap the evaluator's ``generate`` so that the sampled tokens are counted, not re-encoded."""
    generate = e2h.sample.generate

    def counting(*args, **kwargs):
        outs = generate(*args, **kwargs)
        counter[0] += sum(len(o.tokens) for o in outs)
        return outs
    e2h.sample.generate = counting


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
    p.add_argument("--batch-size", type=int, default=5, help="problems per generate call")
    p.add_argument("--rm-batch-size", type=int, default=32, help="sequences per reward-model forward")
    # how
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per phase; the fastest counts")
    p.add_argument("--skip-unshared", action="store_true", help="do not time the unshared-prefill baseline")
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

    def sample(probs, n):
        gen = torch.Generator(device).manual_seed(0)
        return sample_solutions(policy, tok, probs, n=n, temperature=0.7, top_k=20,
                                max_new_tokens=args.max_new_tokens, generator=gen,
                                batch_size=args.batch_size)

    sample(problems[:1], 2)                                               # warm-up
    counter = [0]
    count_sampled_tokens(counter)
    samples, t_sample = timed(lambda: sample(problems, args.n), device, args.repeats)
    n_tokens = counter[0] / args.repeats
    _, t_score = timed(lambda: score_samples(rm, tok, samples, args.rm_batch_size), device, args.repeats)
    _, t_rerank = timed(lambda: rerank_table(samples, n_subsets=32), device, args.repeats)
    n_samples = len(samples)
    total = t_sample + t_score + t_rerank
    print(f"{n_samples} samples, {n_tokens / n_samples:.0f} sampled tokens on average")
    print("| device | threads | preset | problems x N | sample (s) | score (s) | re-rank (s) "
          "| samples/s | sampled tok/s | scored samples/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.device} | {args.threads} | {args.preset} {args.dtype} | {len(problems)} x {args.n} "
          f"| {t_sample:.2f} | {t_score:.2f} | {t_rerank:.2f} | {n_samples / total:.1f} "
          f"| {n_tokens / t_sample:,.0f} | {n_samples / t_score:,.0f} |")
    if not args.skip_unshared:
        # every sample its own prompt copy: N prefills per problem instead of one
        repeated = [q for q in problems for _ in range(args.n)]
        batch_size, args.batch_size = args.batch_size, args.batch_size * args.n
        _, t_unshared = timed(lambda: sample(repeated, 1), device, args.repeats)
        args.batch_size = batch_size
        print(f"unshared prefill: sample {t_unshared:.2f} s ({t_unshared / t_sample:.2f}x the shared time)")


if __name__ == "__main__":
    main()
