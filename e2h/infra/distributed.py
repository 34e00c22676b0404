"""Every use of torch.distributed in e2h: process group, FSDP2 sharding, reductions, sharded
checkpoints, the rows of a parameter's shard.

Without a ``RANK`` environment variable (plain ``python train.py``) there is no process group
and every function here degrades to its one-process meaning, so the rest of the code never asks
whether it runs distributed. Under ``torchrun`` the group uses gloo on CPU and nccl on CUDA.

Sharding follows torchtitan's plain FSDP2 recipe: ``fully_shard`` each TransformerBlock, then
the root module, so one block's parameters are gathered at a time. Sampling inside RL calls the
model once per new token; ``gathered`` unshards every parameter once for the whole rollout.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_state_dict, set_state_dict)
from torch.distributed.fsdp import (FSDPModule, MixedPrecisionPolicy, fully_shard,
                                    register_fsdp_forward_method)
from torch.distributed.tensor import DTensor, Shard

from e2h.model import TransformerBlock


DEFAULT_TIMEOUT_S = 600.0
_timeout_s = DEFAULT_TIMEOUT_S


def init(timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join the torchrun process group when there is one; return this process's device.

    ``timeout_s`` bounds every collective: a rank that stalls (stopped, swapped out, stuck in
    I/O) makes the others fail after that long instead of torch's default 30 minutes (gloo)
    or forever. It must exceed the longest stretch one rank works alone: rank 0 writing a
    model, the longest rollout of one rank."""
    global _timeout_s
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return torch.device("cuda" if cuda else "cpu")
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        _timeout_s = timeout_s
        dist.init_process_group("nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")


def timeout_s() -> float:
    return _timeout_s


def is_timeout(e: BaseException) -> bool:
    """Whether ``e`` is a collective that gave up waiting for another rank."""
    if isinstance(e, getattr(dist, "DistBackendError", ())) or isinstance(e, TimeoutError):
        return True
    return isinstance(e, RuntimeError) and "timed out" in str(e).lower()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank; before ``init``, the one torchrun gave it."""
    return dist.get_rank() if is_distributed() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    """The number of ranks; before ``init`` (flags are checked first), the one torchrun set."""
    return dist.get_world_size() if is_distributed() else int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() == 0


def barrier():
    if is_distributed():
        dist.barrier()


def shutdown(clean: bool = True):
    """Leave the process group. After a clean run every rank leaves its last collective first
    (a gloo rank whose peer destroys the group mid-exchange aborts the process); after a
    failure the other ranks may be inside a collective this rank will never join, so it leaves
    at once and torchrun ends them."""
    if is_distributed():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    """nccl reduces CUDA tensors only; gloo CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: dict[str, float]) -> dict[str, float]:
    """The sum over ranks of each scalar (every rank must pass the same keys, in order)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_comm_device())  # (K,)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def max_over_ranks(value: int) -> int:
    """The largest ``value`` of any rank: how the ranks agree at a step boundary that one of them
    was asked to stop (a stop signal reaches each rank on its own, or only some)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """The mean over ranks of each scalar."""
    return {k: v / world_size() for k, v in all_reduce_sum(values).items()}


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (decisions taken once, e.g. a data set built from files)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (e.g. samples drawn on each rank's share of prompts)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shard_of(items: list) -> list:
    """This rank's share, rank r taking items r, r + W, r + 2W, ..."""
    return items[rank()::world_size()]


def gathered_in_order(mine: list, n_items: int, per_item: int) -> list:
    """Every rank's records (``mine``: ``per_item`` records for each item of ``shard_of``'s
    share, in order), on every rank, in the order of the items: what one process makes of all
    of them."""
    groups = all_gather_objects(mine)
    chunks = [None] * n_items
    for r, records in enumerate(groups):
        for k, i in enumerate(range(r, n_items, len(groups))):
            chunks[i] = records[k * per_item:(k + 1) * per_item]
    return [x for chunk in chunks for x in chunk]


def shard(model: torch.nn.Module, param_dtype: torch.dtype | None = None,
          activation_checkpointing: bool = False) -> torch.nn.Module:
    """FSDP2 over every TransformerBlock inside ``model`` (a policy or a reward model's trunk),
    then the root. ``param_dtype`` bf16 = mixed precision: fp32 master weights, bf16 compute,
    fp32 gradient reduction. Without a process group only activation checkpointing applies."""
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    if activation_checkpointing:
        from torch.distributed._composable import checkpoint
        for block in blocks:
            checkpoint(block)   # recompute the block's activations in backward
    if not is_distributed():
        return model
    # e2h never modifies a model output in place, which is what this warning is about
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mp_policy=mp, reshard_after_forward=True)
    # the root keeps its (small) parameters after forward: backward needs them first
    fully_shard(model, mp_policy=mp, reshard_after_forward=False)
    _hook_methods(model, [m for m in ("hidden", "logits") if hasattr(model, m)])
    return model


