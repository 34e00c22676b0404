"""Throughput of the fused Triton attention against PyTorch's SDPA flash and cuDNN backends.

TFLOP/s of the forward and of forward + backward in bfloat16, causal and not, head dim 64 and
128, T = 512 ... 16384. Each T runs B = tokens // T sequences of H = width // D heads (16k
tokens of width 2048 by default, the FlashAttention-2 paper's setting), so every row of the
table fills the GPU with the same amount of work per token.

FLOPs: the forward is 4 B H T^2 D (Q K^T and P V, 2 per multiply-add), the backward 2.5 times
that (five matrix products), and causal attention counts half of both.
Timing: triton.testing.do_bench, CUDA events around each run, the L2 cache flushed between
runs, median of the runs in a 200 ms window after warm-up.
Correctness first: before timing a shape, the output and dq, dk, dv of one head are compared
with float64 attention; the kernel's max error must be at most twice that of
e2h.kernels.attention_reference (PyTorch SDPA) run in bfloat16 on the same head.
--check-only runs the checks of tests/test_attention.py on the GPU instead (varied shapes,
grouped-query, decoding, padding, all dtypes, NaN-poisoned outputs) and times nothing.

    python bench/attention.py [--dims 64 128] [--seqlens 512 ... 16384] [--out table.md]
"""

import argparse
import contextlib
import datetime
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from e2h import kernels  # noqa: E402

PROVIDERS = ("triton", "flash", "cudnn")


def sdpa(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]

    def run(q, k, v, causal):
        with sdpa_kernel(chosen):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return run


def attention_fn(provider):
    if provider == "triton":
        return lambda q, k, v, causal: kernels.attention(q, k, v, causal=causal)
    return sdpa(provider)


def forward_backward(fn, q, k, v, do, causal, kv_start=None):
    """[o, dq, dk, dv] of fn on detached copies of the inputs."""
    x = [t.detach().requires_grad_() for t in (q, k, v)]
    o = fn(*x, causal=causal, kv_start=kv_start)
    return [o, *torch.autograd.grad(o, x, do)]


def max_errors(q, k, v, do, causal, kv_start=None):
    """Max |error| of [o, dq, dk, dv] against float64 for the kernel and for the reference in
    the inputs' dtype."""
    truth = forward_backward(kernels.attention_reference, q.double(), k.double(), v.double(),
                             do.double(), causal, kv_start)
    ours = forward_backward(kernels.attention, q, k, v, do, causal, kv_start)
    ref = forward_backward(kernels.attention_reference, q, k, v, do, causal, kv_start)
    err = lambda xs: [(x.double() - t).abs().max().item() for x, t in zip(xs, truth)]  # noqa: E731
    return err(ours), err(ref)


def check_head(q, k, v, causal):
    """The 2x error rule on head 0 of sequence 0 (one head keeps the float64 matrices small)."""
    head = [t[:1, :1] for t in (q, k, v, torch.randn_like(q))]
    ours, ref = max_errors(*head, causal)
    bad = [f"{n} {a:.2e} > 2 x {b:.2e}" for n, a, b in zip(("o", "dq", "dk", "dv"), ours, ref)
           if not a <= 2 * b]
    if bad:
        sys.exit(f"bench/attention.py: kernel error too large at {tuple(q.shape)}, "
                 f"causal={causal}: " + "; ".join(bad))


def tflops(ms, B, H, T, D, causal, backward):
    flops = 4 * B * H * T * T * D * (0.5 if causal else 1.0) * (3.5 if backward else 1.0)
    return flops / ms * 1e-9


def time_ms(provider, q, k, v, do, causal, backward):
    fn = attention_fn(provider)

    def run():
        if backward:
            return torch.autograd.grad(fn(q, k, v, causal), (q, k, v), do)
        with torch.no_grad():
            return fn(q, k, v, causal)
    try:
        run()  # unsupported backends raise here; the kernel autotunes here
    except RuntimeError as e:
        print(f"# {provider} unavailable at {tuple(q.shape)}: {str(e).splitlines()[0]}")
        return None
    return triton.testing.do_bench(run, warmup=50, rep=200, return_mode="median")


def benchmark(args):
    rows = []
    for D in args.dims:
        for causal in (False, True):
            for T in args.seqlens:
                B, H = max(1, args.tokens // T), args.width // D
                g = torch.Generator(device="cuda").manual_seed(T + D)
                q, k, v, do = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16,
                                           generator=g) for _ in range(4))
                check_head(q, k, v, causal)
                q, k, v = (t.requires_grad_() for t in (q, k, v))
                cells = []
                for backward in (False, True):
                    for provider in PROVIDERS:
                        ms = time_ms(provider, q, k, v, do, causal, backward)
                        cells.append("n/a" if ms is None else
                                     f"{tflops(ms, B, H, T, D, causal, backward):.0f}")
                rows.append(f"| {D} | {'yes' if causal else 'no'} | {T} | {B} x {H} | "
                            + " | ".join(cells) + " |")
                print(rows[-1], flush=True)
    return rows


