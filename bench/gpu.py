"""Every GPU check of e2h in one run of at most 8 minutes on one H200, as one Markdown table.

    python bench/gpu.py --out gpu.md                  # on a CUDA GPU
    python bench/gpu.py --dry --out /tmp/gpu-dry.md   # CPU, tiny shapes: the same code paths

The checks, in order (bench/gpu_checks.py, bench/gpu_attention.py and bench/gpu_runs.py hold
them; CHECKS gives their budgets on the GPU, which add up to under 8 minutes; the dry mode
runs each on tiny shapes, the Triton kernels through TRITON_INTERPRET=1 and the FSDP2 step
on a one-rank gloo group):
- setup: device and versions, the measured copy bandwidth and bf16 matmul rate, and the
  tokenizer, problems and small random checkpoints that the entry-point runs read;
- kernel: the regimes of `bench/attention.py --check-only` on the compiled kernels, and one
  forward + backward at each shape of the attention sweep (which also fills Triton's cache
  before the sweep times anything), spread over several processes so that they compile at once;
- attention: TFLOP/s of the Triton kernel against SDPA's flash and cuDNN backends, bf16;
- decode, decode_compile: a Llemma-7B-shaped model decoding at batch 1 and 64 against the HBM
  roofline, eager and with the decode step under torch.compile;
- sft: one ~1B Llama SFT step under FSDP2 on one GPU: tokens/s and MFU;
- evaluate: `python -m e2h.evaluate` on a 7B-shaped policy and reward model: samples/s;
- ppo, dpo: `python train.py --algo ppo` (two steps) and `--algo dpo` (one step): losses finite.

Each check runs in its own process (`--child NAME`): a crash, a hang or a CUDA error that
poisons its process is one row of the table and the other checks still run. A check that
overruns its budget is killed with its process group; what it had saved so far (checks save
their partial results as they go) stays in the table, marked timeout.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]
# name: (module of check_NAME, budget on the GPU, budget in the dry mode); budgets in seconds,
# the GPU ones sum to 455
CHECKS = {"setup": ("gpu_checks", 20, 60), "kernel": ("gpu_attention", 110, 120),
          "attention": ("gpu_attention", 85, 120), "decode": ("gpu_checks", 40, 60),
          "decode_compile": ("gpu_checks", 25, 90), "sft": ("gpu_checks", 45, 60),
          "evaluate": ("gpu_runs", 70, 90), "ppo": ("gpu_runs", 30, 90),
          "dpo": ("gpu_runs", 30, 90)}
# checks that run the same model shapes as an earlier one keep Triton's tuning on disk: the
# kernel workers (tuning on a shared GPU), the attention sweep and the sft step tune anew
REUSE_TUNING = ("decode", "decode_compile", "evaluate", "ppo", "dpo")
FORMULAS = """\
Formulas:
- attention FLOPs: forward 4 B H T^2 D (Q K^T and P V), backward 2.5 times the forward,
  causal counts half; TFLOP/s = FLOPs / median time (triton.testing.do_bench, L2 flushed).
- decode roofline: one decode step reads every weight once, so steps/s <= bandwidth / weight
  bytes: 13.48 GB of bf16 weights (6.74e9 parameters) give 356 steps/s at the H200's nominal
  4.8 TB/s and 319 at 4.3 TB/s (a device-to-device copy measured on an H200 SXM); the setup
  row's copy gives a third ceiling. KV-cache reads are extra (their bytes are in the decode
  table). Decode steps/s = (new tokens - 1) / (time of all new tokens - time of the first).
- MFU = tokens/s x (6 (N - embedding) + 12 L d T) / 989 TFLOP/s (H200 SXM dense bf16,
  datasheet); the same FLOPs over the setup row's measured matmul rate are given too.
