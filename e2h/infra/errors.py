"""How the commands (train.py, e2h.evaluate, e2h.icl, the study) fail: one line and an exit code.

An expected failure (a bad flag, file, record or key; a folder that cannot be written; a full
disk; a non-finite loss; a rank that stopped answering) is an exception whose message names
the file, flag or key and says what to do. ``guard`` prints that message as one line on stderr,
on a fresh line (an open progress bar is closed first, so the message is never glued to it),
and exits 1. Ctrl-C exits 130 with where the command stopped; a stop signal (SIGTERM, SIGUSR1,
SIGHUP: e2h/infra/preemption.py) exits 128 + its number (143 for SIGTERM), saying the same. Anything
else is a bug in e2h and keeps its traceback; ``E2H_TRACEBACK=1`` shows the traceback of expected
failures too.
"""
from __future__ import annotations

import errno
import os
import sys

from tqdm import tqdm

from e2h.infra import preemption


class Failed(Exception):
    """An expected failure whose message is the line to print."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a message saying where the command stopped and how to continue."""


class NonFiniteLoss(Failed, RuntimeError):
    """A loss, gradient norm or weight that is NaN or infinite: the run stops before saving."""


# what to do about the system errors a run meets while writing its folder
OS_HINTS = {errno.ENOSPC: "the disk is full: free space and run the command again",
            errno.EDQUOT: "the disk quota is exhausted: free space and run the command again",
            errno.EACCES: "choose a path this user may write (--out)",
            errno.EPERM: "choose a path this user may write (--out)",
            errno.EROFS: "choose a path on a writable file system (--out)",
            errno.ENOTDIR: "a part of the path is a file, not a folder",
            errno.EISDIR: "a folder where a file was expected"}


def one_line(e: BaseException) -> str | None:
    """The message of an expected failure, or None for a bug."""
    if isinstance(e, OSError) and e.strerror is not None:   # raised by the system, not by e2h
        where = f"{e.filename}: " if e.filename is not None else ""
        hint = f"; {OS_HINTS[e.errno]}" if e.errno in OS_HINTS else ""
        return f"{where}{e.strerror}{hint}"
    if isinstance(e, (ValueError, OSError)):
        return str(e)
    dist = _dist()
    if dist is not None and dist.is_timeout(e):
        return (f"another rank did not answer for {dist.timeout_s():.0f} s (--dist-timeout), so "
                "this one gave up; the newest checkpoint is intact and --resume continues")
    if isinstance(e, Failed):
        return str(e)
    return None


def _dist():
    """e2h.infra.distributed when the command runs it (the study, a process manager, never imports
    torch); without it there is one process."""
    return sys.modules.get("e2h.infra.distributed")


def _close_bars():
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()   # writes the bar's last state and a newline


def _stopped_line(e: KeyboardInterrupt, interrupted: str) -> str:
    """Where the command stopped: the message it gave, else ``interrupted`` (after the signal's
    name when a signal stopped it)."""
    if str(e) and isinstance(e, (Interrupted, preemption.Preempted)):
        return str(e)
    return f"{e.name}: {interrupted}" if isinstance(e, preemption.Preempted) else interrupted


def guard(main, argv=None, interrupted: str = "interrupted") -> int:
    """Run ``main(argv)`` with the stop signals handled; return its exit code, 1 after an
    expected failure (one line on stderr; under torchrun every rank meets the same bad input, so
    rank 0 alone reports it, except a timeout, which only the ranks still running see), 130
    after Ctrl-C, 128 + the signal's number after a stop signal."""
    try:
        with preemption.handled():
            return main(argv) or 0
    except KeyboardInterrupt as e:
        _close_bars()
        dist = _dist()
        if dist is None or dist.is_main():
            print(_stopped_line(e, interrupted), file=sys.stderr, flush=True)
        return getattr(e, "code", 130)
    except Exception as e:
        line = one_line(e)
        if line is None or os.environ.get("E2H_TRACEBACK"):
            raise
        _close_bars()
        dist = _dist()
        if dist is None or not dist.is_distributed():
            print(f"error: {line}", file=sys.stderr, flush=True)
        elif dist.is_main() or dist.is_timeout(e):
            print(f"rank {dist.rank()}: error: {line}", file=sys.stderr, flush=True)
        return 1
