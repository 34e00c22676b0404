"""The measured checks of bench/gpu.py: ceilings, Llemma-7B-shaped decoding (eager and
compiled), a ~1B FSDP2 SFT step. The attention checks are in bench/gpu_attention.py, the
entry-point runs in bench/gpu_runs.py.

Each ``check_NAME(ctx)`` returns {"ok", "summary", "details"} (details: Markdown lines) and
may ``ctx.save`` a partial result first, which is what the table shows if the check is killed
at its budget. Only the stable pieces are imported: e2h.model, e2h.sample, e2h.infra.distributed.

Letters: B batch, T tokens, P prompt tokens, N new tokens.
"""
from __future__ import annotations

import math
import os
import platform
import socket
import statistics
import subprocess
import time

import torch

from gpu_runs import Ctx, random_model, write_inputs

HBM_NOMINAL, HBM_MEASURED = 4.8e12, 4.3e12   # bytes/s: H200 datasheet; a copy measured on one
PEAK_BF16 = 989e12                           # FLOP/s: H200 SXM dense bf16, datasheet


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, device, reps: int = 3) -> float:
    """Median time of ``fn`` in ms, after the caller's first run: CUDA events with the L2
    flushed (triton's do_bench, a 100 ms window after 25 ms of warm-up) on a GPU; ``reps``
    host-clock runs on CPU."""
    if device.type == "cuda":
        import triton
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def best_seconds(fn, device, repeats: int) -> float:
    """Fastest of ``repeats`` runs after one warm-up (allocator, autotuning, compilation)."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def environment(device) -> dict:
    import triton
    env = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
           "python": platform.python_version()}
    if device.type != "cuda":
        env["device"] = f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
        return env
    p = torch.cuda.get_device_properties(device)
    env["device"] = f"{p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB"
    try:   # read-only query; the clocks say whether the card was throttled
        env["nvidia-smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,temperature.gpu,"
             "power.draw", "--format=csv,noheader"], capture_output=True, text=True,
            timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        env["nvidia-smi"] = f"unavailable ({e})"
    return env

# ----------------------------------------------------------------------------- setup


def check_setup(ctx: Ctx) -> dict:
    device, env = ctx.device, environment(ctx.device)
    ctx.save({"ok": False, "summary": "started", "env": env})
    n, m = (2**29, 8192) if device.type == "cuda" else (2**20, 256)   # 1 GiB bf16 copy on a GPU
    x = torch.randn(n, device=device, dtype=torch.bfloat16)
    y = x.clone()
    copy = 2 * x.numel() * x.element_size() / (1e-3 * median_ms(lambda: y.copy_(x), device))
    a, b = (torch.randn(m, m, device=device, dtype=torch.bfloat16) for _ in range(2))
    a @ b
    matmul = 2 * m**3 / (1e-3 * median_ms(lambda: a @ b, device))
    inputs = write_inputs(ctx.work, "tiny" if ctx.dry else "small")
    return {"ok": True, "env": env, "copy_bytes_per_s": copy, "matmul_flops": matmul,
            "summary": f"copy {copy / 1e12:.2f} TB/s (read + write; {copy / HBM_NOMINAL:.0%} "
                       f"of 4.8); bf16 {m}^3 matmul {matmul / 1e12:.0f} TFLOP/s "
                       f"({matmul / PEAK_BF16:.0%} of 989); {inputs}"}

# ----------------------------------------------------------------------------- decode


def decode_rows(ctx: Ctx, model, compiled: bool) -> list[dict]:
    """Decode steps/s and tokens/s at each batch, greedy, from a P-token random prompt."""
    from e2h.sample import generate
    batches, P, N, repeats = ((1, 4), 8, 8, 1) if ctx.dry else ((1, 64), 32, 128, 2)
    g = torch.Generator().manual_seed(0)
    rows = []
    for batch in batches:
        prompts = torch.randint(3, model.args.vocab_size, (batch, P), generator=g).tolist()
        full = best_seconds(lambda: generate(model, prompts, N, 0.0), ctx.device, repeats)
        first = best_seconds(lambda: generate(model, prompts, 1, 0.0), ctx.device, repeats)
        a = model.args
        kv_bytes = 2 * a.n_layers * batch * (P + N / 2) * a.n_kv_heads * a.head_dim * 2
        rows.append({"batch": batch, "steps_per_s": (N - 1) / (full - first),
                     "with_prefill_tok_s": batch * N / full, "kv_bytes": kv_bytes})
        ctx.save({"ok": False, "summary": f"partial: batches {[r['batch'] for r in rows]}",
                  "rows": rows, "compiled": compiled})
    return rows


def decode_model(ctx: Ctx):
    if ctx.dry:
        return random_model("tiny", None, torch.float32, ctx.device)
    return random_model("llemma-7b", None, torch.bfloat16, ctx.device)


def decode_table(rows: list[dict], weight_bytes: int, copy: float | None) -> list[str]:
    ceilings = [HBM_NOMINAL, HBM_MEASURED] + ([copy] if copy else [])
    names = "4.8 / 4.3" + (f" / {copy / 1e12:.2f} (setup)" if copy else "")
    lines = [f"Weights {weight_bytes / 1e9:.2f} GB; roofline steps/s at {names} TB/s: "
             + " / ".join(f"{c / weight_bytes:.0f}" for c in ceilings), "",
             "| batch | decode steps/s | decode tok/s | % of roofline (" + names + " TB/s) | "
             "with prefill tok/s | KV bytes per step |", "|---|---|---|---|---|---|"]
    for r in rows:
        share = " / ".join(f"{100 * r['steps_per_s'] * weight_bytes / c:.0f} %" for c in ceilings)
        lines.append(f"| {r['batch']} | {r['steps_per_s']:.1f} | "
                     f"{r['steps_per_s'] * r['batch']:,.0f} | {share} | "
                     f"{r['with_prefill_tok_s']:,.0f} | {r['kv_bytes'] / 1e9:.2f} GB |")
    return lines


def check_decode(ctx: Ctx) -> dict:
    model = decode_model(ctx)
    ctx.save({"ok": False, "summary": "model built; decoding at batch 1 (kernels compile here)"})
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = decode_rows(ctx, model, compiled=False)
    one, last = rows[0]["steps_per_s"], rows[-1]
    share = [f"{100 * one * weight_bytes / c:.0f} %" for c in (HBM_NOMINAL, HBM_MEASURED)]
    return {"ok": True, "rows": rows, "details": decode_table(
                rows, weight_bytes, ctx.result_of("setup").get("copy_bytes_per_s")),
            "summary": f"eager, batch 1: {one:.1f} tok/s = {share[0]} of the roofline at 4.8 "
                       f"TB/s, {share[1]} at 4.3; batch {last['batch']}: "
                       f"{last['steps_per_s'] * last['batch']:,.0f} tok/s"}


def check_decode_compile(ctx: Ctx) -> dict:
    """The decode step under torch.compile (dynamic shapes: the cache prefix grows every step).
    CUDA graphs are not tried: they need attention over a fixed-size cache window."""
    import e2h.sample as sample
    model = decode_model(ctx)
    prompt = [list(range(3, 11))]
    eager = sample.generate(model, prompt, 8, 0.0)[0].tokens
    backend = "eager" if ctx.dry else "inductor"   # dry: dynamo's tracing, no code generation
    ctx.save({"ok": False, "summary": f"compiling the decode step ({backend}, dynamic shapes)"})
    sample.decode_one_token = torch.compile(sample.decode_one_token, dynamic=True, backend=backend)
    t0 = time.monotonic()
    same = sample.generate(model, prompt, 8, 0.0)[0].tokens == eager
    compile_s = time.monotonic() - t0
    rows = decode_rows(ctx, model, compiled=True)
    base = {r["batch"]: r["steps_per_s"] for r in ctx.result_of("decode").get("rows", [])}
    speedups = ", ".join(f"batch {r['batch']} {r['steps_per_s']:.1f} steps/s"
                         + (f" ({r['steps_per_s'] / base[r['batch']]:.2f}x eager)"
                            if r["batch"] in base else "") for r in rows)
    return {"ok": True, "rows": rows,
            "summary": f"torch.compile ({backend}, dynamic), first call {compile_s:.1f} s; "
                       f"{speedups}; greedy tokens as eager: {same}"}

# ----------------------------------------------------------------------------- sft


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_sft(ctx: Ctx) -> dict:
    """One SFT step (next-token cross-entropy on every token, backward, global clipping, AdamW)
    of a TinyLlama-1.1B shape, bf16 compute over fp32 master weights, FSDP2 on one rank."""
    import torch.nn.functional as F

    from e2h.infra import distributed as dist
    from e2h.model import ModelArgs, Transformer
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    device = dist.init()   # nccl on CUDA, gloo on CPU
    if ctx.dry:
        args, B, T, steps = ModelArgs.from_name("tiny"), 2, 32, 2
    else:
        args = ModelArgs(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn_dim=5632,
                         vocab_size=32000, max_seq_len=2048)
        B, T, steps = 8, 2048, 10
    with torch.device("meta"):
        model = Transformer(args)
    n_params = sum(p.numel() for p in model.parameters())
    dist.shard(model, torch.bfloat16)   # MixedPrecisionPolicy: bf16 compute, fp32 reduction
    model.to_empty(device=device)
    model.init_weights()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95))   # as e2h/loop.py builds it
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, args.vocab_size, (B, T + 1), generator=g).to(device)   # (B, T + 1)

    def step():
        logits = model(tokens[:, :-1])                                   # (B, T, V) float32
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        dist.clip_grad_norm(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    for _ in range(1 if ctx.dry else 3):                                 # warm-up
        step()
    sync(device)
    t0 = time.perf_counter()
    losses = [step() for _ in range(steps)]
    seconds = (time.perf_counter() - t0) / steps
    dist.shutdown()
    flops = 6 * (n_params - args.vocab_size * args.dim) + 12 * args.n_layers * args.dim * T
    achieved = flops * B * T / seconds
    matmul = ctx.result_of("setup").get("matmul_flops")
    memory = (f"; peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
              if device.type == "cuda" else "")
    return {"ok": all(map(math.isfinite, losses)),
            "summary": f"{n_params:,} parameters, B {B} x T {T}: step {seconds:.3f} s, "
                       f"{B * T / seconds:,.0f} tok/s, {achieved / 1e12:.1f} TFLOP/s = MFU "
                       f"{achieved / PEAK_BF16:.1%} of 989"
                       + (f", {achieved / matmul:.0%} of the measured matmul" if matmul else "")
                       + memory + "; losses " + ", ".join(f"{x:.3f}" for x in losses)}
