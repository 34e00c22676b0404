"""Stop signals: a scheduler asking a command to end soon, turned into a stop at a safe point.

SLURM, Kubernetes and ``timeout`` end a job with SIGTERM, then SIGKILL after a grace period;
SLURM can send SIGUSR1 ahead of time (``--signal``); a closed terminal sends SIGHUP; torchrun
forwards the signal it gets to every rank. Python's default for these is to die at once, losing
every step since the last checkpoint. Under ``handled`` (every command's ``errors.guard``) a stop
signal raises ``Preempted``, a KeyboardInterrupt, so it unwinds the way Ctrl-C does, at once;
inside ``deferred`` (a training phase, a checkpoint or best-model write) it is only recorded, and
the code that deferred it checks ``requested()`` at its next safe point (the end of a step, where
the loop saves and stops: e2h/loop.py). A signal still unanswered when the outermost
``deferred`` ends raises then. Ctrl-C (SIGINT) is left as it is: it stops at once.

Imports no torch (the study, which ends its stages on these signals, must not).
"""
from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)

_requested: int | None = None   # the signal received, not yet answered
_deferred = 0                   # depth of ``deferred`` blocks


class Preempted(KeyboardInterrupt):
    """A stop signal; the command exits 128 + its number, as a process it killed would."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message)
        self.signum, self.code = signum, 128 + signum
        self.name = signal.Signals(signum).name


def _on_signal(signum, frame):
    global _requested
    if not _deferred:
        raise Preempted(signum)
    _requested = signum


@contextlib.contextmanager
def handled():
    """Stop signals raise ``Preempted`` (or wait, inside ``deferred``) for the duration; the
    previous handlers afterwards. Signal handlers belong to the main thread: elsewhere, a no-op."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested = None
    previous = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred():
    """Inside, a stop signal is recorded and left to ``requested()``: what runs here (a step, a
    checkpoint write) is never cut in half."""
    global _deferred, _requested
    _deferred += 1
    try:
        yield
    finally:
        _deferred -= 1
    if not _deferred and _requested is not None:   # arrived after the last safe point
        signum, _requested = _requested, None
        raise Preempted(signum)


def requested() -> int | None:
    """The stop signal received and not yet answered, or None."""
    return _requested
