"""Whether two LaTeX answers have equal values (``e2h.grader.latex_eval``), by a rule that respects
what was written; used by ``e2h.grader``.

- Exact rationals are equal only exactly: `\\frac{2}{4}` = `0.5`, but `1000001` != `1000000`
  and `\\frac13` != `\\frac{333333}{1000000}` however close.
- A lone decimal matches another value to the digits it shows: within half a unit in its last
  place, and only when it shows at least ``MIN_SIGNIFICANT`` significant digits, since fewer
  say "rounded", not "equal": `0.333333` = `\\frac13` (|diff| = 3.3e-7 <= 5e-7), `0.33` !=
  `\\frac13`, `1000001.0` != `1000000` (|diff| = 1 > 0.05), `1.00` != `1 + \\frac{1}{4036081}`.
- Other values (irrational, complex, expressions in variables at every point) are equal within
  a relative ``REL_TOL`` = 1e-9: float64 evaluation errs by ~1e-16, and two different MATH
  answers are never that close.
"""
import re
from fractions import Fraction

from e2h.grader.latex_eval import N_POINTS, evaluate
from e2h.grader.latex_ops import ZERO_TOL

REL_TOL = 1e-9
MIN_SIGNIFICANT = 6   # a decimal with fewer digits only equals exactly: 0.33 is not 1/3

_DECIMAL = re.compile(r"[-+]?(\d*)\.(\d+)")


def _close(u, v) -> bool:
    """|u - v| <= REL_TOL * max(|u|, |v|), or both within ZERO_TOL of 0 (float noise)."""
    try:
        u, v = complex(u), complex(v)
    except OverflowError:  # an exact rational beyond the float range
        return False
    scale = max(abs(u), abs(v))
    return abs(u - v) <= REL_TOL * scale or scale <= ZERO_TOL


def _decimal_match(literal: str, other) -> bool:
    """A decimal equals `other` to the digits it shows: |x - other| <= half a unit in its last
    place, and only when it shows at least MIN_SIGNIFICANT significant digits."""
    m = _DECIMAL.fullmatch(literal)
    digits = (m.group(1) + m.group(2)).lstrip("0")
    if len(digits) < MIN_SIGNIFICANT:
        return False
    half_unit = Fraction(1, 2 * 10 ** len(m.group(2)))
    if isinstance(other, Fraction):
        return abs(Fraction(literal) - other) <= half_unit
    other = complex(other)
    return abs(other.imag) <= ZERO_TOL and abs(float(Fraction(literal)) - other.real) <= \
        float(half_unit) * (1 + 1e-12)


def values_equal(a: str, b: str) -> bool | None:
    """Whether expressions a and b have equal values (module docstring); None when either is
    not evaluated."""
    x, y = evaluate(a), evaluate(b)
    if x is None or y is None:
        return None
    if len(x) == len(y) == 1:
        u, v = x[0], y[0]
        if isinstance(u, Fraction) and isinstance(v, Fraction) and u == v:
            return True
        da, db = _DECIMAL.fullmatch(a), _DECIMAL.fullmatch(b)
        if da or db:  # the literal showing fewer decimals is the rounded one
            if da and db and len(db.group(2)) < len(da.group(2)):
                return _decimal_match(b, u)
            return _decimal_match(a, v) if da else _decimal_match(b, u)
        if isinstance(u, Fraction) and isinstance(v, Fraction):
            return False
        return _close(u, v)
    return all(_close(u, v) for u, v in zip(x * N_POINTS if len(x) == 1 else x,
                                             y * N_POINTS if len(y) == 1 else y))


def equations_equal(a: str, b: str) -> bool | None:
    """Whether equations a = `l1 = r1` and b = `l2 = r2` are the same: l1 - r1 proportional to
    l2 - r2 by one nonzero factor at every variable point; None without variables."""
    x, y = (evaluate("(" + s.replace("=", ")-(") + ")") for s in (a, b))
    if x is None or y is None or len(x) == 1 or len(y) == 1:
        return None
    try:
        ratios = [complex(u) / complex(v) for u, v in zip(x, y)]
    except ZeroDivisionError:
        return None
    return abs(ratios[0]) > ZERO_TOL and all(_close(r, ratios[0]) for r in ratios[1:])
