"""The attention checks of bench/gpu.py: the compiled kernels' correctness and their
throughput against PyTorch's SDPA (flash and cuDNN backends), bf16.

- kernel: the regimes of `bench/attention.py --check-only` (kernel error at most twice that of
  SDPA in the same dtype, against float64, with NaN-poisoned outputs) in bf16, fp16 and fp32,
  plus the 2x rule and a forward + backward at each (head dim, causal) shape of the sweep and
  at the sft check's shape. Run as several worker processes at once (``kernel_worker``),
  since Triton compiles each config on one core; the shape items leave their kernels in
  Triton's on-disk cache, so the sweep and the sft step compile nothing.
- attention: TFLOP/s of the forward and of forward + backward per (D, causal, T), in priority
  order (D 128 first, T 8192 first) until the budget runs out; each row first passes the 2x
  rule on one head (bench/attention.py's check_head).

Letters: B batch, H heads, T tokens, D head dim.
"""
from __future__ import annotations

import math
import time

import torch

import attention as attention_bench   # bench/attention.py
from gpu_checks import median_ms
from gpu_runs import Ctx

# a tiny regime of tests/test_attention.py for the interpreter: grouped-query chunked prefill
# over a left-padded cache, lengths off the 16-row tile grid
DRY_CASES = [(2, 2, 1, 5, 21, 16, True, [0, 3])]
SWEEP = {False: dict(dims=(128, 64), causal=(True, False), seqlens=(8192, 2048, 4096, 16384, 1024),
                     tokens=16384, width=2048),
         True: dict(dims=(16,), causal=(True,), seqlens=(32,), tokens=64, width=32)}   # [ctx.dry]
# (B, H, Hkv, T, D) of the sft check's attention (TinyLlama 1.1B at T 2048; B does not change
# the compiled kernels)
SFT_SHAPE = {False: (1, 32, 4, 2048, 64), True: (1, 4, 2, 32, 16)}


def kernel_items(dry: bool) -> list:
    """("sweep", D, causal) and ("sft", shape) compile the kernels the timed checks use;
    ("case", case, dtype) are the check-only regimes."""
    sweep = SWEEP[dry]
    items = [("sweep", D, causal) for D in sweep["dims"] for causal in sweep["causal"]]
    items.append(("sft", SFT_SHAPE[dry]))
    cases = DRY_CASES if dry else attention_bench.CHECK_CASES
    return items + [("case", c, dt) for dt in attention_bench.CHECK_DTYPES for c in cases]


