"""MATH final-answer extraction and equivalence, without a computer-algebra system.

docs/paper.md, "Text format" / "Grading": the final answer is the text after the last `# Answer`
heading (else the last `\\boxed{}`), compared with the reference answer under MATH
normalization. The same grader gives the final-answer reward of the RL methods on easy problems.

Two answers are equal when, in this order (each step cheap before the next):
1. their normal forms (``e2h.grader.answer_normalize``) are the same string;
2. their structures match element by element: `\\cup` unions and tuples / intervals in order
   with the same brackets (`(1,2]` is not `[1,2]`), matrices cell by cell, sets `\\{..\\}` and bare
   comma lists ("enter all solutions") in any order, `a \\pm b` counting as the list `a+b, a-b`;
3. an equation `lhs = value` against a value: its value (`\\frac{b_1}{b_2}=\\frac32` is `\\frac32`);
   two equations: the same up to a nonzero factor (`2x+2y=4` is `x+y=2`);
4. their values are equal (``latex_eval``, ``answer_values``): exact for rationals, a
   decimal to the digits it shows, expressions with `\\pi`, roots and variables numerically
   (`\\frac{4\\pi}{3}` = `\\frac43\\pi`).

Deliberately conservative: what cannot be evaluated is compared as a string only, so errors
lean towards rejecting correct answers. Hostile input is bounded: answers over
``answer_normalize.MAX_CHARS`` characters are compared as raw strings, nesting over
``MAX_DEPTH`` as strings, lists over ``MAX_LIST`` elements as multisets of strings.
"""

import re
from collections import Counter

from e2h.grader.answer_normalize import MAX_CHARS, boxed_arguments, normalize_answer, top_level
from e2h.grader.answer_values import equations_equal, values_equal

__all__ = ["extract_answer", "normalize_answer", "equivalent", "grade_answer"]

MAX_DEPTH = 8
MAX_LIST = 64

_EOS_TEXT = "</s>"
_ANSWER_HEADING = re.compile(r"(?:^|\n)[ \t]*# Answer[ \t]*(?=\n|$)")
# between two boxes of one answer: `$\boxed{2}$ and $\boxed{3}$`, `\boxed{2}, x = \boxed{3}`
_BOX_JOINER = re.compile(r"[\s$]*(?:,|and|,\s*and|\\text\{\s*and\s*\})?[\s$]*"
                         r"(?:[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*)?[\s$]*")
_INTEGER = re.compile(r"-?\d{1,50}")
_MATRIX = re.compile(r"\\begin\{[pbv]?matrix\}(.*)\\end\{[pbv]?matrix\}")
_LEADING_PLUS = re.compile(r"^\+|(?<=[(,{=])\+")  # `+\sqrt5` from `\pm\sqrt5` -> `\sqrt5`


def _final_boxes(text: str) -> str | None:
    """The last box of text, with the boxes just before it that list the same answer
    (`the roots are $\\boxed{2}$ and $\\boxed{3}$` -> `2, 3`); `\\boxed{a}$ or $\\boxed{b}`, MATH's
    way of giving one answer in two forms, stays `b`."""
    boxes = boxed_arguments(text)
    if not boxes:
        return None
    k = len(boxes) - 1
    while k > 0 and _BOX_JOINER.fullmatch(text[boxes[k - 1][1] : boxes[k][0]]):
        k -= 1
    return ", ".join(arg for _, _, arg in boxes[k:])


def extract_answer(text: str) -> str | None:
    """The final answer of a solution: after the last `# Answer` heading, else the last box(es).

    The answer section runs to the end of the text or to an `</s>` written as text; an empty
    section falls back to the boxes. Returns None when neither is present.
    """
    headings = list(_ANSWER_HEADING.finditer(text))
    if headings:
        answer = text[headings[-1].end() :].split(_EOS_TEXT)[0].strip()
        if answer:
            return answer
    return _final_boxes(text)


# ---------------------------------------------------------------------------- structure

def _brackets(s: str) -> tuple[str, str, str] | None:
    """(open, inner, close) when s is one bracketed group: `(..)`, `[..)`, `\\{..\\}`."""
    if s.startswith(r"\{") and s.endswith(r"\}"):
        inner = s[2:-2]
        return (r"\{", inner, r"\}") if len(top_level(inner, r"\}")) == 1 else None
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return None
    depth = 0
    for i, c in enumerate(s):  # the opening bracket must close at the very end
        depth += c in "([{"
        depth -= c in ")]}"
        if depth == 0 and i < len(s) - 1:
            return None
    return s[0], s[1:-1], s[-1]


def _matrix(s: str) -> list[list[str]] | None:
    m = _MATRIX.fullmatch(s)
    if m is None:
        return None
    return [row.split("&") for row in m.group(1).split(r"\\")]