def table(rows):
    head = ["| D | causal | T | B x H | " + " | ".join(f"fwd {p}" for p in PROVIDERS) + " | "
            + " | ".join(f"fwd+bwd {p}" for p in PROVIDERS) + " |", "|" + "---|" * 10]
    meta = [f"Device: {torch.cuda.get_device_name()}; {datetime.date.today()}; torch "
            f"{torch.__version__}, triton {triton.__version__}; bfloat16, TFLOP/s (median).",
            f"Command: `python {' '.join(sys.argv)}`", ""]
    return "\n".join(meta + head + rows) + "\n"


# (B, H, Hkv, Tq, Tk, D, causal, kv_start): the regimes of tests/test_attention.py at sizes
# where the compiled kernels use their real tiles (grouped-query, decoding, left padding, odd
# lengths, a T past 1024)
CHECK_CASES = [(2, 2, 2, 37, 37, 64, True, None), (1, 8, 2, 300, 300, 128, False, None),
               (2, 8, 1, 1, 1000, 128, True, [0, 300]), (2, 4, 2, 77, 513, 64, True, [0, 129]),
               (2, 4, 4, 200, 200, 128, True, [0, 63]), (2, 2, 1, 90, 40, 64, True, [3, 40]),
               (1, 4, 4, 1030, 1030, 128, True, None), (2, 4, 2, 130, 260, 32, False, [5, 100])]
CHECK_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@contextlib.contextmanager
def nan_poisoned_empty():
    """torch.empty / empty_like return NaN-filled tensors, so an output element that a kernel
    never writes stays NaN and fails the error check."""
    empty, empty_like = torch.empty, torch.empty_like
    torch.empty = lambda *a, **kw: empty(*a, **kw).fill_(float("nan"))
    torch.empty_like = lambda *a, **kw: empty_like(*a, **kw).fill_(float("nan"))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


def check_case(case, dtype, device="cuda"):
    """The 2x error rule for one regime of CHECK_CASES in one dtype: (ok, one line)."""
    B, H, Hkv, Tq, Tk, D, causal, kv_start = case
    g = torch.Generator(device=device).manual_seed(Tq * Tk + D)
    q, k, v, do = (torch.randn(B, h, t, D, device=device, generator=g).to(dtype)
                   for h, t in ((H, Tq), (Hkv, Tk), (Hkv, Tk), (H, Tq)))
    kv = None if kv_start is None else torch.tensor(kv_start, device=device)
    with nan_poisoned_empty():
        ours, ref = max_errors(q, k, v, do, causal, kv)
    # float32 errors of both are a few ulps of O(1) values, where their ratio is noise:
    # 1e-6 (8 ulps at 1.0) is the floor below which a float32 error is not compared.
    floor = 1e-6 if dtype == torch.float32 else 0.0
    ok = all(a <= 2 * b + floor for a, b in zip(ours, ref))
    return ok, (f"{'ok ' if ok else 'BAD'} {dtype} {(B, H, Hkv, Tq, Tk, D)} causal={causal} "
                f"kv_start={kv_start}: kernel {[f'{e:.1e}' for e in ours]}, "
                f"reference {[f'{e:.1e}' for e in ref]}")


def check_only():
    """The test-suite regimes on the compiled kernels, with NaN-poisoned outputs."""
    failures = 0
    for dtype in CHECK_DTYPES:
        for case in CHECK_CASES:
            ok, line = check_case(case, dtype)
            failures += not ok
            print(line, flush=True)
    if failures:
        sys.exit(f"bench/attention.py: {failures} checks failed")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # sizes
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128], help="head dims")
    parser.add_argument("--seqlens", type=int, nargs="+",
                        default=[512, 1024, 2048, 4096, 8192, 16384], help="sequence lengths T")
    parser.add_argument("--tokens", type=int, default=16384, help="B * T for every T")
    parser.add_argument("--width", type=int, default=2048, help="H * D for every D")
    # output
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument("--check-only", action="store_true", help="correctness checks, no timing")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/attention.py: needs a CUDA GPU (torch.cuda.is_available() is False)")
    if args.check_only:
        return check_only()
    text = table(benchmark(args))
    print("\n" + text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
