"""bench/gpu.py's dry mode: every GPU check runs on CPU (tiny shapes, the Triton kernels
interpreted, FSDP2 on a one-rank gloo group, the real train.py and e2h.evaluate entry points)
and lands in the Markdown table as ok, so the script is known to run before a GPU is lent.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ["setup", "kernel", "attention", "decode", "decode_compile", "sft", "evaluate", "ppo",
          "dpo"]
HEAD = "| check | status | seconds | result |"


def table_rows(text: str) -> list[list[str]]:
    """The cells of the main table: the rows after HEAD and its separator, to the blank line."""
    lines = text.splitlines()
    start = lines.index(HEAD) + 2
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        assert line.startswith("| ") and line.endswith(" |"), line
        rows.append(line[2:-2].split(" | "))
    return rows


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_dry_run_reports_every_check_ok(tmp_path):
    out, work = tmp_path / "gpu.md", tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry", "--out",
                           str(out), "--work", str(work)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    text = out.read_text()
    rows = table_rows(text)
    assert [r[0] for r in rows] == CHECKS, text
    for name, status, seconds, result in rows:
        log = (work / f"{'kernel-0' if name == 'kernel' else name}.log").read_text()[-3000:]
        assert status == "ok", f"{name}: {result}\n{log}"
        assert float(seconds) > 0 and result
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert text in proc.stdout                       # the same table on stdout
    for prefix in ("Device: CPU", "Date: ", "Command: `python ", "Mode: dry"):
        assert any(line.startswith(prefix) for line in text.splitlines()), prefix
    assert not (out.parent / (out.name + ".tmp")).exists()   # written through a rename
