"""The study's job runner: stages as subprocesses, a few at a time, in dependency order.

A stage is a command line and its done-marker, a file the stage writes last and atomically
(train.py's done.json, e2h.evaluate's table.json or rerank.json, e2h.icl's icl.json). A stage
whose marker is there and readable is skipped, so a re-run continues where the last one
stopped; an interrupted training stage resumes from its newest checkpoint (the study gives
train.py --resume).

One runner at a time uses a runs folder: it holds the lock on ``<runs>/.lock``
(e2h/infra/folderlock.py, the lock train.py takes on its run folder) for its life, and its
stages inherit it, so a second study on the same folder is refused even while stages of a
killed one are still ending. Each stage runs in a process group of its own (torchrun and its
ranks included), which the runner ends, SIGTERM then SIGKILL, whenever it stops: a failed stage,
an exception, Ctrl-C or a stop signal (SIGTERM, SIGUSR1, SIGHUP: e2h/infra/preemption.py). A
training stage answers SIGTERM by saving a checkpoint at its next step boundary, so the runner
gives its stages torchrun's grace (30 s) before SIGKILL. If the runner is killed outright
(SIGKILL), the kernel sends each stage SIGTERM (Linux's parent-death signal).
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from e2h.infra import folderlock, preemption
from e2h.infra.errors import Failed
from e2h.infra.files import write_json

PR_SET_PDEATHSIG = 1


class Job:
    def __init__(self, name, argv, done_file, deps=()):
        self.name, self.argv, self.done_file, self.deps = name, argv, Path(done_file), set(deps)

    def done(self) -> bool:
        """Whether the stage's marker is there and, for JSON, readable."""
        if not self.done_file.is_file():
            return False
        if self.done_file.suffix != ".json":
            return True
        try:
            json.loads(self.done_file.read_text())
            return True
        except (OSError, ValueError):
            print(f"[redo] {self.name}: {self.done_file} is unreadable", flush=True)
            return False


def lock(folder: Path) -> int:
    """Hold ``<folder>/.lock`` (released when this process and its stages have all ended)."""
    try:
        return folderlock.take(folder)
    except folderlock.Held as e:
        raise Failed(f"{folder} is in use by another study or stages it started "
                     f"({e.holder}); wait for them to end, or choose another --runs") from None


def _die_with_parent():   # runs in the child, between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):   # not Linux: the lock still stops a second runner
        pass


def start(argv, log, env, lock_fd) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, pass_fds=(lock_fd,),
                            preexec_fn=_die_with_parent)


def end(procs: list[subprocess.Popen], grace: float = 30.0):
    """End the stages' whole process groups: SIGTERM to all, then SIGKILL to those still running
    after ``grace`` seconds (a training stage saves a checkpoint in between; torchrun waits as
    long for its ranks)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        procs = [p for p in procs if p.poll() is None]
        if not procs:
            return


def last_line(path: Path) -> str:
    lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()] if path.is_file() else []
    return lines[-1].split("\r")[-1].strip()[:300] if lines else ""


def run_jobs(jobs: list[Job], workers: int, log_dir: Path, lock_fd: int, on_done=None) -> dict:
    """Run jobs whose dependencies are met, ``workers`` at a time, earliest in the list first;
    a job whose marker exists is skipped. ``lock_fd``: the runs folder's ``lock``, which the
    stages inherit. Returns {name: wall seconds} of every finished stage, those of earlier
    runs of the study included (``<log_dir>/seconds.json``: a stage's last run)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log_dir.mkdir(parents=True, exist_ok=True)
    seconds = log_dir / "seconds.json"
    times = json.loads(seconds.read_text()) if seconds.is_file() else {}
    pending, running, done = list(jobs), {}, set()
    try:
        with preemption.handled():   # a stop signal unwinds to the finally, as Ctrl-C does
            while pending or running:
                for job in list(pending):      # in list order, so a chain of cached stages clears
                    if job.deps <= done and job.done():
                        pending.remove(job)
                        done.add(job.name)
                        print(f"[cached] {job.name}", flush=True)
                ready = [j for j in pending if j.deps <= done]
                while ready and len(running) < workers:
                    job = ready.pop(0)
                    pending.remove(job)
                    log_path = log_dir / (job.name.replace("/", "_") + ".log")
                    log = open(log_path, "w")
                    running[job.name] = (job, start(job.argv, log, env, lock_fd), time.time(), log)
                    print(f"[start] {job.name}", flush=True)
                time.sleep(1)
                for name, (job, proc, t0, log) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    log.close()
                    del running[name]
                    times[name] = time.time() - t0
                    if proc.returncode != 0 or not job.done():
                        why = f"exit {proc.returncode}" if proc.returncode else f"no {job.done_file}"
                        raise Failed(f"stage {name} failed ({why}): {last_line(Path(log.name))} "
                                     f"(log: {log.name}); running python -m study again continues")
                    done.add(name)
                    write_json(seconds, times)
                    print(f"[done] {name} in {times[name]:.0f}s", flush=True)
                    if on_done:
                        on_done(done, times)
    finally:
        with preemption.deferred():   # a second signal does not cut the stages' grace short
            end([proc for _, proc, _, _ in running.values()])
        for _, _, _, log in running.values():
            log.close()
    return times
