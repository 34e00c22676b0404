"""Training checkpoints that resume exactly, written atomically.

One checkpoint is one folder ``<run>/checkpoints/step_000120/``:

    model/        the weights in the Hugging Face layout (checkpoint.save_model) + tokenizer.json
    state/        model and optimizer states, sharded per rank (torch.distributed.checkpoint)
    trainer.json  step, position in the data, iteration and whatever the algorithm needs
    rng/rank{r}.pt  this rank's torch / numpy / python / CUDA RNG states and named generators

The folder is written as ``step_000120.tmp`` and renamed when complete, so a run killed while
writing leaves the previous checkpoint intact and ``latest`` never sees half a checkpoint.
The learning rate is a function of the step (train.py), so there is no scheduler state to keep.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from e2h import distributed as dist
from e2h import sharded

PREFIX = "step_"


def checkpoint_dir(run_dir, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{PREFIX}{step:06d}"


def latest(run_dir) -> Path | None:
    """The newest complete checkpoint of a run (``.tmp`` folders are unfinished writes)."""
    folder = Path(run_dir) / "checkpoints"
    done = sorted(p for p in folder.glob(f"{PREFIX}*") if p.is_dir() and not p.suffix)
    return done[-1] if done else None


def _rng_state(generators: dict[str, torch.Generator]) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate(),
             "generators": {k: g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict, generators: dict[str, torch.Generator]):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    for k, g in generators.items():
        if k in state["generators"]:
            g.set_state(state["generators"][k])


def export_model(model, path, tokenizer_path=None):
    """The HF-layout weights of ``model`` (a policy or a reward model) in ``path``, written
    atomically by rank 0; under FSDP each tensor is gathered to rank 0 as it is written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    sharded.export(model, tmp)   # collective: every rank calls it
    if dist.is_main():
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
        _replace(tmp, path)
    dist.barrier()


def _replace(tmp: Path, path: Path):
    """Rename ``tmp`` to ``path``; an older ``path`` is moved aside first and deleted after."""
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def save(run_dir, step: int, model, optimizers, meta: dict, generators=None, *,
         export=None, tokenizer_path=None, keep: int = 2) -> Path:
    """Write checkpoint ``step`` of ``run_dir`` (every rank calls this); keep the newest ``keep``.

    ``model`` holds every trained module (PPO: policy and value model); ``export`` is the one
    written in the HF layout (default: ``model``)."""
    generators = generators or {}
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    dist.barrier()
    export_model(export if export is not None else model, tmp / "model", tokenizer_path)
    dist.save_state(tmp / "state", model, optimizers)
    torch.save(_rng_state(generators), tmp / "rng" / f"rank{dist.rank()}.pt")
    dist.barrier()
    if dist.is_main():
        (tmp / "trainer.json").write_text(json.dumps({"step": step, **meta}, indent=1))
        _replace(tmp, final)
        older = sorted(p for p in final.parent.glob(f"{PREFIX}*") if p.is_dir() and not p.suffix)
        for p in older[:-keep] if keep > 0 else []:
            shutil.rmtree(p, ignore_errors=True)
    dist.barrier()
    return final


def load(ckpt, model, optimizers, generators=None) -> dict:
    """Restore model, optimizers and RNG states from ``ckpt``; return trainer.json.

    Sharded states load at any world size. RNG states are per rank: a rank with no saved state
    (the run now has more ranks) keeps its seeded state, so only same-size resumes are exact."""
    ckpt = Path(ckpt)
    dist.load_state(ckpt / "state", model, optimizers)
    rng = ckpt / "rng" / f"rank{dist.rank()}.pt"
    if rng.exists():
        _set_rng_state(torch.load(rng, weights_only=False), generators or {})
    return json.loads((ckpt / "trainer.json").read_text())