- samples/s (evaluate) = problems x N / (wall time of `python -m e2h.evaluate` - the time
  spent loading the two checkpoints)."""


def launch(argv: list[str], name: str, budget: float, args, work: Path) -> subprocess.Popen:
    """``python bench/gpu.py argv`` in its own process group, its output in work/name.log."""
    (work / f"{name}.json").unlink(missing_ok=True)
    cmd = [sys.executable, str(SCRIPT), *argv, "--work", str(work), "--seconds", str(budget)]
    cmd += ["--dry"] * args.dry + (["--tokenizer", str(args.tokenizer)] if args.tokenizer else [])
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "E2H_ATTENTION")}
    if args.dry:
        env["TRITON_INTERPRET"] = "1"   # read when the kernels are defined: CPU tensors
    else:
        env["TRITON_PRINT_AUTOTUNING"] = "1"   # each tuning's time and choice, in the log
    if name in REUSE_TUNING:
        env["TRITON_CACHE_AUTOTUNING"] = "1"
    with open(work / f"{name}.log", "w") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_all(procs: list[subprocess.Popen], deadline: float) -> bool:
    """Wait for every process until the deadline, then kill the process groups of those left
    (the check and whatever it started); whether any had to be killed."""
    killed = False
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = True
    return killed


def merge_kernel_workers(results: list[dict]) -> dict:
    """The kernel check's row from its workers' lines."""
    lines = [line for r in results for line in r.get("lines", [])]
    items = max((r.get("items", 0) for r in results), default=0)
    good = sum(ok for ok, _ in lines)
    out = {"ok": items > 0 and good == items,
           "summary": f"{good}/{items} passed ({len(lines)} run, {len(results)} worker "
                      f"processes): the check-only regimes in bf16, fp16 and fp32 (kernel error "
                      f"<= 2x SDPA's, NaN-poisoned outputs), the sweep's and the sft step's shapes",
           "details": ["```", *(line for _, line in lines), "```"]}
    errors = [r["error"] for r in results if "error" in r]
    return {**out, "error": errors[0]} if errors else out


def run_check(name: str, args, work: Path) -> dict:
    """Run check ``name`` (the kernel check: its workers, at once) under its budget; its row."""
    budget, t0 = CHECKS[name][2 if args.dry else 1], time.monotonic()
    if name == "kernel":
        workers = 1 if args.dry else max(1, min(14, (os.cpu_count() or 2) - 2))
        names = [f"kernel-{i}" for i in range(workers)]
        procs = [launch(["--kernel-worker", str(i), str(workers)], n, budget, args, work)
                 for i, n in enumerate(names)]
    else:
        names, procs = [name], [launch(["--child", name], name, budget, args, work)]
    killed = wait_all(procs, t0 + budget)
    seconds = time.monotonic() - t0
    results = [json.loads(f.read_text()) if f.is_file() else {}
               for f in (work / f"{n}.json" for n in names)]
    result = merge_kernel_workers(results) if name == "kernel" else results[0]
    failed = [p.returncode for p in procs if p.returncode != 0]
    if killed:
        status, note = "timeout", f" (killed at its {budget} s budget)"
    elif failed or "error" in result:
        last = (work / f"{names[0]}.log").read_text(errors="replace").strip().splitlines()
        status = "error"
        note = " " + result.get("error", last[-1] if last else f"exit {failed[0]}")
    else:
        status, note = ("ok" if result.get("ok") else "failed"), ""
    summary = (result.get("summary", "") + note).strip().replace("|", "/") or "no result"
    return {"name": name, "status": status, "seconds": seconds, "summary": summary,
            "details": result.get("details", []), "env": result.get("env")}


def header(rows: list[dict], dry: bool) -> list[str]:
    env = next((r["env"] for r in rows if r["env"]), None) or {}
    versions = {k: env.get(k) or importlib.metadata.version(k) for k in ("torch", "triton")}
    lines = [f"Device: {env.get('device', 'unknown (the setup check did not report)')}",
             f"Date: {datetime.date.today()}; torch {versions['torch']}, triton "
             f"{versions['triton']}, CUDA {env.get('cuda')}, Python "
             f"{env.get('python') or platform.python_version()}",
             f"Command: `python {' '.join(sys.argv)}`"]
    if env.get("nvidia-smi"):
        lines.append(f"nvidia-smi (driver, SM clock, max SM clock, temperature, power): "
                     f"{env['nvidia-smi']}")
    if dry:
        lines.append("Mode: dry (CPU, tiny shapes, interpreted kernels, gloo): the numbers test "
                     "the code paths, they measure nothing.")
    return lines


def markdown(rows: list[dict], dry: bool) -> str:
    table = ["| check | status | seconds | result |", "|---|---|---|---|"]
    table += [f"| {r['name']} | {r['status']} | {r['seconds']:.1f} | {r['summary']} |"
              for r in rows]
    details = []
    for r in rows:
        if r["details"]:
            details += ["", f"### {r['name']}", "", *r["details"]]
    return "\n".join(["# e2h GPU checks", "", *header(rows, dry), "", *table, "", FORMULAS,
                      *details]) + "\n"


def write_atomic(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # what to run
    p.add_argument("--dry", action="store_true", help="CPU, tiny shapes, TRITON_INTERPRET=1")
    p.add_argument("--only", nargs="+", choices=list(CHECKS), default=None,
                   help="run these checks only (the entry-point runs need setup first)")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="tokenizer.json for the evaluate check (default: the Llama-2 one in "
                        "../shared/data when present, else setup's small one)")
    # where
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for logs, partial results and small checkpoints (default: a "
                        "new temporary folder); the 7B ones go to /dev/shm when it has room")
    # internal: one check, or one kernel-check worker, in this process
    p.add_argument("--child", choices=list(CHECKS), help=argparse.SUPPRESS)
    p.add_argument("--kernel-worker", type=int, nargs=2, metavar=("I", "W"), help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_runs   # torch-free: the checks import it, and torch, in their own processes
    if args.child or args.kernel_worker:
        return gpu_runs.child_main(args, CHECKS[args.child or "kernel"][0])
    if args.tokenizer is not None and not args.tokenizer.is_file():
        p.error(f"--tokenizer {args.tokenizer}: file not found")
    work = args.work or Path(tempfile.mkdtemp(prefix="e2h-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"logs and partial results: {work}", flush=True)
    rows = []
    for name in args.only or CHECKS:
        rows.append(run_check(name, args, work))
        r = rows[-1]
        print(f"{r['name']}: {r['status']} in {r['seconds']:.1f} s: {r['summary']}", flush=True)
    shutil.rmtree(gpu_runs.scratch(work), ignore_errors=True)   # left by a killed evaluate check
    text = markdown(rows, args.dry)
    print("\n" + text, end="")
    if args.out:
        write_atomic(args.out, text)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
