"""Training checkpoints that resume exactly, written atomically.

One checkpoint is one folder ``<run>/checkpoints/step_000120/``:

    model/        the weights in the Hugging Face layout (checkpoint.save_model) + tokenizer.json
    state/        model and optimizer states, sharded per rank (torch.distributed.checkpoint)
    trainer.json  step, position in the data, iteration and whatever the algorithm needs
    rng/rank{r}.pt  this rank's torch / numpy / python / CUDA RNG states and named generators
    manifest.json   the size and sha256 of every other file, written last

The folder is written as ``step_000120.tmp`` and renamed when complete, so a run killed while
writing leaves the previous checkpoint intact and ``latest`` never sees half a checkpoint.
A complete checkpoint can still be damaged later (a flipped bit, a truncated or overwritten
file): ``newest_intact`` checks it against its manifest before a resume, reports a damaged one
in one line, sets it aside as ``step_N.damaged`` and takes the previous one. Folders with a
suffix (``.tmp``, ``.damaged``, ``.nonfinite``) are neither resumed from nor pruned.
The learning rate is a function of the step (train.py), so there is no scheduler state to keep.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from e2h.infra import distributed as dist
from e2h.hf import sharded
from e2h.infra.files import disk_errors

PREFIX = "step_"
MANIFEST = "manifest.json"


def checkpoint_dir(run_dir, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{PREFIX}{step:06d}"


def complete(run_dir) -> list[Path]:
    """The complete checkpoints of a run, oldest first (``.tmp`` folders are unfinished writes)."""
    folder = Path(run_dir) / "checkpoints"
    return sorted(p for p in folder.glob(f"{PREFIX}*") if p.is_dir() and not p.suffix)


def latest(run_dir) -> Path | None:
    """The newest complete checkpoint of a run."""
    done = complete(run_dir)
    return done[-1] if done else None


def set_aside(ckpt: Path, why: str) -> Path:
    """Rename ``ckpt`` to ``<name>.<why>`` (rank 0), out of reach of resuming and pruning but
    kept for inspection."""
    aside = ckpt.with_name(f"{ckpt.name}.{why}")
    if dist.is_main():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(ckpt, aside)
    dist.barrier()
    return aside


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.name != MANIFEST)


def _hash_all(folder: Path, names: list[str]) -> dict[str, dict]:
    """{name: {"bytes", "sha256"}}, the files shared out over the ranks (each hashes every W-th)."""
    mine = {n: {"bytes": (folder / n).stat().st_size, "sha256": _sha256(folder / n)}
            for n in names[dist.rank()::dist.world_size()]}
    return {k: v for part in dist.all_gather_objects(mine) for k, v in part.items()}


def damage(ckpt) -> str | None:
    """What is wrong with checkpoint ``ckpt`` by its manifest (every rank calls this), or None."""
    ckpt = Path(ckpt)
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} unreadable"
    present = set(_files(ckpt))
    missing = sorted(set(manifest) - present)
    if missing:
        return f"{missing[0]} missing"
    names = sorted(manifest)
    found = _hash_all(ckpt, names)
    for name in names:
        if found[name]["bytes"] != manifest[name]["bytes"]:
            return f"{name} has {found[name]['bytes']} bytes, {manifest[name]['bytes']} were written"
        if found[name]["sha256"] != manifest[name]["sha256"]:
            return f"{name} does not match its sha256 (the bytes changed after it was written)"
    return None


def newest_intact(run_dir, say=print) -> Path | None:
    """The newest checkpoint that matches its manifest; each damaged newer one is reported in
    one line and set aside as ``.damaged``."""
    for ckpt in reversed(complete(run_dir)):
        if not (ckpt / MANIFEST).exists():
            say(f"checkpoint {ckpt} has no {MANIFEST} (written before checkpoints carried "
                "checksums): resuming from it unverified")
            return ckpt
        problem = damage(ckpt)
        if problem is None:
            return ckpt
        aside = set_aside(ckpt, "damaged")
        say(f"checkpoint {ckpt} is damaged ({problem}); set aside as {aside.name}, "
            "trying the previous one")
    return None


def read_trainer(ckpt: Path) -> dict:
    """trainer.json of ``ckpt``."""
    try:
        return json.loads((ckpt / "trainer.json").read_text())
    except (OSError, ValueError) as e:   # only an unverified (manifest-less) checkpoint gets here
        raise ValueError(f"{ckpt / 'trainer.json'}: unreadable ({e}); remove {ckpt.name} to "
                         "resume from the one before") from None


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
    with disk_errors(tmp):
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
    with disk_errors(tmp):
        dist.save_state(tmp / "state", model, optimizers)
        torch.save(_rng_state(generators), tmp / "rng" / f"rank{dist.rank()}.pt")
        if dist.is_main():
            (tmp / "trainer.json").write_text(json.dumps({"step": step, **meta}, indent=1))
        dist.barrier()
        manifest = _hash_all(tmp, _files(tmp))   # every file is complete: hash what a resume reads
        if dist.is_main():
            (tmp / MANIFEST).write_text(json.dumps({"files": manifest}, indent=1))
    if dist.is_main():
        _replace(tmp, final)
        older = complete(run_dir)
        for p in older[:-keep] if keep > 0 else []:
            shutil.rmtree(p, ignore_errors=True)
    dist.barrier()
    return final


def load(ckpt, model, optimizers, generators=None) -> dict:
    """Restore model, optimizers and RNG states from ``ckpt``; return trainer.json.

    Sharded states load at any world size. RNG states are per rank: a rank with no saved state
    (the run now has more ranks) keeps its seeded state, so only same-size resumes are exact."""
    ckpt = Path(ckpt)
    try:
        dist.load_state(ckpt / "state", model, optimizers)
    except (RuntimeError, KeyError, ValueError) as e:   # another model or optimizer layout
        if dist.is_timeout(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{ckpt / 'state'}: does not fit this run's model and optimizers "
                         f"({first[:200]})") from None
    rng = ckpt / "rng" / f"rank{dist.rank()}.pt"
    if rng.exists():
        _set_rng_state(torch.load(rng, weights_only=False), generators or {})
    return read_trainer(ckpt)
