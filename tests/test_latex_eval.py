"""Values of LaTeX expressions (e2h.grader.latex_eval): exact where rational, float64 references
else."""
import math
from fractions import Fraction

import pytest

from e2h.grader.latex_eval import N_POINTS, _point, evaluate

EXACT = [
    ("-2(1009)^2", Fraction(-2036162)),  # 1009^2 = 1018081
    (r"\frac{2}{4}", Fraction(1, 2)),
    ("0.125", Fraction(1, 8)),
    (r"2\frac{1}{2}", Fraction(5, 2)),  # a mixed number, not 2 * 1/2
    (r"2\cdot\frac{1}{2}", Fraction(1)),
    (r"\sqrt{\frac{9}{4}}", Fraction(3, 2)),
    (r"\sqrt[3]{-8}", Fraction(-2)),
    (r"8^{2/3}", Fraction(4)),  # (8^(1/3))^2
    (r"10^{-3}", Fraction(1, 1000)),
    ("2^10", Fraction(1024)),
    ("-2^2", Fraction(-4)),  # the power binds tighter than the sign
    ("2^-1", Fraction(1, 2)),
    ("1/2/2", Fraction(1, 4)),  # left to right
    (r"6 \div 4", Fraction(3, 2)),
    ("3(2+1)", Fraction(9)),
    ("5!", Fraction(120)),
    (r"\binom{6}{3}", Fraction(20)),
    ("|-7|", Fraction(7)),
    (r"\lfloor\frac{7}{2}\rfloor", Fraction(3)),
    (r"\lceil\frac{7}{2}\rceil", Fraction(4)),
    (r"\lceil 3.0000000001 \rceil", Fraction(4)),  # exact: no float doubt
    (r"\lceil\log_2 10\rceil", Fraction(4)),  # log2(10) = 3.32 (float), far from an integer
    (r"\frac{1}{2004!}", Fraction(1, math.factorial(2004))),
]


@pytest.mark.parametrize("text,value", EXACT)
def test_rational_values_are_exact(text, value):
    (got,) = evaluate(text)
    assert isinstance(got, Fraction) and got == value


FLOAT = [
    (r"\frac{4\pi}{3}", 4 * math.pi / 3),
    (r"\frac12\pi", math.pi / 2),  # `\frac12`: one character per unbraced argument
    (r"12\sqrt{13}", 12 * math.sqrt(13)),
    (r"\frac{1}{2\sqrt{2}+3}", 1 / (2 * math.sqrt(2) + 3)),
    (r"\sqrt[3]{-2}", -(2 ** (1 / 3))),  # the real cube root
    (r"\sqrt{-4}", 2j),
    ("(1+i)^2", 2j),
    (r"\sin\frac{\pi}{6}", 0.5),
    (r"\log_2 8", 3.0),
    (r"\ln 2", math.log(2)),
    (r"\pir^2", None),  # spaces removed by normalization: `\pi r^2`, checked below
]


@pytest.mark.parametrize("text,value", [f for f in FLOAT if f[1] is not None])
def test_irrational_values_match_float64(text, value):
    (got,) = evaluate(text)
    assert abs(complex(got) - value) <= 1e-15 * max(1.0, abs(value))


def test_variables_are_evaluated_at_fixed_points():
    got = evaluate(r"\pir^2")
    want = [math.pi * _point("r", k) ** 2 for k in range(N_POINTS)]
    assert len(got) == N_POINTS
    assert all(abs(g - w) <= 1e-15 * abs(w) for g, w in zip(got, want))
    # each name has its own value at each point, below and above 1
    assert _point("x", 0) != _point("y", 0) and 0.55 < _point("x", 0).real < 0.95
    assert 1.05 < _point("x", 1).real < 1.45


# 2 sin(pi/6) is 1 up to float error: its ceiling (1 or 2?) is refused, not guessed
NOT_EVALUATED = ["odd", "No", r"\infty", "52_8", "1,2", "(1,2", "x=1", r"\frac{1}{0}", "0^{-1}",
                 "10^{10^{10}}", "1000!^{1000}", "2500!^{2}^{2}", "9!!", r"\sqrt[0]{2}",
                 "{" * 50 + "1" + "}" * 50, "1" * 301, r"\lceil 2\sin\frac{\pi}{6} \rceil",
                 r"\unknown{2}", "2+", ""]


@pytest.mark.parametrize("text", NOT_EVALUATED)
def test_not_evaluated(text):
    assert evaluate(text) is None
