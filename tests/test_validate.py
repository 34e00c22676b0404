"""An RL run's closing table (e2h/validate.py): the starting and final policies' greedy accuracy
and their paired difference with its interval, on hand-made per-problem results."""
import json
from types import SimpleNamespace

import pytest

from e2h import validate
from e2h.validate import above_zero, before_after, by_split, difference


def rec(pid, level, correct):
    return {"id": pid, "level": level, "correct": correct}


# Two easy and two hard problems; the final policy's results come in the reverse order.
# By id, after minus start: e1 +1, e2 +1, h1 0, h2 0, so Easy +100, Hard 0, All +50.
# Paired by position instead (e1-h2, e2-h1, h1-e2, h2-e1) it would read 0, +1, 0, +1:
# Easy +50, Hard +50; start minus after would read Easy -100.
START = [rec("e1", 1, False), rec("e2", 3, False), rec("h1", 4, True), rec("h2", 5, False)]
FINAL = [rec("h2", 5, False), rec("h1", 4, True), rec("e2", 3, True), rec("e1", 1, True)]

# Easy and Hard have one difference on every problem: zero-width intervals. All, differences
# (1, 1, 0, 0): a resample of the 4 problems has mean 0 with probability (1/2)^4 = 6.25 % and
# mean 1 with 6.25 %, both above 2.5 %, so the percentiles are exactly 0 and 100 points.
TABLE = """Greedy accuracy (%) on the same test problems:

| policy | Easy | Hard | All |
|---|---|---|---|
| SFT policy (start) | 0.0 | 50.0 | 25.0 |
| after dpo | 100.0 | 50.0 | 75.0 |
| difference (95 % interval) | +100.0 (+100.0, +100.0) | +0.0 (+0.0, +0.0) | +50.0 (+0.0, +100.0) |

difference: after minus start in points, problem by problem on the 4 problems graded both \
times; 95 % interval: paired bootstrap over problems."""


def test_the_difference_row_is_after_minus_start_paired_by_id():
    before, after = by_split(START, "test"), by_split(FINAL, "test")
    assert before_after("dpo", before, after, difference(START, FINAL)) == TABLE
    # without per-problem results (a resume whose start left none): the two rows alone
    assert difference([], FINAL) == {}
    assert before_after("dpo", before, after, {}) == TABLE.split("\n| difference")[0]


def test_closing_reports_the_difference(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(validate, "graded", lambda run, policy, split, save: FINAL)
    monkeypatch.setattr(validate, "finish", lambda run, policy, extra: extra)
    run = SimpleNamespace(args=SimpleNamespace(algo="dpo"), out=tmp_path)
    final = validate.closing(run, None, None, (by_split(START, "test"), START))
    assert final["start_test_all_acc"] == pytest.approx(25.0)
    assert final["test_all_acc"] == pytest.approx(75.0)
    assert (final["test_all_acc_diff"], final["test_all_acc_diff_lo"],
            final["test_all_acc_diff_hi"]) == pytest.approx((50.0, 0.0, 100.0))
    assert (final["test_easy_acc_diff"], final["test_hard_acc_diff"]) == pytest.approx((100.0, 0.0))
    assert final["test_paired_problems"] == 4
    said = capsys.readouterr().out
    assert TABLE in said
    assert ("dpo: test All after minus start +50.0 points, 95 % interval (+0.0, +100.0): "
            "the interval does not lie above 0") in said
    # every problem right after: differences (1, 1, 0, 1), mean +75. A resample's mean is 0
    # with probability (1/4)^4 = 0.4 % and at most 1/4 with 0.4 % + 4 (3/4) (1/4)^3 = 5.1 %,
    # so the 2.5th percentile is 25 points; it is 100 with (3/4)^4 = 32 %, so is the 97.5th
    gained = difference(START, [rec(r["id"], r["level"], True) for r in START])
    assert above_zero("rest", gained) == ("rest: test All after minus start +75.0 points, 95 % "
                                          "interval (+25.0, +100.0): the interval lies above 0")


def test_a_resume_reads_the_start_back(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/start_accuracy.json").write_text(json.dumps(by_split(START, "test")))
    (tmp_path / "data/start_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in START))
    run = SimpleNamespace(args=SimpleNamespace(resume=True), out=tmp_path)
    acc, records = validate.starting_accuracy(run, None)   # the resumed policy is not measured
    assert acc == by_split(START, "test") and records == START


def test_the_test_size_is_its_own_and_defaults_to_the_validation_size():
    from e2h.flags import get_args
    def sizes(*argv):
        args = get_args(["--algo", *argv])
        return args.eval_problems, args.test_problems
    assert sizes("dpo") == (250, 500)                             # embedded RL
    assert sizes("sft") == (100, 100)
    assert sizes("dpo", "--eval-problems", "0") == (0, 0)         # one size given: both
    assert sizes("dpo", "--test-problems", "7") == (250, 7)
    assert sizes("ppo", "--eval-problems", "3", "--test-problems", "2") == (3, 2)
    run = SimpleNamespace(args=SimpleNamespace(hparams="embedded", eval_problems=2, test_problems=3,
                                               seed=0))
    per_level = lambda split: [sum(p["level"] == k for p in validate.problems_for(run, split))
                               for k in range(1, 6)]
    assert (per_level("validation"), per_level("test")) == ([2] * 5, [3] * 5)
    run.args.test_problems = 0
    assert validate.problems_for(run, "test") == []


def test_greedy_evaluation_streams_eval_batch_size_problems_per_call(monkeypatch, tmp_path):
    """--eval-batch-size (embedded default 128) reaches the greedy validation and test calls."""
    from e2h.flags import get_args
    assert get_args(["--algo", "dpo"]).eval_batch_size == 128
    assert get_args(["--algo", "sft", "--eval-batch-size", "4"]).eval_batch_size == 4
    calls = []

    def sample(run, policy, problems, n, key, temperature=None, batch_size=None):
        calls.append((len(problems), n, temperature, batch_size))
        return []
    monkeypatch.setattr(validate, "sample", sample)
    run = SimpleNamespace(args=SimpleNamespace(hparams="embedded", eval_problems=1, test_problems=2,
                                               seed=0, eval_batch_size=7), out=tmp_path)
    validate.graded(run, None, "validation")
    validate.graded(run, None, "test")
    assert calls == [(5, 1, 0.0, 7), (10, 1, 0.0, 7)]
