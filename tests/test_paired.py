"""Paired differences over problems and their bootstrap interval (e2h/paired.py) on hand-made
results."""
import numpy as np
import pytest

from e2h.paired import bootstrap, greedy_difference


def rec(pid, level, correct):
    return {"id": pid, "level": level, "correct": correct}


def test_bootstrap_interval_by_hand():
    # constant differences: every resample gives the mean over seeds, (10 + 30) / 2 points
    parts = [[(np.full(5, 0.1), +1)], [(np.full(5, 0.3), +1)]]
    assert bootstrap(parts) == pytest.approx((20.0, 20.0))
    assert bootstrap([[(np.full(5, 0.1), -1)]]) == pytest.approx((-10.0, -10.0))
    # 200 right and 200 wrong: standard error sqrt(.25 / 400) = 2.5 points, 95% about +-4.9
    x = np.array([1.0, 0.0] * 200)
    lo, hi = bootstrap([[(x, +1)]])
    assert (hi - lo) / 2 == pytest.approx(1.96 * 2.5, abs=0.4)
    assert (lo + hi) / 2 == pytest.approx(50.0, abs=0.5)


# 10 problems graded both times, listed in a different order each time, plus one ungraded
# problem and one graded only before. Per problem, after minus before:
#   easy e1..e4 (levels 1-3):  +1 +1  0  0               mean 2/4 = +50 points
#   hard h1..h6 (levels 4-5):  +1  0  0  0 -1  0         mean 0/6 =   0 points
#   all ten:                   (2 + 0) / 10              mean       +20 points
BEFORE = [rec("e1", 1, False), rec("e2", 2, False), rec("e3", 3, True), rec("e4", 1, True),
          rec("h1", 4, False), rec("h2", 5, False), rec("h3", 4, False), rec("h4", 5, True),
          rec("h5", 4, True), rec("h6", 5, False), rec("u", 2, None), rec("x", 4, True)]
AFTER = [rec("h6", 5, False), rec("u", 2, None), rec("h5", 4, False), rec("e4", 1, True),
         rec("h4", 5, True), rec("e3", 3, True), rec("h3", 4, False), rec("e2", 2, True),
         rec("h2", 5, False), rec("e1", 1, True), rec("h1", 4, True)]


def test_greedy_difference_by_hand():
    got = {k: greedy_difference(BEFORE, AFTER, k) for k in ("easy", "hard", "all")}
    assert {k: (d["diff"], d["problems"]) for k, d in got.items()} == {
        "easy": (pytest.approx(50.0), 4), "hard": (pytest.approx(0.0), 6),
        "all": (pytest.approx(20.0), 10)}
    for d in got.values():
        assert -100.0 <= d["lo"] <= d["diff"] <= d["hi"] <= 100.0
    # all ten: only 3 of 10 problems differ (sd of the differences 0.51, 20 +- 32 points by the
    # normal approximation): the interval reaches below 0
    assert got["all"]["lo"] < 0.0 < 20.0 < got["all"]["hi"]
    # before and after swapped: the same resamples (seed 0) of the negated differences, so
    # exactly the mirror image: -diff and (-hi, -lo)
    for k, d in got.items():
        back = greedy_difference(AFTER, BEFORE, k)
        assert (back["diff"], back["lo"], back["hi"]) == (-d["diff"], -d["hi"], -d["lo"])


def test_zero_variance_gives_a_zero_width_interval():
    # every easy problem goes from wrong to right (+100 on each), every hard one is unchanged
    before = [rec("a", 1, False), rec("b", 2, False), rec("c", 4, True), rec("d", 5, False)]
    after = [rec("d", 5, False), rec("c", 4, True), rec("b", 2, True), rec("a", 1, True)]
    easy, hard = (greedy_difference(before, after, k) for k in ("easy", "hard"))
    assert (easy["diff"], easy["lo"], easy["hi"]) == pytest.approx((100.0, 100.0, 100.0))
    assert (hard["diff"], hard["lo"], hard["hi"]) == pytest.approx((0.0, 0.0, 0.0))
    # no problem of a split graded both times: nothing to measure, not an error
    none = greedy_difference(before, [rec("x", 1, True)], "easy")
    assert none["problems"] == 0 and np.isnan([none["diff"], none["lo"], none["hi"]]).all()
