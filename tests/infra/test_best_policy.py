"""Which policy an RL run ends with: the best by greedy validation accuracy among the starting
policy and every validated checkpoint (e2h/validate.py), through train.py in-process with the
validation accuracies scripted, so the expected winner is known by construction."""
import json
import sys
from pathlib import Path

import pytest
import torch

from e2h import iterations, recipes, validate
from e2h.hf.checkpoint import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_rl_iterations import RUN, models, params, spy  # noqa: E402,F401  (the fixture too)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402

VALIDATED = list(RUN)
VALIDATED[VALIDATED.index("--eval-problems") + 1] = "1"   # a validation split exists


def script(monkeypatch, alls: list[float]):
    """Validation accuracies (All) in call order; no test results (no closing table)."""
    calls = iter(alls)

    def fake(run, policy, split="test", save=None):
        if split != "validation":
            return {}
        a = next(calls)
        return {"validation_easy_acc": a, "validation_hard_acc": a, "validation_all_acc": a}
    monkeypatch.setattr(validate, "accuracy", fake)
    monkeypatch.setattr(recipes, "accuracy", fake)
    monkeypatch.setattr(iterations, "accuracy", fake)
    monkeypatch.setattr(validate, "graded", lambda run, policy, split="test", save=None: [])


def weights(path) -> torch.Tensor:
    return params(load_model(path))


def run_dpo(models, out, capsys) -> str:
    assert train.main(["--algo", "dpo", "--out", str(out), *VALIDATED, "--policy", str(models / "policy"),
                       "--reward-model", str(models / "rm"), "--pair-gap", "0"]) == 0
    return capsys.readouterr().out


def test_every_checkpoint_below_the_start_keeps_the_start(models, tmp_path, monkeypatch, capsys):
    script(monkeypatch, [50.0, 40.0, 45.0])          # start, after iteration 1, after 2
    said = run_dpo(models, tmp_path / "dpo", capsys)
    assert "kept the policy of step 0, the starting policy" in said
    assert json.loads((tmp_path / "dpo/best/best.json").read_text())["step"] == 0
    assert torch.equal(weights(tmp_path / "dpo/model"), weights(models / "policy"))


def test_a_better_checkpoint_is_kept(models, tmp_path, monkeypatch, capsys):
    after = []
    spy(monkeypatch, iterations, "validate", before=lambda a, k: after.append(params(a[1])))
    script(monkeypatch, [30.0, 60.0, 40.0])          # iteration 1 wins
    said = run_dpo(models, tmp_path / "dpo", capsys)
    assert "kept the policy of iteration 1" in said
    assert json.loads((tmp_path / "dpo/best/best.json").read_text())["iteration"] == 1
    final = weights(tmp_path / "dpo/model")
    assert torch.equal(final, after[0]) and not torch.equal(final, after[1])
    assert not torch.equal(final, weights(models / "policy"))


@pytest.mark.parametrize("alls, kept_step", [([50.0, 40.0, 45.0], 0), ([30.0, 40.0, 35.0], 1)])
def test_ppo_validates_the_start_too(models, tmp_path, monkeypatch, capsys, alls, kept_step):
    script(monkeypatch, alls)                       # start, after step 1, after step 2
    assert train.main(["--algo", "ppo", "--out", str(tmp_path / "ppo"), *VALIDATED,
                       "--policy", str(models / "policy"), "--reward-model", str(models / "rm"),
                       "--ppo-steps", "2", "--rollouts", "2", "--eval-every", "1"]) == 0
    assert json.loads((tmp_path / "ppo/best/best.json").read_text())["step"] == kept_step
    same = torch.equal(weights(tmp_path / "ppo/model"), weights(models / "policy"))
    assert same == (kept_step == 0)


def test_ppo_without_validation_ends_with_its_last_policy(models, tmp_path, monkeypatch, capsys):
    script(monkeypatch, [90.0])                     # were the start validated, it would win
    assert train.main(["--algo", "ppo", "--out", str(tmp_path / "ppo"), *VALIDATED,
                       "--policy", str(models / "policy"), "--reward-model", str(models / "rm"),
                       "--ppo-steps", "2", "--rollouts", "2", "--eval-every", "0"]) == 0
    assert not (tmp_path / "ppo/best").exists()
    assert not torch.equal(weights(tmp_path / "ppo/model"), weights(models / "policy"))
