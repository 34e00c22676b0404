"""A run folder (train.py --out) belongs to one run.

A new run in a folder that holds another run's work (checkpoints, model, metrics, data) is an
error that says how to go on: ``--resume`` continues that run, a new ``--out`` starts another
beside it, ``--overwrite`` replaces it. ``args.json`` is written once, when the run starts, and
is the run's settings from then on: ``--resume`` compares the flags it is given with them and
refuses a difference that could change the result, naming each differing flag, unless
``--allow-changed-flags`` accepts it; an accepted change is a ``changed_flags`` line of
metrics.jsonl at the step it is resumed from, so the log says which steps ran with which
settings and a later resume compares with the settings that trained its checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

from e2h.infra import distributed as dist
from e2h.infra import folderlock, trainstate
from e2h.infra.files import read_log, write_json

ARGS, LOG, DONE = "args.json", "metrics.jsonl", "done.json"
WORK = ("checkpoints", "model", LOG, "data", "best", DONE)   # what a new run in the folder would lose
STEMS = ("args", "metrics", "checkpoints", "model", "data", "best", "done", "tokenizer", "curves")


_locks: dict[Path, int] = {}   # folder -> lock of this process (a nested stage finds its own)


def _take(out: Path) -> str | None:
    """Rank 0 locks ``out``; every rank gets None when it did (or this process already held
    it), else the holder's line."""
    holder = None
    if dist.is_main() and out.resolve() not in _locks:
        try:
            _locks[out.resolve()] = folderlock.take(out)
        except folderlock.Held as e:
            holder = e.holder
    return dist.broadcast_object(holder)


@contextlib.contextmanager
def locked(out: Path, wait: bool = False, what: str = "run", poll_s: float = 2.0):
    """``out`` claimed by this run for the duration, before anything is written in it.
    Another run holding it: refused in one line naming the holder, or with ``wait`` (a cached
    stage), waited for. The ranks poll together, so a long wait trips no collective timeout."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    mine = dist.is_main() and out.resolve() not in _locks
    created = not out.exists()
    said = False
    while (holder := _take(out)) is not None:
        if not wait:
            raise ValueError(f"--out {out} is in use by another run ({holder}); wait for it to "
                             "end, or choose another --out")
        if not said:
            dist.say(f"waiting for the {what} in {out}: another run is training it ({holder})")
            said = True
        time.sleep(poll_s)
    try:
        yield
    except BaseException:
        # a run refused before it wrote anything (a memory plan that does not fit, a bad flag
        # found late) leaves no folder behind: only the lock is in it, removed while still held
        if mine and created and [p.name for p in out.iterdir()] == [folderlock.NAME]:
            (out / folderlock.NAME).unlink()
            out.rmdir()
        raise
    finally:
        if mine:
            folderlock.release(_locks.pop(out.resolve()))


def _holds(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir()) or path.is_file() and path.stat().st_size > 0


def read_args(out: Path) -> dict | None:
    path = out / ARGS
    if not path.exists():
        return None
    try:
        args = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({e}); --overwrite starts a new run there") from None
    if not isinstance(args, dict):
        raise ValueError(f"{path}: not a JSON object; --overwrite starts a new run there")
    return args


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def differences(before: dict, now: dict, neutral) -> dict:
    """{flag: [before, now]} of the flags that differ, less the ``neutral`` ones."""
    now = json.loads(json.dumps(now))   # tuples as lists, as args.json holds them
    out = {}
    for key in sorted(set(before) | set(now)):
        if key in neutral:
            continue
        if before.get(key) != now.get(key):
            out[key] = [before.get(key), now.get(key)]
    return out


def describe(changes: dict) -> str:
    return ", ".join(f"--{k.replace('_', '-')} {_show(new)} (was {_show(old)})"
                     for k, (old, new) in changes.items())


def in_force(args: dict, log: list[dict], step: int) -> dict:
    """The settings that trained steps 1 .. ``step``: args.json with the changes accepted before
    it (a change logged at step j governs steps j + 1 on)."""
    args = dict(args)
    for line in log:
        if line["step"] < step:
            args.update({k: new for k, (_, new) in line.get("changed_flags", {}).items()})
    return args


def clear(out: Path):
    """Remove a run's files from ``out`` (rank 0), leaving anything else there."""
    if dist.is_main() and out.is_dir():
        for p in out.iterdir():
            if p.name.lstrip(".").split(".")[0] in STEMS:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    dist.barrier()


def claim(out: Path, args, neutral, pending=(), say=dist.say):
    """Check that this run may use ``out``; return (checkpoint to resume from or None, the
    accepted flag changes). On ``--resume``, the ``pending`` flags not given (the models train.py
    would otherwise train first) take the run's own values. Every rank calls it; only rank 0
    changes the folder."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    work = [name for name in WORK if _holds(out / name)]
    old = read_args(out)
    if args.overwrite:
        if args.resume:
            raise ValueError("--overwrite replaces the run in --out, --resume continues it: give one")
        if work or old is not None:
            say(f"--overwrite: removing the run in {out} ({', '.join(work or [ARGS])})")
        clear(out)
        return None, {}
    if not args.resume:
        if work:
            raise ValueError(f"--out {out} holds another run ({', '.join(work)}); continue it with "
                             "--resume, choose a new --out, or replace it with --overwrite")
        clear(out)   # at most the args.json and tokenizer of a run that never took a step
        return None, {}
    if old is None:
        if work:
            raise ValueError(f"--resume: {out / ARGS} is missing, so the flags of the run there "
                             f"({', '.join(work)}) cannot be checked; --overwrite starts a new one")
        say(f"--resume: no run in {out} yet; starting one from step 0")
        return None, {}
    ckpt = trainstate.newest_intact(out, say)
    step = trainstate.read_trainer(ckpt)["step"] if ckpt else 0
    before = in_force(old, read_log(out / LOG), step)
    for key in pending:
        if getattr(args, key) is None:
            setattr(args, key, before.get(key))
    changes = differences(before, vars(args), neutral)
    if changes and not args.allow_changed_flags:
        raise ValueError(f"--resume: these flags differ from the run in {out} ({ARGS}): "
                         f"{describe(changes)}; resume with its flags, or accept the change from "
                         f"step {step} with --allow-changed-flags")
    if ckpt is None:
        say(f"--resume: no checkpoint in {out}; starting from step 0 with its settings")
    if changes:
        say(f"--allow-changed-flags: from step {step} on, {describe(changes)}")
    return ckpt, changes


def begin(out: Path, args):
    """Rank 0 marks the run as started: args.json if the folder has none (written once), and
    no done.json (the marker ``train.py`` writes last, once the run is complete)."""
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        if not (out / ARGS).exists():
            write_json(out / ARGS, vars(args))
        (out / DONE).unlink(missing_ok=True)
    dist.barrier()
