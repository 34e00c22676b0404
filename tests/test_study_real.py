"""python -m study --quick --model on the real data of ../shared/data: every stage of the real study
(PRM800K SFT and PRM, MATH ORM samples, MATH500 evaluation, ICL, RL) runs end to end with a
tiny random-initialized Llama checkpoint and the Llama-2 tokenizer, and every number of the
report is produced. The values mean nothing; what is checked is that the path works."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "math" / "math500_test.jsonl").is_file(),
                                reason=f"real data not found at {DATA}")


def test_quick_real_study(tmp_path):
    sys.path.insert(0, str(ROOT))
    import torch
    from e2h.hf.checkpoint import save_model
    from e2h.model import ModelArgs, Transformer
    torch.manual_seed(0)
    base = tmp_path / "base"
    save_model(Transformer(ModelArgs.from_name("tiny", vocab_size=32000, max_seq_len=4096)), base)
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "study", "--quick", "--model", str(base), "--data-dir", str(DATA),
           "--out", str(out), "--runs", str(tmp_path / "runs")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    logs = "".join(f"\n== {p.name}\n" + p.read_text()[-1500:] for p in (tmp_path / "runs/logs").glob("*.log")) \
        if done.returncode else ""
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + logs
    results = json.loads((out / "results.json").read_text())
    seed = results["per_seed"][0]
    assert set(seed["table1"]) == {"sft_easy", "sft_all", "sft_hard", "icl"}
    assert set(seed["table1"]["icl"]["greedy"]) == {"easy", "hard", "all"}
    assert set(seed["table2"]) == {"sft_easy", "ppo", "ppo_outcome", "grpo", "dpo", "rest"}
    assert set(seed["rerank"]) == {"orm", "prm", "oprm"}
    assert results["meta"]["mode"] == "quick real"
    report = (out / "report.md").read_text()
    assert "MATH500 (its first 8 problems)" in report and "| icl | greedy |" in report
