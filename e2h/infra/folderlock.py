"""One process at a time in a folder: an OS lock (flock) on ``<folder>/.lock``.

The kernel drops the lock when the process that holds it ends, however it ends (SIGKILL, a
crash, a lost node's processes reaped), so there is never a stale lock to clean up by hand.
The holder writes its pid, host and command into the file, for the message a second process
gets. The file is written in place and never removed or replaced: the lock belongs to the
file's inode, so a new file under the same name would be a second, free lock.

Used by train.py for its run folder (e2h/infra/runfolder.py), by e2h.evaluate for its output folder
and by the study for its runs folder (study/runner.py). Imports no torch (the study must not).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from e2h.infra.errors import Failed

NAME = ".lock"


class Held(Failed):
    """The folder is locked by another process; ``holder`` says which."""

    def __init__(self, folder: Path, holder: str):
        super().__init__(f"{folder} is in use by {holder}")
        self.holder = holder


def _me() -> str:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"
    return f"pid {os.getpid()} on {socket.gethostname()}: {command[:200]}"


def take(folder) -> int:
    """Lock ``folder`` (created if missing) for this process; return the lock's file
    descriptor (closing it releases the lock). Raises ``Held`` if another open of the lock
    holds it, in this process or another."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        for _ in range(100):   # a holder that has just locked writes its line microseconds later
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
            if holder:
                break
            time.sleep(0.01)
        os.close(fd)
        raise Held(folder, holder or "another process (it has not written its pid yet)") from None
    except OSError as e:   # a file system without locks (some FUSE mounts): name the file
        os.close(fd)
        raise OSError(e.errno, e.strerror, str(folder / NAME)) from None
    me = f"{_me()}\n".encode()
    os.pwrite(fd, me, 0)   # over the last holder's line, then cut: never an empty file
    os.ftruncate(fd, len(me))
    return fd


def release(fd: int):
    os.close(fd)


@contextlib.contextmanager
def held(folder):
    """``folder`` locked by this process for the duration."""
    fd = take(folder)
    try:
        yield fd
    finally:
        release(fd)
