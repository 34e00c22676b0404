"""The study's problem-level statistics (study.paired, study.report.verdict) on hand-made hits;
e2h/paired.py's bootstrap itself: tests/test_paired.py."""
import json

import numpy as np
import pytest

from e2h.paired import greedy_gap, points
from study.paired import greedy_hits, method_gap, rerank_hits, split_gap
from study.report import consistent, verdict


def test_method_gap_is_per_problem_on_one_split():
    hits = {"split": np.array(["easy", "hard", "hard", "easy"]),
            "weighted": {"4": np.array([1.0, 0.5, 1.0, 0.0])},
            "majority": {"4": np.array([1.0, 0.0, 0.25, 1.0])}}
    (d, sign), = method_gap(hits, "weighted", "majority", "4", "hard")
    assert sign == 1 and d.tolist() == [0.5, 0.75]
    assert points(method_gap(hits, "weighted", "majority", "4", "hard")) == pytest.approx(62.5)
    # All: every problem, (0 + .5 + .75 - 1) / 4 = 6.25 points; reversed order flips the sign
    assert points(method_gap(hits, "weighted", "majority", "4", "all")) == pytest.approx(6.25)
    assert points(method_gap(hits, "majority", "weighted", "4", "all")) == pytest.approx(-6.25)


def test_greedy_gap_pairs_problems_by_id(tmp_path):
    before_file = tmp_path / "start_test.jsonl"
    before_file.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "level": 5, "correct": False}, {"id": "b", "level": 4, "correct": False},
        {"id": "c", "level": 1, "correct": False}, {"id": "d", "level": 5, "correct": True},
        {"id": "u", "level": 5, "correct": None}]))
    before = greedy_hits(before_file)
    assert before == {"a": ("hard", 0.0), "b": ("hard", 0.0), "c": ("easy", 0.0), "d": ("hard", 1.0)}
    after = {"a": ("hard", 1.0), "b": ("hard", 0.0), "c": ("easy", 1.0)}   # d not graded after
    assert points(greedy_gap(after, before, "hard")) == pytest.approx(50.0)     # a +1, b 0
    assert points(greedy_gap(after, before, "all")) == pytest.approx(200 / 3)   # a, b, c
    assert points(greedy_gap(before, after, "hard")) == pytest.approx(-50.0)
    assert greedy_hits(tmp_path / "missing.jsonl") is None


def test_split_gap_is_easy_minus_hard():
    hits = {"1": ("easy", 1.0), "2": ("easy", 1.0), "3": ("easy", 0.0), "4": ("easy", 1.0),
            "5": ("hard", 0.0), "6": ("hard", 1.0)}
    assert points(split_gap(hits)) == pytest.approx(75.0 - 50.0)


def test_a_consistent_mean_with_an_interval_across_zero_does_not_count():
    # both seeds +5 points (std 0), but from 3 gains and 2 losses among 20 problems each
    d = np.array([1.0] * 3 + [-1.0] * 2 + [0.0] * 15)
    found = verdict("F", "claim", [0.0, 0.0], consistent, [[(d, +1)], [(d, +1)]])
    assert "+5.0 ± 0.0 points (per seed: +5.0, +5.0; 95% over problems [" in found["value"]
    assert found["interval"][0] < 0 < found["interval"][1] and found["reproduced"] is False
    # the same gain on every one of 20 problems: the interval is [5, 5] and it counts
    sure = verdict("F", "claim", [0.0, 0.0], consistent, [[(np.full(20, 0.05), +1)]] * 2)
    assert sure["interval"] == pytest.approx((5.0, 5.0)) and sure["reproduced"] is True
    # without problem-level numbers the rule falls back to the seeds alone
    assert verdict("F", "claim", [1.0, 3.0], consistent)["reproduced"] is True    # 2 > 1
    assert verdict("F", "claim", [-1.0, 3.0], consistent)["reproduced"] is False  # 1 < 2


