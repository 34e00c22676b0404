"""Decode throughput of ``e2h.sample.generate`` (new tokens per second, greedy).

CPU: the "small" preset in float32, batch 1 and 16, 128 new tokens after a 32-token prompt,
against a loop on the same model that recomputes the whole sequence for every token (no cache).

CPU, --attention: ``generate`` with e2h.kernels.attend's CPU decode path (matmul, masked softmax,
matmul) against the same with PyTorch's fused attention (E2H_ATTENTION=reference), alternating,
medians of --repeats; the "small" preset, 34-token prompts, 96 new tokens.

CPU, --against-hf: ``generate`` against Hugging Face transformers' ``generate`` (greedy, eager,
its default dynamic cache) on the same float32 weights: dim 128, 3 layers, 8 heads on 2 KV
heads, SwiGLU 352, vocab 32016; batch 8, 16-token prompts, 96 new tokens (no EOS). The two
alternate, --repeats times each, the medians count, and their greedy tokens must be identical.
transformers is imported only here (e2h does not depend on it); install it in its own venv.

With --freeze, the decode step is compiled with its weights frozen in as constants and its
matmuls autotuned, and the token choice is compiled too (``compile_decode``): valid for fixed
weights only (evaluation), not for RL, where the weights change between rollouts.

CPU, --projection: on the --against-hf shape, the decode step's output projection alone
(``F.linear`` of batch x 128 hidden states by the 32016 x 128 weight, the product both e2h and
transformers run) against what bounds it: reading its 16 MB weight once (a sum over it), the
same FLOPs at the BLAS's square-matmul rate, and numpy's BLAS (OpenBLAS; set
OPENBLAS_NUM_THREADS=1) on the same product with the weight stored transposed; and its share s of
e2h's decode step (greedy ``generate`` time per new token): a change anywhere else in the step
can make it at most 1 / s faster.

CPU, --eval-rows POLICY: greedy validation as train.py runs it (``sample_solutions`` at
temperature 0 on --problems synthetic validation problems per level, 96 new tokens) with each of
--batches problems per generate call (--eval-batch-size), alternating, medians; the completions
must be the same at every size.

CUDA: a Llemma-7B-shaped model with random bf16 weights at batch 1 and 64, against the HBM
roofline. A decode step reads every weight once, so it takes at least weight bytes / bandwidth
(6.74e9 parameters * 2 bytes / 3.35 TB/s = 4.0 ms on an H100 SXM, i.e. 249 steps/s); the KV
cache adds a little more traffic, ignored here. Decode steps/s is measured without the prefill:
(time of N new tokens - time of 1) / (N - 1).

    python bench/generate.py --threads 1                # CPU part
    python bench/generate.py --threads 1 --attention
    python bench/generate.py --threads 1 --against-hf [--compile | --freeze] [--skip-guards]
    python bench/generate.py --threads 1 --eval-rows runs/cache/sft-<key>/model
    OPENBLAS_NUM_THREADS=1 python bench/generate.py --threads 1 --projection
    python bench/generate.py --device cuda [--compile]  # GPU part
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import e2h.sample as sample_mod  # noqa: E402
from e2h.hf.checkpoint import hf_params  # noqa: E402
from e2h.hf.hf_config import hf_config  # noqa: E402
from e2h.model import ModelArgs, Transformer  # noqa: E402

HF_SHAPE = dict(dim=128, n_layers=3, n_heads=8, n_kv_heads=2, ffn_dim=352, vocab_size=32016,
                max_seq_len=512)
HBM_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.04e12}   # SXM parts


def random_model(preset: str, dtype, device) -> Transformer:
    """Built on the meta device and initialized in place: no float32 copy of a 7B model."""
    with torch.device("meta"):
        model = Transformer(ModelArgs.from_name(preset))
    model = model.to(dtype).to_empty(device=device)
    model.init_weights()
    return model.eval()


def best_time(fn, device, repeats: int) -> float:
    fn()   # warm-up: allocator, kernels, compilation
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


@torch.no_grad()
def greedy_without_cache(model, prompts: torch.Tensor, new_tokens: int):
    tokens = prompts                                                   # (B, P)
    for _ in range(new_tokens):
        nxt = model(tokens)[:, -1].argmax(-1, keepdim=True)            # (B, 1)
        tokens = torch.cat([tokens, nxt], dim=1)
    return tokens


def bench_cpu(args):
    torch.manual_seed(0)
    model = random_model("small", torch.float32, torch.device("cpu"))
    print(f"threads {torch.get_num_threads()}, prompt {args.prompt_len}, {args.new_tokens} new tokens")
    print("| preset | batch | generate (tok/s) | no-cache loop (tok/s) | speed-up |")
    print("|---|---|---|---|---|", flush=True)
    for batch in args.batches or (1, 16):
        prompts = torch.randint(3, model.args.vocab_size, (batch, args.prompt_len))
        lists = prompts.tolist()
        cached = best_time(lambda: sample_mod.generate(model, lists, args.new_tokens, 0.0),
                           torch.device("cpu"), args.repeats)
        plain = best_time(lambda: greedy_without_cache(model, prompts, args.new_tokens),
                          torch.device("cpu"), args.repeats)
        n = batch * args.new_tokens
        print(f"| small | {batch} | {n / cached:,.0f} | {n / plain:,.0f} | {plain / cached:.1f}x |",
              flush=True)


def alternate(fns: dict, repeats: int) -> dict:
    """Median wall time of each function, run in turn ``repeats`` times after a warm-up, so
    that all of them see the same load on a shared machine."""
    times = {name: [] for name in fns}
    for name, fn in fns.items():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: median(ts) for name, ts in times.items()}


def with_attention(choice: str, fn):
    def run():
        os.environ["E2H_ATTENTION"] = choice
        try:
            return fn()
        finally:
            del os.environ["E2H_ATTENTION"]
    return run


def bench_attention(args):
    torch.manual_seed(0)
    model = random_model("small", torch.float32, torch.device("cpu"))
    print("| preset | batch | decode path (tok/s) | fused attention (tok/s) | speed-up |")
    print("|---|---|---|---|---|", flush=True)
    for batch in args.batches or (8, 64, 128):
        lists = torch.randint(3, model.args.vocab_size, (batch, args.prompt_len)).tolist()
        run = lambda: sample_mod.generate(model, lists, args.new_tokens, 0.0)  # noqa: E731
        t = alternate({"decode": with_attention("decode", run),
                       "reference": with_attention("reference", run)}, args.repeats)
        n = batch * args.new_tokens
        print(f"| small | {batch} | {n / t['decode']:,.0f} | {n / t['reference']:,.0f} "
              f"| {t['reference'] / t['decode']:.2f}x |", flush=True)


def hf_twin(model):
    """The same weights in transformers' LlamaForCausalLM (a clear exit if it is missing)."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        raise SystemExit("--against-hf: the transformers package is not installed; e2h does not "
                         "use it, so install it in a separate venv (see bench/README.md)")
    cfg = hf_config(model, torch.float32)
    hf = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k != "torch_dtype"}))
    hf.load_state_dict({k: p.detach() for k, p in hf_params(model).items()})
    return hf.eval()