def _hook_methods(model: torch.nn.Module, names: list[str]):
    """FSDP gathers a module's parameters around ``forward``; sampling and reward heads call
    ``hidden`` and ``logits`` directly, so those get the same hooks, except when forward itself
    calls them: the inner call's post-hook would reshard the root as forward ends, and inside
    ``gathered`` every later forward would all-gather again."""
    inside = []   # non-empty while forward runs

    def enter(*_):
        inside.append(True)

    def leave(*_):   # returns None: the output is left alone
        inside.pop()
    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave, always_call=True)
    for name in names:
        plain = getattr(model, name)
        register_fsdp_forward_method(model, name)
        hooked = getattr(model, name)
        setattr(model, name, lambda *a, _plain=plain, _hooked=hooked, **k:
                (_plain if inside else _hooked)(*a, **k))


@contextlib.contextmanager
def gathered(model: torch.nn.Module):
    """Full parameters on every rank for the duration (one all-gather per rollout, not per
    token). Every rank must enter; inside, ranks may run different numbers of forwards."""
    blocks = [m for m in model.modules() if isinstance(m, FSDPModule) and m is not model]
    for m in blocks:
        m.set_reshard_after_forward(False, recurse=False)
    fsdp = blocks + ([model] if isinstance(model, FSDPModule) else [])
    for m in fsdp:
        m.unshard()
    try:
        yield model
    finally:
        for m in fsdp:
            m.reshard()
        for m in blocks:
            m.set_reshard_after_forward(True, recurse=False)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm (over all shards); return the norm before clipping."""
    params = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):   # a DTensor under FSDP2
        norm = norm.full_tensor()
    return norm.item()


def all_finite(tensors) -> bool:
    """Whether every element of every tensor is finite, over all shards of all ranks."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]   # DTensor shards
    bad = sum(int(not torch.isfinite(t.detach()).all()) for t in local if t.numel())
    return all_reduce_sum({"bad": float(bad)})["bad"] == 0


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU tensors of ``model`` on rank 0 (empty elsewhere); all of them at once, so
    for tests and small models (the HF export gathers one tensor at a time: ``full_on_main``)."""
    if not is_distributed():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts)


def local_rows(t: torch.Tensor) -> tuple[int, int, torch.Tensor]:
    """(start, stop, local): rows [start, stop) of dim 0 of the full ``t`` are this rank's,
    held by the plain tensor ``local``. FSDP2 cuts dim 0 as torch.chunk does: ceil(n / W) rows
    per rank, the last ranks fewer or none. An unsharded tensor is all rows."""
    if not isinstance(t, DTensor):
        return 0, t.shape[0], t
    if tuple(t.placements) != (Shard(0),):
        raise ValueError(f"local_rows: expected FSDP2's Shard(0) placement, got {t.placements}")
    n, W, r = t.shape[0], t.device_mesh.size(), t.device_mesh.get_local_rank()
    chunk = -(-n // W)
    start, local = min(r * chunk, n), t.to_local()
    stop = min(start + chunk, n)
    if local.shape[0] != stop - start:
        raise ValueError(f"local_rows: rank {r} holds {local.shape[0]} rows, expected rows "
                         f"[{start}, {stop}) of {n}")
    return start, stop, local


@torch.no_grad()
def full_on_main(t: torch.Tensor) -> torch.Tensor | None:
    """The whole of ``t`` as a CPU tensor on rank 0, None elsewhere. Every rank must call it
    (an all-gather of this one tensor: each rank holds it only until the call returns)."""
    full = t.full_tensor() if isinstance(t, DTensor) else t
    return full.detach().cpu() if is_main() else None


@contextlib.contextmanager
def _unwrapped():
    """DCP reports a failure on any rank as a CheckpointException (a BaseException, which no
    ``except Exception`` sees) holding each rank's exception; raise the first of those."""
    try:
        yield
    except CheckpointException as e:
        failures = [f[0] if isinstance(f, tuple) else f for f in (e.failures or {}).values()]
        if not failures:
            raise
        raise failures[0] from None


def save_state(path, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer]):
    """Model and optimizer states, each rank writing its own shards (torch.distributed.checkpoint).
    The layout is independent of the world size, so a run may resume on more or fewer ranks."""
    msd, osd = get_state_dict(model, optimizers)
    with warnings.catch_warnings(), _unwrapped():   # "assuming the intent is to save in a single process"
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(path),
                 no_dist=not is_distributed())


def load_state(path, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer]):
    """Inverse of ``save_state``: reshard the saved tensors onto this run's ranks, in place."""
    msd, osd = get_state_dict(model, optimizers)
    state = {"model": msd, "optim": osd}
    with warnings.catch_warnings(), _unwrapped():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(path), no_dist=not is_distributed())
    set_state_dict(model, optimizers, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])


def say(text: str):
    """Print on rank 0 only: every rank runs the same program and would say it W times."""
    if is_main():
        print(text, flush=True)
