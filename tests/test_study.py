"""study.py --quick end to end (one seed, every stage on tiny settings): every number of the
report is produced. The values of a generator trained for seconds mean nothing, so only their
presence and type are checked; the AUCs may be NaN (a class can be empty when every sample is
wrong)."""
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("easy", "hard", "all")


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_split_values(by_split: dict, allow_nan=False):
    assert set(by_split) == set(SPLITS)
    for value in by_split.values():
        assert is_number(value) and (allow_nan or 0.0 <= value <= 100.0), by_split


def test_quick_study_produces_every_number(tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "study.py", "--quick", "--seeds", "1", "--out", str(out),
           "--runs", str(tmp_path / "runs")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    seed = results["per_seed"][0]
    n, t1n = results["settings"]["n"], results["settings"]["t1_n"]

    # Table 1: three generators, greedy and majority@t1_n
    assert set(seed["table1"]) == {"sft_easy", "sft_all", "sft_hard"}
    for by_decoding in seed["table1"].values():
        assert set(by_decoding) == {"greedy", f"maj@{t1n}"}
        for by_split in by_decoding.values():
            check_split_values(by_split)

    # re-ranking: three evaluators x three methods x N = 1, 2, 4, ..., n
    ns = [str(2 ** i) for i in range(n.bit_length())]
    assert set(seed["rerank"]) == {"orm", "prm", "oprm"}
    for by_method in seed["rerank"].values():
        assert set(by_method) == {"majority", "weighted", "best_of_n"}
        for by_n in by_method.values():
            assert list(by_n) == ns
            for by_split in by_n.values():
                check_split_values(by_split)
    for aucs in seed["auc"].values():
        assert set(aucs) == {"easy_step", "easy_outcome", "hard_step", "hard_outcome",
                             "test_easy_outcome_min", "test_hard_outcome_min"}
        assert all(is_number(v) and (math.isnan(v) or 0.0 <= v <= 1.0) for v in aucs.values())

    # Table 2: the easy SFT policy and the four RL runs
    assert set(seed["table2"]) == {"sft_easy", "ppo", "ppo_outcome", "dpo", "rest"}
    for by_split in seed["table2"].values():
        check_split_values(by_split)

    # findings: F1 for PRM and OPRM at N = n, F2 per evaluator, F3 per RL run, F4
    names = [f["name"] for f in results["findings"]]
    assert names == ["F1 PRM N=4", "F1 OPRM N=4", "F2 ORM N=4", "F2 PRM N=4", "F2 OPRM N=4",
                     "F3 ppo", "F3 ppo_outcome", "F3 dpo", "F3 rest", "F4"]
    assert all(isinstance(f["reproduced"], bool) for f in results["findings"])
    report = (out / "report.md").read_text()
    assert "## Findings" in report and "## Table 2" in report
