"""HF checkpoints into and out of FSDP2 shards, never a full copy of the model on any rank.

Loading: ``lazy_model`` runs every check of ``checkpoint.load_model`` (same one-line errors)
and returns the model on the meta device, remembering where its tensors are; ``place`` shards
it (``distributed.shard``: the layout e2h always uses), allocates each rank's shards
(``to_empty``) and fills them from the safetensors files, each rank reading only the rows of
dim 0 it holds (``safe_open(...).get_slice``). One process holds one full copy, as
``load_model`` does; W ranks hold 1/W each. A reward model built on a policy checkpoint
(``RewardModel(trunk)``) gets its zero-initialized head, which no checkpoint holds.

Export: rank 0 writes the HF files; every parameter is gathered (one all-gather each) only when
its bytes are written, so rank 0 holds one tensor of the full model at a time.

Pattern (torchtitan's): build on the meta device, shard, ``to_empty``, then initialize; here
the initialization is the checkpoint.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path

import torch

from e2h.infra import distributed as dist
from e2h.hf.checkpoint import hf_params, open_model, read_rows, save_model
from e2h.model import RewardModel

SOURCE = "hf_checkpoint"   # module attribute: (path, {HF key: (file, dtype, shape)})


def lazy_model(path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """``load_model(path, dtype)`` without reading a tensor: the model on the meta device."""
    model, found = open_model(path)
    model = model.to(dtype=dtype)
    setattr(model, SOURCE, (Path(path), found))
    return model


def is_lazy(model: torch.nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def place(model: torch.nn.Module, device, param_dtype: torch.dtype | None = None,
          activation_checkpointing: bool = False) -> torch.nn.Module:
    """``model`` on ``device``, sharded (FSDP2 under torchrun); a lazy model is sharded first,
    then allocated and read shard by shard, so no rank ever holds more than its shards."""
    if not is_lazy(model):
        return dist.shard(model.to(device), param_dtype, activation_checkpointing)
    model = dist.shard(model, param_dtype, activation_checkpointing)
    model.to_empty(device=device)
    fill(model)
    return model


def fill(model: torch.nn.Module):
    """Read every parameter's local rows from the checkpoint its module came from; a reward
    head without a checkpoint starts at zero, as in rm.RewardModel."""
    done = set()
    for module in model.modules():
        source = getattr(module, SOURCE, None)
        if source is not None:
            params = hf_params(module)
            read_rows(_local_targets(params), source[1])
            done.update(id(p) for p in params.values())
        elif isinstance(module, RewardModel):   # a head on a policy checkpoint
            with torch.no_grad():
                for p in module.score.parameters():
                    p.zero_()
                    done.add(id(p))
    missing = [name for name, p in model.named_parameters() if id(p) not in done]
    if missing:
        raise ValueError(f"fill: parameter {missing[0]} has no checkpoint to be read from")


def load_into(model: torch.nn.Module, source: torch.nn.Module):
    """Overwrite ``model``'s (sharded) parameters, in place, with those of ``source``, an
    unsharded model of the same architecture: a lazy one is read from its checkpoint (this
    rank's rows only), one in memory is copied. ReST-EM restarts each iteration this way."""
    params = hf_params(model)
    if is_lazy(source):
        read_rows(_local_targets(params), getattr(source, SOURCE)[1])
        return
    values = hf_params(source)
    with torch.no_grad():
        for key, (local, start, stop) in _local_targets(params).items():
            local.copy_(values[key][start:stop])


def _local_targets(params: dict) -> dict[str, tuple[torch.Tensor, int, int]]:
    """{HF key: (local tensor, first row, end row)} of this rank's shard of each parameter."""
    out = {}
    for key, p in params.items():
        start, stop, local = dist.local_rows(p)
        out[key] = (local, start, stop)
    return out


def export(model: torch.nn.Module, path):
    """``save_model(model, path)`` for a sharded model: every rank calls it, rank 0 writes."""
    params = hf_params(model)
    tensors = ((k, dist.full_on_main(p)) for k, p in params.items())   # gathered one by one
    if dist.is_main():
        save_model(model, path, tensors=tensors)
    else:
        deque(tensors, maxlen=0)   # take part in every gather, in the same order