def _expand_pm(s: str) -> list[str]:
    """`1\\pm\\sqrt{19}` -> [`1+\\sqrt{19}`, `1-\\sqrt{19}`]; every `\\pm` of one element takes the
    same sign and `\\mp` the other, as in `\\frac{-b\\pm\\sqrt{d}}{2a}`."""
    if r"\pm" not in s and r"\mp" not in s:
        return [s]
    plus = s.replace(r"\pm", "+").replace(r"\mp", "-")
    minus = s.replace(r"\pm", "-").replace(r"\mp", "+")
    return [_LEADING_PLUS.sub("", t) for t in (plus, minus)]


def _elements(s: str) -> list[str]:
    return [t for part in top_level(s, ",") for t in _expand_pm(part)]


def _all_equal(xs: list[str], ys: list[str], depth: int) -> bool:
    return len(xs) == len(ys) and all(_equivalent(x, y, depth) for x, y in zip(xs, ys))


def _unordered_equal(xs: list[str], ys: list[str], depth: int) -> bool:
    if len(xs) != len(ys):
        return False
    if len(xs) > MAX_LIST:
        return Counter(xs) == Counter(ys)
    left = list(ys)
    for x in xs:
        match = next((i for i, y in enumerate(left) if _equivalent(x, y, depth)), None)
        if match is None:
            return False
        left.pop(match)
    return True


# ---------------------------------------------------------------------------- equivalence

def equivalent(a: str, b: str) -> bool:
    """Equivalence of two answers already passed through ``normalize_answer`` (recursive over
    structure; rules in the module docstring). Voting normalizes each distinct answer once and
    compares forms with this."""
    return _equivalent(a, b, 0)


def _equivalent(a: str, b: str, depth: int) -> bool:
    if a == b:
        return True
    if depth > MAX_DEPTH or not a or not b or max(len(a), len(b)) > MAX_CHARS:
        return False
    if _INTEGER.fullmatch(a) and _INTEGER.fullmatch(b):  # most MATH answers: no parsing
        return int(a) == int(b)
    depth += 1
    sides_a, sides_b = top_level(a, "="), top_level(b, "=")
    if (len(sides_a) > 1) != (len(sides_b) > 1):  # `lhs = value` against a value of any kind
        equation = a if len(sides_a) > 1 else b
        if len(top_level(equation, ",")) == 1:  # not a list of equations `x=1,y=2`
            return _equivalent(sides_a[-1], sides_b[-1], depth)
    unions_a, unions_b = top_level(a, r"\cup"), top_level(b, r"\cup")
    if len(unions_a) > 1 or len(unions_b) > 1:
        return _all_equal(unions_a, unions_b, depth)
    ma, mb = _matrix(a), _matrix(b)
    if ma is not None or mb is not None:
        return (ma is not None and mb is not None and len(ma) == len(mb)
                and all(_all_equal(ra, rb, depth) for ra, rb in zip(ma, mb)))
    ba, bb = _brackets(a), _brackets(b)
    if ba is not None and bb is not None:
        if (ba[0], ba[2]) != (bb[0], bb[2]):  # `(1,2]` is not `[1,2]`
            return False
        if ba[0] == r"\{":  # a set: element order does not matter
            return _unordered_equal(_elements(ba[1]), _elements(bb[1]), depth)
        return _all_equal(top_level(ba[1], ","), top_level(bb[1], ","), depth)
    if ba is not None or bb is not None:
        (bracket, inner, _), other = (ba, b) if ba is not None else (bb, a)
        if bracket == r"\{":  # a set against a bare list of its elements
            return _unordered_equal(_elements(inner), _elements(other), depth)
        if len(top_level(inner, ",")) > 1:  # a point or an interval is not a list
            return False
    xs, ys = _elements(a), _elements(b)
    if len(xs) > 1 or len(ys) > 1:
        # a bare list answers "enter all solutions, separated by commas": order does not matter
        return _unordered_equal(xs, ys, depth)
    return _scalars_equal(a, b, depth)


def _scalars_equal(a: str, b: str, depth: int) -> bool:
    """One value each, or two equations: rules 3 and 4 of the module docstring."""
    sides_a, sides_b = top_level(a, "="), top_level(b, "=")
    if len(sides_a) > 1 and len(sides_b) > 1:
        same = len(sides_a) == len(sides_b) == 2 and equations_equal(a, b)
        return bool(same) or _all_equal(sides_a, sides_b, depth)
    return bool(values_equal(a, b))


def grade_answer(given: str | None, truth: str | None) -> bool:
    """True when the answer `given` is equivalent to the reference answer `truth`."""
    if given is None or truth is None:
        return False
    a, b = normalize_answer(given), normalize_answer(truth)
    return bool(a) and bool(b) and equivalent(a, b)