def test_rerank_hits_reads_per_problem_rates(tmp_path):
    path = tmp_path / "rerank.json"
    path.write_text(json.dumps({
        "prm": {"problems": [{"id": "x", "split": "easy"}, {"id": "y", "split": "hard"}],
                "per_problem": {"majority": {"1": [0.5, 0.0]}, "weighted": {"1": [0.5, 1.0]}}},
        "generator": {"within_auc": {}}}))
    hits = rerank_hits(path)
    assert set(hits) == {"prm"} and hits["prm"]["split"].tolist() == ["easy", "hard"]
    assert points(method_gap(hits["prm"], "weighted", "majority", "1", "hard")) == pytest.approx(100.0)


def test_f3_claims_easy_and_hard_for_prm_rewarded_rl_and_ppo_at_least_outcome_ppo():
    from study.report import findings
    hits = lambda easy, hard: {"e1": ("easy", easy[0]), "e2": ("easy", easy[1]),
                               "h1": ("hard", hard[0]), "h2": ("hard", hard[1])}
    start = hits((0.0, 0.0), (0.0, 0.0))   # every run starts from the same SFT policy
    proof = {"ppo/start": start, "ppo/final": hits((1.0, 1.0), (1.0, 1.0)),       # +100 / +100
             "grpo/start": start, "grpo/final": hits((1.0, 1.0), (0.0, 0.0)),     # +100 / 0
             "ppo_outcome/start": start, "ppo_outcome/final": hits((0.0, 0.0), (1.0, 0.0)),
             "dpo/start": start, "dpo/final": hits((1.0, 1.0), (1.0, 1.0))}      # rest: none
    cell = {n: {"hard": 30.0, "all": 40.0} for n in ("4",)}
    seed = {"rerank": {ev: {m: cell for m in ("majority", "weighted", "best_of_n")}
                       for ev in ("orm", "prm", "oprm")},
            "table1": {"sft_easy": {"greedy": {"easy": 50.0, "hard": 30.0}}},
            "table2": {"sft_easy": {"easy": 40.0, "hard": 20.0}, "ppo": {"easy": 0.0, "hard": 0.0},
                       "ppo_outcome": {"easy": 0.0, "hard": 0.0}, "grpo": {"easy": 0.0, "hard": 0.0},
                       "dpo": {"easy": 0.0, "hard": 0.0}, "rest": {"easy": 45.0, "hard": 25.0}}}
    found = {f["name"]: f for f in findings([seed, seed], {"n": 4}, [proof, proof])}
    value = lambda name: float(found[name]["value"].split(" ± ")[0])
    # the problem-level evidence wins over the tables: final minus start on the same problems
    assert (value("F3 ppo easy"), value("F3 ppo hard")) == (100.0, 100.0)
    assert found["F3 ppo easy"]["reproduced"] is True and found["F3 ppo hard"]["reproduced"] is True
    # GRPO: Easy up, Hard unchanged (0 is not above its std of 0): the claim fails on Hard only
    assert (value("F3 grpo easy"), value("F3 grpo hard")) == (100.0, 0.0)
    assert found["F3 grpo easy"]["reproduced"] is True and found["F3 grpo hard"]["reproduced"] is False
    # DPO, PPO on easy answers and ReST-EM are comparisons, whatever they gain
    assert value("F3 dpo hard") == 100.0 and found["F3 dpo hard"]["reproduced"] is None
    assert value("F3 ppo_outcome hard") == 50.0 and found["F3 ppo_outcome hard"]["reproduced"] is None
    # ReST-EM has no problem-level files here: the tables' 25 - 20 on both seeds, no interval
    assert found["F3 rest hard"]["value"] == "+5.0 ± 0.0 points (per seed: +5.0, +5.0)"
    assert found["F3 rest hard"]["reproduced"] is None
    # PPO against PPO on easy answers, both finals on Hard: h1 1 - 1, h2 1 - 0 -> +50 (>= 0)
    vs = found["F3 ppo vs ppo_outcome hard"]
    assert value("F3 ppo vs ppo_outcome hard") == 50.0 and vs["reproduced"] is True
    flipped = dict(proof, **{"ppo/final": hits((1.0, 1.0), (0.0, 0.0))})   # h1 0 - 1, h2 0 - 0
    worse = {f["name"]: f for f in findings([seed, seed], {"n": 4}, [flipped, flipped])}
    assert worse["F3 ppo vs ppo_outcome hard"]["value"].startswith("-50.0 ± 0.0")
    assert worse["F3 ppo vs ppo_outcome hard"]["reproduced"] is False
