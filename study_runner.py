"""The study's job runner: stages as subprocesses, a few at a time, in dependency order.

A stage is a command line and the file it leaves when done; a stage whose file exists is
skipped, so a re-run continues where the last one stopped.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


class Job:
    def __init__(self, name, argv, done_file, deps=()):
        self.name, self.argv, self.done_file, self.deps = name, argv, Path(done_file), set(deps)


def run_jobs(jobs: list[Job], workers: int, log_dir: Path, on_done=None) -> dict:
    """Run jobs whose dependencies are met, ``workers`` at a time, earliest in the list first;
    a job whose output exists is skipped. Returns {name: wall seconds}."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log_dir.mkdir(parents=True, exist_ok=True)
    pending, running, done, times = list(jobs), {}, set(), {}
    while pending or running:
        for job in list(pending):          # in list order, so a chain of cached stages clears
            if job.done_file.is_file() and job.deps <= done:
                pending.remove(job)
                done.add(job.name)
                print(f"[cached] {job.name}", flush=True)
        ready = [j for j in pending if j.deps <= done]
        while ready and len(running) < workers:
            job = ready.pop(0)
            pending.remove(job)
            log = open(log_dir / (job.name.replace("/", "_") + ".log"), "w")
            running[job.name] = (job, subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT,
                                                       env=env), time.time(), log)
            print(f"[start] {job.name}", flush=True)
        time.sleep(1)
        for name, (job, proc, t0, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            times[name] = time.time() - t0
            if proc.returncode != 0:
                for _, other, *_ in running.values():
                    other.kill()
                sys.exit(f"study.py: stage {name} failed (exit {proc.returncode}); see {log.name}")
            done.add(name)
            print(f"[done] {name} in {times[name]:.0f}s", flush=True)
            if on_done:
                on_done(done, times)
    return times
