"""Files written whole: a temporary name in the same folder, flushed to disk, then renamed.

A reader, or a run killed mid-write and started again, sees the old file or the new one, never
half of one (rename is atomic within a file system; the fsync keeps a power cut from leaving a
renamed but empty file). Every file a run or the study leaves goes through here, except folders
of checkpoints and models, which are written as ``<name>.tmp`` and renamed the same way, and the
metrics log, which only ever grows by one line (``e2h/run.py``).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_text(path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def write_json(path, obj, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(obj, indent=indent) + "\n")
