"""MATH answer grader: a hand-written equivalence table, extraction, and the real MATH500 file."""
import json
import re
from pathlib import Path

import pytest

from e2h.grader import extract_answer, grade_answer, normalize_answer

MATH500 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "math" / "math500_test.jsonl"

EQUAL = [
    # fractions: \dfrac / \tfrac / unbraced arguments / a/b / decimals
    (r"\dfrac{1}{2}", r"\frac{1}{2}"),
    (r"\tfrac{3}{4}", r"\frac34"),
    (r"\frac12", r"\frac{1}{2}"),
    (r"\frac 59", r"\frac{5}{9}"),
    (r"\frac9{19}", r"\frac{9}{19}"),
    (r"\frac{270}7", r"\frac{270}{7}"),
    ("1/2", r"\frac{1}{2}"),
    ("0.5", r"\frac{1}{2}"),  # 1/2 = 0.5 exactly
    (".5", "0.5"),
    ("-.25", r"-\frac{1}{4}"),
    (r"\frac{-33}{2}", r"-\frac{33}{2}"),
    (r"\frac{2}{4}", r"\frac{1}{2}"),  # equal rationals, not equal strings
    ("0.3333333", r"\frac{1}{3}"),  # |0.3333333 - 1/3| = 3.3e-8 <= 1e-6 * 1/3
    (r"1\frac{4}{5}", r"\frac{9}{5}"),  # mixed number 1 + 4/5
    (r"137 \frac{1}{2}", "137.5"),
    (r"\sqrt3/2", r"\frac{\sqrt{3}}{2}"),
    # integers vs decimals
    ("5", "5.0"),
    ("5", "5.00"),
    ("-3", "- 3"),
    ("−3", "-3"),  # unicode minus
    # roots
    (r"\sqrt2", r"\sqrt{2}"),
    (r"11\sqrt2", r"11 \sqrt{2}"),
    (r"\frac{\sqrt 3}{3}", r"\frac{\sqrt{3}}{3}"),
    # LaTeX decoration: $, \boxed, \left/\right, spacing macros, trailing period
    ("$5$", "5"),
    (r"\boxed{5}", "5"),
    (r"The answer is $\boxed{\frac{1}{2}}$.", r"\frac12"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
    (r"2\!\sqrt{3}", r"2\sqrt{3}"),
    (r"2\,\sqrt{3}", r"2\sqrt{3}"),
    ("12.", "12"),
    # units, degrees, percent, money
    (r"5\text{ cm}", "5"),
    (r"864 \mbox{ inches}^2", "864"),
    (r"18\text{ ways.}", "18"),
    ("12 square units", "12"),
    (r"90^\circ", "90"),
    (r"50^{\circ}", "50"),
    (r"20\%", "20"),
    (r"\$18.90", "18.9"),
    (r"\text{(C)}", "C"),
    (r"\text{Evelyn}", "Evelyn"),
    # variable prefixes
    ("x = 5", "5"),
    ("y=-2x", "-2x"),
    (r"k = \frac{-33}{2}", r"-\frac{33}{2}"),
    (r"x \in [-2,7]", "[-2,7]"),
    # thousands separators
    ("1,000", "1000"),
    (r"10,\!080", "10080"),
    (r"11,\! 111,\! 111,\! 100", "11111111100"),
    (r"90{,}900{,}909", "90900909"),
    (r"\$115,000", "115000"),
    # tuples, intervals, sets, lists, unions, matrices
    ("(1,2)", "(1, 2)"),
    (r"\left(\frac{3}{5},\frac{8}{3}\right]", r"(\frac35, \frac83]"),
    ("(0.5, 3)", r"(\frac{1}{2},3)"),  # element-wise numeric comparison
    (r"(-\infty, 0]", r"(-\infty,0]"),
    (r"(-\infty, 2) \cup (3, \infty)", r"(-\infty,2)\cup(3,\infty)"),
    (r"\{4,5,7\}", r"\{7,4,5\}"),  # a set: order does not matter
    ("1,-2", "-2, 1"),  # "all solutions, separated by commas": order does not matter
    (r"19 \text{ and }43", "19, 43"),
    (r"\begin{pmatrix} -1/3 \\ 2/3 \end{pmatrix}", r"\begin{pmatrix} -\frac{1}{3} \\ \frac23 \end{pmatrix}"),
    # symbols kept symbolic
    (r"2\pi", r"2 \pi"),
    (r"\infty", r"\infty"),
    ("4210_{5}", "4210_5"),
]

UNEQUAL = [
    ("5", "-5"),  # sign
    ("5", "6"),
    ("0.33", r"\frac{1}{3}"),  # |0.33 - 1/3| = 3.3e-3 > 1e-6 * 1/3
    (r"\frac{1}{2}", r"\frac{1}{3}"),
    ("(1,2)", "[1,2]"),  # an open interval is not a closed one
    ("(1,2]", "(1,2)"),
    ("(1,2)", "(2,1)"),  # a point/tuple is ordered
    ("(1,2)", "(1,2,3)"),
    ("1,2", "(1,2)"),  # a list is not a point
    ("(1,2)", "12"),  # a tuple is not a thousands-separated number
    ("1, 000", "1000"),  # a comma and a space: a list, not a thousands separator
    (r"\pi", "3.14159"),  # \pi is never evaluated
    (r"2\pi", "2"),
    (r"\sqrt{8}", r"2\sqrt{2}"),  # no symbolic simplification: conservative
    (r"\sqrt{2}", "2"),
    ("2 pi", "2"),  # `pi` is not a unit word
    (r"\infty", r"-\infty"),
    ("x+1", "x-1"),
    (r"\text{odd}", r"\text{even}"),
    ("52_8", "52"),  # a base subscript is not a unit
    ("5", ""),
    (r"(-\infty,2)\cup(3,\infty)", r"(-\infty,2)\cup[3,\infty)"),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 1 & 2 \end{pmatrix}"),
    ("a-b/2", r"\frac{a-b}{2}"),
]


@pytest.mark.parametrize("given,truth", EQUAL)
def test_equal_pairs(given, truth):
    assert grade_answer(given, truth)
    assert grade_answer(truth, given)


@pytest.mark.parametrize("given,truth", UNEQUAL)
def test_unequal_pairs(given, truth):
    assert not grade_answer(given, truth)
    assert not grade_answer(truth, given)


def test_none_is_never_correct():
    assert not grade_answer(None, "5")
    assert not grade_answer("5", None)


def test_normalize_examples():
    assert normalize_answer(r"\dfrac12") == r"\frac{1}{2}"
    assert normalize_answer(r"\$ 1,000.50") == "1000.50"
    assert normalize_answer(r"\left[ \frac 12, 3 \right)") == r"[\frac{1}{2},3)"


EXTRACT = [
    ("Step one.\n\n# Answer\n\n468", "468"),
    ("a\n\n# Answer\n\n468</s>", "468"),  # EOS written as text ends the answer
    ("# Answer\n\n1\n\nmore\n\n# Answer\n\n2", "2"),  # the last heading wins
    (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"$\boxed{1}$ then $\boxed{\{1,2\}}$", r"\{1,2\}"),  # the last box, escaped braces
    (r"$\boxed{\left( 3, \frac{\pi}{2} \right)}.$", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"the answer is $\boxed 5$.", "5"),
    (r"\fbox{7} was found", "7"),
    ("# Answer\n\n", None),  # an empty answer section and no box
    (r"$\boxed{\frac{1}{2}$", None),  # unbalanced braces
    ("no answer here", None),
    ("# Answers are below: 5", None),  # not a heading
]


@pytest.mark.parametrize("text,expected", EXTRACT)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def _math500():
    if not MATH500.exists():
        pytest.skip(f"{MATH500} not found")
    return [json.loads(line) for line in MATH500.read_text().splitlines()]


def test_math500_answer_field_matches_boxed_solution():
    rows = _math500()
    extracted = [extract_answer(row["solution"]) for row in rows]
    agree = [grade_answer(e, row["answer"]) for e, row in zip(extracted, rows)]
    exceptions = [row["unique_id"] for row, ok in zip(rows, agree) if not ok]
    assert len(rows) == 500
    assert exceptions == []  # rate 500/500 >= 0.99
    # the answer field was made from the last box, so extraction reproduces it character for character
    assert sum(e == row["answer"] for e, row in zip(extracted, rows)) == 500


def test_math500_answers_survive_rewriting():
    """Every reference answer still grades equal after cosmetic rewriting a model might do."""
    rows = _math500()
    rewrites = [
        lambda a: f"${a}$",
        lambda a: rf"\boxed{{{a}}}",
        lambda a: a + ".",
        lambda a: a.replace(r"\frac", r"\dfrac"),
        lambda a: " ".join(re.split(r"(?<=[{}()\[\]+=])", a)),  # a space after brackets, + and =
    ]
    failures = [(row["answer"], i) for row in rows for i, rewrite in enumerate(rewrites)
                if not grade_answer(rewrite(row["answer"]), row["answer"])]
    assert failures == []


def test_math500_different_problems_mostly_unequal():
    rows = _math500()
    answers = [row["answer"] for row in rows]
    pairs = list(zip(answers, answers[1:] + answers[:1]))
    equal = [(a, b) for a, b in pairs if grade_answer(a, b)]
    # neighbours agree only where the answers really are the same value (e.g. two problems answering 2)
    assert all(normalize_answer(a) == normalize_answer(b) or a.strip("$") == b for a, b in equal)
    assert len(equal) / len(pairs) < 0.05
