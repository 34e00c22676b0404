"""Files written whole: a temporary name in the same folder, flushed to disk, then renamed.

A reader, or a run killed mid-write and started again, sees the old file or the new one, never
half of one (rename is atomic within a file system; the fsync keeps a power cut from leaving a
renamed but empty file). Every file a run or the study leaves goes through here, except folders
of checkpoints and models, which are written as ``<name>.tmp`` and renamed the same way, and the
metrics log, which only ever grows by one line (``e2h/run.py``).

``disk_errors`` gives a failed write by a library (safetensors, torch.save, DCP, tokenizers,
which wrap a full disk each their own way) back as the OSError it is, naming the folder.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

DISK = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def write_text(path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with disk_errors(path), os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def read_log(path) -> list[dict]:
    """The lines of a metrics log (JSON objects with an int "step"); a torn last line (a kill
    in mid-write) is left out. A missing file reads as no lines."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            lines.append(record)
    return lines


def write_json(path, obj, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def _os_error(e: BaseException, folder: Path) -> OSError | None:
    """The disk error behind ``e``: a chained OSError, a strerror in its text (DCP and the Rust
    libraries keep only that), or a bare write failure on a full disk (torch.save)."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    for code in DISK:
        if os.strerror(code) in str(e) or f"os error {code})" in str(e):
            return OSError(code, os.strerror(code), str(folder))
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if "timed out" not in str(e).lower() and shutil.disk_usage(existing).free < 16 * 2**20:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    return None


@contextlib.contextmanager
def disk_errors(folder):
    """Inside, a write that fails for lack of disk (full, read-only, no permission) raises
    OSError whatever library it went through; other failures are left as they are."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, str(folder)) from e   # a failed write names no file
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:   # DCP's CheckpointException is a BaseException
        cause = _os_error(e, Path(folder))
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror, cause.filename or str(folder)) from e