def sweep_shape(T: int, D: int, dry: bool) -> tuple[int, int]:
    """(B, H) of the attention sweep at T: B T tokens of width H D, as bench/attention.py."""
    sweep = SWEEP[dry]
    return max(1, sweep["tokens"] // T), sweep["width"] // D


def quick_autotune():
    """The attention kernels' autotuner times each config in a 20 ms window instead of Triton's
    100 ms: every new (head dim, causal, T, dtype) re-tunes 7-9 configs per kernel, which at
    the default window costs about 3 s per kernel and row."""
    import triton

    import e2h.kernels.flash as flash   # defines the kernels: TRITON_INTERPRET is read here

    def fast(call, quantiles):
        return triton.testing.do_bench(call, warmup=5, rep=20, quantiles=quantiles)
    for tuner in (flash._attn_fwd, flash._attn_bwd_dkdv, flash._attn_bwd_dq):
        tuner.do_bench = fast   # shadows the autotuner's cached benchmarker


def run_sweep_item(D: int, causal: bool, dry: bool, device) -> tuple[bool, str]:
    """The 2x error rule on one head and a forward + backward over the whole sweep shape at its
    smallest T: the kernels every T of the sweep uses (its specializations do not depend on T),
    so the timed sweep finds them compiled in Triton's cache."""
    from e2h import kernels
    T = min(SWEEP[dry]["seqlens"])
    B, H = sweep_shape(T, D, dry)
    q, k, v, do = (torch.randn(B, H, T, D, device=device, dtype=torch.bfloat16) for _ in range(4))
    try:
        attention_bench.check_head(q, k, v, causal)
    except SystemExit as e:
        return False, f"BAD {e}"
    x = [t.requires_grad_() for t in (q, k, v)]
    o = kernels.attention(*x, causal=causal)
    outs = [o, *torch.autograd.grad(o, x, do)]
    ok = all(bool(torch.isfinite(t).all()) for t in outs)
    return ok, (f"{'ok ' if ok else 'BAD'} sweep shape (B, H, T, D) = {(B, H, T, D)} "
                f"causal={causal}: head 0 within 2x of SDPA's error; forward + backward of "
                f"the whole shape finite: {ok}")


def run_sft_item(shape, device) -> tuple[bool, str]:
    """Forward + backward, causal, on q, k, v laid out as the model's (B, T, H, D) projections
    (read through their strides), grouped-query: the sft step's kernels."""
    from e2h import kernels
    B, H, Hkv, T, D = shape
    q, k, v, do = (torch.randn(B, T, h, D, device=device, dtype=torch.bfloat16).transpose(1, 2)
                   for h in (H, Hkv, Hkv, H))                          # (B, h, T, D) views
    x = [t.detach().requires_grad_() for t in (q, k, v)]
    o = kernels.attention(*x, causal=True)
    outs = [o, *torch.autograd.grad(o, x, do)]
    ok = all(bool(torch.isfinite(t).all()) for t in outs)
    return ok, (f"{'ok ' if ok else 'BAD'} sft shape (B, H, Hkv, T, D) = {shape} as (B, T, H, D) "
                f"views: forward + backward finite: {ok}")


def kernel_worker(ctx: Ctx, i: int, workers: int):
    """Items i, i + W, ... of kernel_items, each line saved as soon as it is known."""
    quick_autotune()
    lines = []
    for item in kernel_items(ctx.dry)[i::workers]:
        try:
            if item[0] == "sweep":
                ok, line = run_sweep_item(item[1], item[2], ctx.dry, ctx.device)
            elif item[0] == "sft":
                ok, line = run_sft_item(item[1], ctx.device)
            else:
                ok, line = attention_bench.check_case(item[1], item[2], str(ctx.device))
        except Exception as e:   # one failing regime must not hide the others
            ok, line = False, f"BAD {item[1:]}: {type(e).__name__}: {str(e).splitlines()[0]}"
        lines.append([ok, line])
        ctx.save({"lines": lines, "items": len(kernel_items(ctx.dry))})


# ----------------------------------------------------------------------------- attention


def time_row(D: int, T: int, causal: bool, dry: bool, device) -> list[float | None]:
    """TFLOP/s of forward then forward + backward for each provider (None: unavailable)."""
    B, H = sweep_shape(T, D, dry)
    g = torch.Generator(device=device).manual_seed(T + D)
    q, k, v, do = (torch.randn(B, H, T, D, device=device, dtype=torch.bfloat16, generator=g)
                   for _ in range(4))
    attention_bench.check_head(q, k, v, causal)   # exits with the errors if the 2x rule fails
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    cells = []
    for backward in (False, True):
        for provider in attention_bench.PROVIDERS:
            fn = attention_bench.attention_fn(provider)

            def run():
                if backward:
                    return torch.autograd.grad(fn(q, k, v, causal), (q, k, v), do)
                with torch.no_grad():
                    return fn(q, k, v, causal)
            try:
                run()   # unsupported backends raise here; the kernel autotunes here
            except RuntimeError:
                cells.append(None)
                continue
            ms = median_ms(run, device, reps=1)
            cells.append(attention_bench.tflops(ms, B, H, T, D, causal, backward))
    return cells


def attention_summary(rows: list[dict], skipped: int) -> str:
    """Against the targets of bench/README.md, at the sweep's first head dim (128 on a GPU)."""
    def vs_flash(r, i):   # triton over flash: forward (i = 0) or forward + backward (i = 3)
        ours, flash = r["cells"][i], r["cells"][i + 1]
        return ours / flash if ours and flash else math.nan
    D = rows[0]["D"] if rows else None
    first = [r for r in rows if r["D"] == D]
    at8k = [r["cells"][0] for r in first if r["causal"] and r["T"] == 8192]
    fwd = [x for x in (vs_flash(r, 0) for r in first if r["T"] >= 2048) if math.isfinite(x)]
    both = [x for x in (vs_flash(r, 3) for r in first) if math.isfinite(x)]
    parts = [f"D {D}: forward >= {min(fwd):.2f}x flash (T >= 2k)" if fwd else "",
             f"forward + backward >= {min(both):.2f}x flash" if both else "",
             f"causal T 8192 forward {at8k[0]:.0f} TFLOP/s (target 450)" if at8k else ""]
    return "; ".join([p for p in parts if p] + [f"{len(rows)} rows timed, {skipped} skipped "
                                                 "(budget)"])


def check_attention(ctx: Ctx) -> dict:
    quick_autotune()
    sweep, rows, last, skipped = SWEEP[ctx.dry], [], 0.0, 0
    result = {"ok": True, "details": []}
    providers = attention_bench.PROVIDERS
    head = ("| D | causal | T | B x H | " + " | ".join(f"fwd {p}" for p in providers) + " | "
            + " | ".join(f"fwd+bwd {p}" for p in providers) + " |")
    for D in sweep["dims"]:                       # priority order: D 128 first, T 8192 first
        for causal in sweep["causal"]:
            for T in sweep["seqlens"]:
                if ctx.left() < 1.5 * last + 3:
                    skipped += 1
                    continue
                t0 = time.monotonic()
                try:
                    cells = time_row(D, T, causal, ctx.dry, ctx.device)
                except SystemExit as e:           # the 2x error rule failed at this shape
                    return {**result, "ok": False, "summary": str(e)}
                last = time.monotonic() - t0
                rows.append({"D": D, "causal": causal, "T": T, "cells": cells})
                table = [head, "|" + "---|" * 10] + [
                    f"| {r['D']} | {'yes' if r['causal'] else 'no'} | {r['T']} | "
                    f"{' x '.join(map(str, sweep_shape(r['T'], r['D'], ctx.dry)))} | "
                    + " | ".join("n/a" if c is None else f"{c:.3g}" for c in r["cells"]) + " |"
                    for r in sorted(rows, key=lambda r: (-r["D"], not r["causal"], r["T"]))]
                result = {"ok": True, "summary": attention_summary(rows, skipped),
                          "details": ["TFLOP/s, bfloat16, median:", "", *table]}
                ctx.save(result)
    result["summary"] = attention_summary(rows, skipped)
    return result
