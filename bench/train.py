"""Training throughput of one SFT step (forward, backward, gradient clipping, AdamW), the step
every supervised phase of train.py repeats.

CPU: the "small" preset in float32 (the embedded default), synthetic-length sequences
(B = 64 rows of 104 tokens): tokens/s.

CUDA: a ~1B-parameter Llama shape (TinyLlama 1.1B: dim 2048, 22 layers, 32 heads, 4 KV heads,
FFN 5632, vocab 32000), T = 2048, bf16 compute with fp32 master weights under FSDP2 on one GPU
(e2h.infra.distributed.shard: fully_shard per block then the root, MixedPrecisionPolicy bf16), every
parameter trained. MFU = achieved FLOP/s / peak bf16 FLOP/s with the PaLM / torchtitan count
per token: 6 * (parameters - embedding) + 12 * layers * dim * T (attention counted in full,
not halved for causality).

    python bench/train.py --threads 1                      # CPU part (torchrun: FSDP2 on gloo)
    torchrun --standalone --nproc_per_node 1 bench/train.py --device cuda [--activation-checkpointing]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from e2h.infra import distributed as dist  # noqa: E402
from e2h.model import ModelArgs, Transformer  # noqa: E402
from e2h.sft import loss_fn  # noqa: E402

SHAPES = {
    "small": ModelArgs.from_name("small"),
    "1b": ModelArgs(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn_dim=5632, vocab_size=32000,
                    max_seq_len=2048),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}   # dense, SXM parts


def flops_per_token(args: ModelArgs, T: int, n_params: int) -> float:
    n_embedding = args.vocab_size * args.dim
    return 6 * (n_params - n_embedding) + 12 * args.n_layers * args.dim * T


def build(args: ModelArgs, device, bf16: bool, activation_checkpointing: bool):
    """torchtitan's order: build on the meta device, shard, allocate, initialize."""
    with torch.device("meta"):
        model = Transformer(args)
    n_params = sum(p.numel() for p in model.parameters())
    dist.shard(model, torch.bfloat16 if bf16 else None, activation_checkpointing)
    model.to_empty(device=device)
    model.init_weights()
    return model, n_params


def step(model, opt, batch):
    loss, _ = loss_fn(model, batch)
    loss.backward()
    dist.clip_grad_norm([p for p in model.parameters() if p.grad is not None], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def bench(shape: str, B: int, T: int, device, steps: int, activation_checkpointing: bool) -> dict:
    args = SHAPES[shape]
    model, n_params = build(args, device, device.type == "cuda", activation_checkpointing)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), fused=device.type == "cuda")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, args.vocab_size, (B, T), generator=g).to(device)
    batch = {"tokens": tokens, "loss_mask": torch.ones_like(tokens)}
    for _ in range(3):                                   # warm-up: allocator, autotuning
        step(model, opt, batch)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step(model, opt, batch)
    sync()
    seconds = (time.perf_counter() - t0) / steps
    tokens_per_s = B * T * dist.world_size() / seconds     # every rank runs B rows
    out = {"shape": shape, "params": n_params, "B": B, "T": T, "step_s": seconds,
           "tokens_per_s": tokens_per_s, "loss": loss.item()}
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        achieved = flops_per_token(args, T, n_params) * tokens_per_s
        out.update({"device": name, "tflops": achieved / 1e12, "mfu": achieved / peak if peak else None,
                    "memory_gb": torch.cuda.max_memory_allocated() / 2**30})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to run")
    p.add_argument("--shape", default=None, choices=sorted(SHAPES), help="default: small on CPU, 1b on CUDA")
    p.add_argument("--batch", type=int, default=None, help="rows per step (default: 64 CPU, 8 CUDA)")
    p.add_argument("--seq", type=int, default=None, help="tokens per row (default: 104 CPU, 2048 CUDA)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 CPU, 20 CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute block activations")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = a.device == "cuda"
    if cuda and "RANK" not in os.environ:   # FSDP2 needs a process group: one rank of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="localhost",
                          MASTER_PORT=os.environ.get("MASTER_PORT", "29531"))
    device = dist.init()   # under torchrun on CPU: gloo and FSDP2 too
    result = bench(a.shape or ("1b" if cuda else "small"), a.batch or (8 if cuda else 64),
                   a.seq or (2048 if cuda else 104), device, a.steps or (20 if cuda else 10),
                   a.activation_checkpointing)
    if dist.is_main():
        print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"threads {torch.get_num_threads()}")
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    dist.shutdown()


if __name__ == "__main__":
    main()
