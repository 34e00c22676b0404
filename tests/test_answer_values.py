"""Comparing answer values (e2h.grader.answer_values): decimals to the digits they show, exact
rationals exactly, equations up to a factor."""
import cmath

from e2h.grader.answer_values import equations_equal, values_equal
from e2h.grader.latex_eval import evaluate


def test_decimal_rule():
    # 1/3 - 0.333333 = 1/3000000 = 3.3e-7 <= 5e-7: equal to the six digits shown
    assert values_equal("0.333333", r"\frac{1}{3}")
    assert not values_equal("0.33333", r"\frac{1}{3}")  # five significant digits: too few
    assert not values_equal("1000001.0", "1000000")  # 1 > 0.05, half a unit in the first place
    assert values_equal("1000000.0", "1000000")  # exact
    # pi = 3.14159265...: 3.141593 is within 5e-7, 3.141592 is 6.5e-7 away
    assert values_equal("3.141593", r"\pi") and not values_equal("3.141592", r"\pi")
    assert values_equal("0.3333333", "0.333333")  # the shorter decimal is the rounded one
    assert values_equal("x", "2") is False and values_equal("odd", "2") is None


def test_close_values_of_exact_rationals_differ():
    assert not values_equal(r"\frac{1}{3}", r"\frac{333333333}{1000000000}")
    assert not values_equal("99940010", "99940009")


def test_equations_equal_up_to_a_factor():
    assert equations_equal("2x+2y=4", "x+y=2")
    assert equations_equal("y=2x+3", "2x-y=-3")  # factor -1
    assert not equations_equal("x+y=2", "x+y=3")
    assert equations_equal("1=1", "2=2") is None  # no variable: nothing to compare
    assert cmath.isclose(evaluate("(2x+2y)-(4)")[0], 2 * evaluate("(x+y)-(2)")[0])