def compile_decode(frozen: bool = False):
    """torch.compile the decode step (dynamic shapes: the cache prefix grows every step).

    frozen: also fold the weights into the graph as constants (inductor's ``freezing``: valid
    only while the weights do not change, so for evaluation, never for RL), autotune its matmuls
    (``max-autotune``: inductor's C++ micro-GEMMs against MKL, the faster kept) and compile the
    token choice (argmax / log-softmax over the vocabulary) too."""
    if frozen:
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True
        sample_mod.sample_token = torch.compile(sample_mod.sample_token, dynamic=True)
    sample_mod.decode_one_token = torch.compile(sample_mod.decode_one_token, dynamic=True,
                                                mode="max-autotune" if frozen else None)


def median(xs):
    return sorted(xs)[len(xs) // 2]


@torch.no_grad()
def bench_against_hf(args):
    torch.manual_seed(0)
    model = Transformer(ModelArgs(**HF_SHAPE)).eval()
    hf = hf_twin(model)
    batch, P, N = args.batches[0] if args.batches else 8, args.prompt_len, args.new_tokens
    prompts = torch.randint(3, HF_SHAPE["vocab_size"], (batch, P))
    if args.compile or args.freeze:
        compile_decode(frozen=args.freeze)
    ours = lambda: [s.tokens for s in sample_mod.generate(model, prompts.tolist(), N, 0.0)]  # noqa: E731
    theirs = lambda: hf.generate(prompts, attention_mask=torch.ones_like(prompts),  # noqa: E731
                                 max_new_tokens=N, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[:, P:].tolist()
    t0 = time.perf_counter()
    same = ours() == theirs()                                          # warm-up (and compile)
    if args.skip_guards:     # every timed call has the warm-up's shapes: nothing recompiles
        ours()
        torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
    print(f"warm-up {time.perf_counter() - t0:.1f} s; greedy tokens identical: {same}")
    t = alternate({"e2h": ours, "hf": theirs}, args.repeats)
    e2h, hf_t = t["e2h"], t["hf"]
    how = " (frozen, autotuned)" if args.freeze else " (compiled step)" if args.compile else ""
    how += ", guards skipped" if args.skip_guards else ""
    print(f"| batch | new tokens | e2h generate{how} (s) "
          "| HF generate (s) | e2h tok/s | HF tok/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {batch} | {N} | {e2h:.3f} | {hf_t:.3f} | {batch * N / e2h:,.0f} "
          f"| {batch * N / hf_t:,.0f} | {hf_t / e2h:.2f}x |")
    if not same:
        raise SystemExit("greedy tokens differ between e2h and transformers")


@torch.no_grad()
def bench_projection(args):
    torch.manual_seed(0)
    model = Transformer(ModelArgs(**HF_SHAPE)).eval()
    batch, V, C = args.batches[0] if args.batches else 8, HF_SHAPE["vocab_size"], HF_SHAPE["dim"]
    w, h = model.lm_head.weight, torch.randn(batch, C)
    w_np_t, h_np = w.detach().numpy().T.copy(), h.numpy()               # numpy: (C, V) layout
    square = torch.randn(512, 512)
    prompts = torch.randint(3, V, (batch, args.prompt_len)).tolist()
    calls = 20                                 # each product timed over this many calls
    products = {"linear": lambda: F.linear(h, w), "read": lambda: w.sum(),
                "square": lambda: square @ square, "numpy": lambda: h_np @ w_np_t}
    t = alternate({**{k: (lambda f=f: [f() for _ in range(calls)]) for k, f in products.items()},
                   "generate": lambda: sample_mod.generate(model, prompts, args.new_tokens, 0.0)},
                  args.repeats)
    linear, read, numpy_t, square_t = (t[k] / calls for k in ("linear", "read", "numpy", "square"))
    flops, rate = 2 * batch * C * V, 2 * 512 ** 3 / square_t
    step = t["generate"] / args.new_tokens                              # s per new token
    print(f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}; "
          f"output projection {batch} x {C} by {V} x {C} ({flops / 1e6:.0f} MFLOP, "
          f"{w.numel() * 4 / 1e6:.1f} MB of weight)")
    print("| F.linear (ms) | GFLOP/s | weight read (ms) | at the 512^3 rate (ms) | numpy (ms) "
          "| e2h decode step (ms) | projection's share | step / projection |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {linear * 1e3:.2f} | {flops / linear / 1e9:.1f} | {read * 1e3:.2f} "
          f"| {flops / rate * 1e3:.2f} | {numpy_t * 1e3:.2f} | {step * 1e3:.2f} "
          f"| {100 * linear / step:.0f} % | {step / linear:.2f}x |")


def bench_eval_rows(args):
    from data.sources import synthetic_problems
    from e2h.hf.checkpoint import load_model
    from e2h.tokenizer import Tokenizer
    policy, tok = load_model(args.eval_rows).eval(), Tokenizer(args.eval_rows)
    problems = synthetic_problems(args.problems, None, 0, "validation")
    out = {}

    def greedy(rows):
        out[rows] = sample_mod.sample_solutions(policy, tok, problems, n=1, temperature=0.0,
                                                top_k=None, max_new_tokens=96, batch_size=rows)
    rows = args.batches or [16, 128]
    t = alternate({r: (lambda r=r: greedy(r)) for r in rows}, args.repeats)
    same = all([s["completion"] for s in out[r]] == [s["completion"] for s in out[rows[0]]]
               for r in rows)
    print(f"{len(problems)} problems, the same completions at every size: {same}")
    print("| problems per call | wall (s) | problems/s | vs the first |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r} | {t[r]:.2f} | {len(problems) / t[r]:.0f} | {t[rows[0]] / t[r]:.2f}x |")


def bench_cuda(args):
    device = torch.device("cuda")
    name = torch.cuda.get_device_name()
    bandwidth = args.bandwidth or next((b for k, b in HBM_BYTES_PER_S.items() if k in name), None)
    if bandwidth is None:
        raise SystemExit(f"--bandwidth: unknown HBM bandwidth for {name!r}; pass it in bytes/s")
    torch.manual_seed(0)
    model = random_model("llemma-7b", torch.bfloat16, device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    roofline = bandwidth / weight_bytes                                # steps/s
    if args.compile:
        compile_decode()
    print(f"{name}, {weight_bytes / 1e9:.2f} GB of weights, roofline {roofline:.0f} steps/s "
          f"at {bandwidth / 1e12:.2f} TB/s, prompt {args.prompt_len}, compile {args.compile}")
    print("| batch | decode steps/s | decode tok/s | % of roofline | generate tok/s (with prefill) |")
    print("|---|---|---|---|---|")
    for batch in args.batches or (1, 64):
        lists = torch.randint(3, model.args.vocab_size, (batch, args.prompt_len)).tolist()
        full = best_time(lambda: sample_mod.generate(model, lists, args.new_tokens, 0.0),
                         device, args.repeats)
        prefill = best_time(lambda: sample_mod.generate(model, lists, 1, 0.0), device, args.repeats)
        steps = (args.new_tokens - 1) / (full - prefill)
        print(f"| {batch} | {steps:.1f} | {steps * batch:,.0f} | {100 * steps / roofline:.0f} % | "
              f"{batch * args.new_tokens / full:,.0f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # what to run
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="CPU part or GPU part")
    p.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=None,
                   help="comma-separated batch sizes (default 1,16 on CPU, 1,64 on CUDA)")
    p.add_argument("--attention", action="store_true",
                   help="CPU: the decode attention path against fused attention in generate")
    p.add_argument("--against-hf", action="store_true",
                   help="CPU: against transformers' generate (defaults: batch 8, prompt 16, 96 new)")
    p.add_argument("--projection", action="store_true",
                   help="CPU: the output projection of the --against-hf shape against its bounds")
    p.add_argument("--eval-rows", metavar="POLICY", default=None,
                   help="CPU: greedy validation of this HF policy at --batches problems per call")
    p.add_argument("--problems", type=int, default=250, help="--eval-rows: problems per level")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens per sequence")
    p.add_argument("--new-tokens", type=int, default=None, help="new tokens per sequence")
    # how
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs; the fastest is reported (--against-hf: the median)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    p.add_argument("--freeze", action="store_true",
                   help="--against-hf: compile the decode step with frozen weights and autotuned "
                        "matmuls, and the token choice (see compile_decode)")
    p.add_argument("--skip-guards", action="store_true",
                   help="--against-hf with --compile or --freeze: after the warm-up, skip Dynamo's "
                        "guard checks (torch.compiler.set_stance(skip_guard_eval_unsafe=True))")
    p.add_argument("--bandwidth", type=float, default=None,
                   help="HBM bytes/s for the roofline (default: looked up from the GPU name)")
    args = p.parse_args()
    if args.skip_guards and not (args.against_hf and (args.compile or args.freeze)):
        p.error("--skip-guards: only with --against-hf and --compile or --freeze")
    hf_shape = args.against_hf or args.projection
    args.prompt_len = args.prompt_len or (16 if hf_shape else 34 if args.attention else 32)
    args.new_tokens = args.new_tokens or (96 if hf_shape or args.attention else 128)
    torch.set_num_threads(args.threads)
    machine = platform.processor() or platform.machine()
    print(f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {machine}")
    print(vars(args))
    if args.device == "cuda":
        bench_cuda(args)
    elif args.eval_rows:
        bench_eval_rows(args)
    elif args.against_hf:
        bench_against_hf(args)
    elif args.projection:
        bench_projection(args)
    else:
        bench_attention(args) if args.attention else bench_cpu(args)


if __name__ == "__main__":
    main()
