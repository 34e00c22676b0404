"""train.py's start-up check: this run's memory plan (e2h/memory.py) against the memory of the
device it runs on, so a run that cannot fit is refused before it trains anything, and a CPU run
whose plan is tight returns freed memory to the system (e2h.infra.host.return_freed_memory).

``setup_for`` turns train.py's parsed flags into the plan's ``Setup``; ``model_of`` reads a
model's shape from its HF folder or its preset; ``for_run`` is the verdict train.py prints.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from e2h import memory
from e2h.defaults import needs_reward_model
from e2h.hf.hf_config import LM_ARCH, read_config
from e2h.infra import distributed as dist
from e2h.infra.footprint import Model
from e2h.infra.host import resident_bytes
from e2h.model import ModelArgs

ARENA_KEEPS = 2.1   # CPU peaks over the plan with glibc's arenas as they come: up to 2.02x measured


def model_of(path, preset: str, **fields) -> Model:
    """The Model of an HF directory (its config.json) or, without one, of a preset."""
    if path is None:
        return Model(ModelArgs.from_name(preset), **fields)
    args, arch, _ = read_config(Path(path))
    return Model(args, lm_head=arch == LM_ARCH, **fields)


def for_run(args, device) -> tuple[str, bool, bool]:
    """train.py's start-up check, (line, fits, tight): this run's plan against the device's
    memory. A GPU has its own memory; on CPU the ranks of a node share its RAM, so each may use
    MemTotal / LOCAL_WORLD_SIZE (physical RAM, not what is free now: other processes come and
    go, and the check should not refuse a run that fits). ``tight``: on CPU, ARENA_KEEPS x the
    plan does not fit, so freed tensors must go back (e2h.infra.host.return_freed_memory)."""
    result = memory.plan(setup_for(args, device))
    if device.type == "cuda":
        capacity = torch.cuda.get_device_properties(device).total_memory
        where = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        capacity = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // local
        where = "the host's RAM" + (f" / {local} ranks" if local > 1 else "")
    line, fits = memory.summary(result, capacity, where)
    return line, fits, device.type == "cpu" and result["peak"] * ARENA_KEEPS > capacity


def setup_for(args, device) -> memory.Setup:
    """The Setup of a train.py run from its parsed flags (defaults filled) on ``device``."""
    frozen = not args.unfreeze_embeddings
    rm_trunk = args.algo in ("orm", "prm", "oprm")
    base = (args.model if args.algo == "sft" else (args.model or args.policy) if rm_trunk
            else args.policy)
    policy = model_of(base, args.preset, frozen_embeddings=frozen and base is not None)
    evaluator = None
    if needs_reward_model(args):
        evaluator = model_of(args.reward_model, args.preset, head="score", trained=False,
                             frozen_embeddings=frozen)
    cuda = device.type == "cuda"
    compute = args.dtype if args.dtype != "auto" else ("bfloat16" if cuda else "float32")
    micro = args.micro_batch_size
    if args.algo in ("ppo", "grpo"):
        micro = min(micro, args.batch_size // dist.world_size())
    return memory.Setup(
        args.algo, policy, evaluator, world=dist.world_size(), fsdp=dist.is_distributed(),
        compute_bytes=getattr(torch, compute).itemsize, micro_batch=micro,
        seq_len=min(args.max_len, policy.args.max_seq_len),
        sample_rows=args.sample_batch_size, n_samples=args.n_samples or 1,
        eval_rows=args.eval_batch_size,
        activation_checkpointing=args.activation_checkpointing, cpu=device.type == "cpu",
        runtime=memory.CUDA_RUNTIME if cuda else resident_bytes(),
        samples_policy=args.policy is not None and not args.samples,
        process_reward=not args.no_process_reward,
        evaluates=bool(args.eval_problems or args.test_problems) and args.hparams == "embedded")
