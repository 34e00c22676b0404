"""Numeric values of LaTeX answers, for the MATH grader (``e2h.grader``), without computer algebra.

An answer such as `\\frac{4\\pi}{3}`, `-2(1009)^2` or `12\\sqrt{13}` is parsed (recursive descent:
sums, products with or without `\\cdot` / `\\times` / `/`, unary signs, powers, `\\frac`,
`\\sqrt[n]{}`, `\\binom`, `!`, `|x|`, floor and ceiling, a few functions) and evaluated. Two
answers are equal when their values are, by a rule that respects what was written:

- exact rationals (`fractions.Fraction`) wherever the value is rational: integers, decimals
  read as written, fractions, integer powers, roots of perfect powers. `\\frac{2}{4}` = `0.5`, but
  `1000001` != `1000000` however close;
- a lone decimal matches another value to the digits it shows, if it shows at least
  ``MIN_SIGNIFICANT`` significant digits: `0.333333` = `\\frac13` (|diff| <= 5e-7), `0.33` != `\\frac13`,
  `1000001.0` != `1000000`;
- irrational values (`\\pi`, `\\sqrt2`, `i`, functions) as complex floats, equal within a relative
  ``REL_TOL`` = 1e-9 (double rounding is ~1e-16; a different MATH answer is never that close);
- letters are variables: an expression is evaluated at ``N_POINTS`` fixed points, each letter set
  to a value that depends only on its name, so `2x+3` = `3+2x` and `(x+1)^2` = `x^2+2x+1` (the
  classic randomized identity test). `i` is the imaginary unit; a run of four or more letters,
  or an answer made of letters only (`No`, `odd`), is a word, not a product, and is not evaluated.

Anything not understood, and anything too large (long input, deep nesting, an exponent whose
result would exceed ``MAX_BITS`` bits), evaluates to None: the grader then says unequal.
"""
from __future__ import annotations

import cmath
import math
import re
import zlib
from fractions import Fraction
from functools import lru_cache

REL_TOL = 1e-9
ZERO_TOL = 1e-12      # two float values both this close to 0 are equal (e.g. sin(pi) vs 0)
MIN_SIGNIFICANT = 6   # a decimal with fewer digits only equals exactly: 0.33 is not 1/3
MAX_CHARS = 300       # longer inputs are not evaluated
MAX_DEPTH = 40        # nesting of groups and signs
MAX_BITS = 20_000     # size of an exact integer power or factorial (2004! has 19,000 bits)
N_POINTS = 2          # points at which expressions with variables are compared

_TOKEN = re.compile(r"\d+(?:\.\d*)?|\.\d+|\\[a-zA-Z]+|\\.|\S")
_DECIMAL = re.compile(r"[-+]?(\d*)\.(\d+)")
_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "phi", "psi",
          "omega", "rho", "sigma", "tau"}
_FUNCTIONS = {
    "sin": cmath.sin, "cos": cmath.cos, "tan": cmath.tan, "ln": cmath.log, "exp": cmath.exp,
    "sec": lambda z: 1 / cmath.cos(z), "csc": lambda z: 1 / cmath.sin(z),
    "cot": lambda z: 1 / cmath.tan(z), "arcsin": cmath.asin, "arccos": cmath.acos,
    "arctan": cmath.atan, "log": cmath.log10,
}
_COMMANDS = ({"frac", "sqrt", "binom", "pi", "cdot", "times", "div", "lceil", "rceil", "lfloor",
              "rfloor"} | _GREEK | set(_FUNCTIONS))
_PRIMARY_START = set("0123456789.({|\\") | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class _Fail(Exception):
    """The input is not an expression this module evaluates."""


def _tokens(s: str) -> list[str]:
    """Numbers, commands and single characters; `\\pir` (spaces removed) reads as `\\pi r`."""
    out = []
    for tok in _TOKEN.findall(s):
        if tok[0] == "\\" and tok[1:].isalpha() and tok[1:] not in _COMMANDS:
            name = tok[1:]
            known = max((c for c in _COMMANDS if name.startswith(c)), key=len, default=None)
            if known is None:
                raise _Fail(tok)
            out.append("\\" + known)
            out.extend(name[len(known):])
        else:
            out.append(tok)
    run = 0  # consecutive bare letters
    for tok in out:
        run = run + 1 if tok.isalpha() else 0
        if run > 3:  # `2abc` is a product, `Evelyn` and `odd` (letters only) are words
            raise _Fail("word")
    return out


def _point(name: str, k: int) -> complex:
    """Value of variable `name` at point k: fixed, irrational-looking, in (0.55, 0.95) at even
    k and (1.05, 1.45) at odd k. Near 1, so that in `121z^{34}+55z^{17}+1` the `+1` is not lost
    below REL_TOL next to z^34 as it would be at z = 2.8; on both sides of 1, so that powers
    of different degree differ."""
    h = zlib.crc32(f"{name}/{k}".encode())
    return complex(0.55 + 0.5 * (k % 2) + 0.4 * ((h * 0.6180339887498949) % 1.0))


def _pow(base, exp):
    if isinstance(base, Fraction) and isinstance(exp, Fraction):
        if exp.denominator == 1:
            size = max(base.numerator.bit_length(), base.denominator.bit_length())
            if abs(base) != 1 and base != 0 and size * abs(exp.numerator) > MAX_BITS:
                raise _Fail("exponent")
            return base ** exp.numerator
        root = _exact_root(base, exp.denominator)
        if root is not None:
            return _pow(root, Fraction(exp.numerator))
        if base < 0 and exp.denominator % 2 == 1:  # the real odd root: \sqrt[3]{-2}
            return -complex(float(-base) ** float(exp))
    if isinstance(exp, Fraction) and exp.denominator == 1 and abs(exp) <= 1000:
        return complex(base) ** int(exp)  # repeated squaring: exact-ish, no log/exp
    return complex(base) ** complex(exp)


def _exact_root(x: Fraction, n: int) -> Fraction | None:
    """The rational n-th root of x when there is one (real for odd n), else None."""
    if n > 64 or (x < 0 and n % 2 == 0):
        return None
    sign = -1 if x < 0 else 1
    parts = []
    for m in (abs(x.numerator), x.denominator):
        if m.bit_length() > 1000:
            return None
        r = math.isqrt(m) if n == 2 else round(m ** (1 / n))
        r = next((c for c in (r - 1, r, r + 1) if c >= 0 and c ** n == m), None)
        if r is None:
            return None
        parts.append(r)
    return sign * Fraction(parts[0], parts[1])


def _factorial(x):
    if not (isinstance(x, Fraction) and x.denominator == 1 and 0 <= x <= 2500):
        raise _Fail("factorial")
    return Fraction(math.factorial(int(x)))


def _rounded(x, to_int):
    """Floor / ceiling of a real value; refused within 1e-9 of an integer, where float error
    could pick the wrong side."""
    if isinstance(x, Fraction):
        return Fraction(to_int(x))
    x = complex(x)
    if abs(x.imag) > ZERO_TOL or abs(x.real - round(x.real)) < 1e-9:
        raise _Fail("rounding")
    return Fraction(to_int(x.real))


def _binom(n, k):
    if not all(isinstance(v, Fraction) and v.denominator == 1 and 0 <= v <= 2500 for v in (n, k)):
        raise _Fail("binom")
    return Fraction(math.comb(int(n), int(k)))


_OPS = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": lambda a, b: a / b, "^": _pow, "neg": lambda a: -a, "!": _factorial, "binom": _binom,
    "abs": lambda a: abs(a) if isinstance(a, Fraction) else complex(abs(a)),
    "floor": lambda a: _rounded(a, math.floor), "ceil": lambda a: _rounded(a, math.ceil),
}
_OPS.update({name: (lambda f: lambda a: f(complex(a)))(f) for name, f in _FUNCTIONS.items()})


def _node(op: str, *args):
    """An expression node; folded to its value at once when no argument holds a variable."""
    if any(isinstance(a, tuple) for a in args):
        return (op, *args)
    return _OPS[op](*args)


class _Parser:
    """Recursive descent over tokens: expr = term (+|- term)*, term = factor ((*|/)? factor)*,
    factor = (+|-) factor | power, power = primary [!] [^ exponent]."""

    def __init__(self, tokens: list[str]):
        self.toks, self.i, self.depth, self.in_abs = tokens, 0, 0, 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise _Fail(f"expected {expected}")
        self.i += 1
        return tok

    def nest(self, delta: int):
        self.depth += delta
        if self.depth > MAX_DEPTH:
            raise _Fail("depth")

    def expr(self):
        self.nest(1)
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            value = _node(op, value, self.term())
        self.nest(-1)
        return value

    def term(self):
        value = self.factor()
        while True:
            tok = self.peek()
            if tok in ("*", "\\cdot", "\\times", "/", "\\div"):
                self.take()
                op = "/" if tok in ("/", "\\div") else "*"
                value = _node(op, value, self.factor())
            elif self.starts_factor(tok):
                value = _node("*", value, self.power())  # implicit: 2\sqrt3, \frac13\pi, 2(x+1)
            else:
                return value

    def starts_factor(self, tok: str | None) -> bool:
        """Whether tok begins a factor of an implicit product (not a closing `|` or `\\rceil`)."""
        return (tok is not None and tok[0] in _PRIMARY_START and tok not in ("\\rceil", "\\rfloor")
                and not (tok == "|" and self.in_abs))

    def factor(self):
        if self.peek() in ("-", "+"):
            self.nest(1)
            sign = self.take()
            value = self.factor()
            self.nest(-1)
            return _node("neg", value) if sign == "-" else value
        return self.power()

    def power(self):
        value = self.primary()
        while self.peek() == "!":
            self.take()
            value = _node("!", value)
        if self.peek() == "^":
            self.take()
            value = _node("^", value, self.group_or_token())
        return value

    def group_or_token(self, one_char: bool = False):
        """A macro argument or exponent: `{expr}`, or one number / letter / command. As LaTeX
        reads it, an unbraced macro argument is one character (`\\frac12` is 1/2); an exponent
        keeps its digits (`2^10` is 1024, as people mean it)."""
        if self.peek() == "{":
            return self.group()
        tok = self.peek()
        if one_char and tok is not None and len(tok) > 1 and tok[0].isdigit():
            self.toks[self.i : self.i + 1] = [tok[0], tok[1:]]
        if self.peek() == "-":  # x^-1
            self.take()
            return _node("neg", self.primary())
        return self.primary()

    def group(self, close: str = "}"):
        self.take({"}": "{", ")": "(", "|": "|"}[close])
        value = self.expr()
        self.take(close)
        return value

    def primary(self):
        tok = self.peek()
        if tok is None:
            raise _Fail("end")
        if tok[0].isdigit() or tok[0] == ".":
            self.take()
            return self.mixed_number(Fraction(tok))
        if tok == "{":
            return self.group("}")
        if tok == "(":
            return self.group(")")
        if tok == "|" and not self.in_abs:
            self.in_abs += 1
            value = self.group("|")
            self.in_abs -= 1
            return _node("abs", value)
        if tok.isalpha() and len(tok) == 1:
            self.take()
            return 1j if tok == "i" else self.variable(tok)
        if tok[0] == "\\":
            return self.command(self.take()[1:])
        raise _Fail(tok)

    def mixed_number(self, whole: Fraction):
        """`2\\frac{1}{2}` is 2 1/2 (MATH's mixed numbers), not 2 * 1/2."""
        t = self.toks[self.i : self.i + 7]
        if (whole.denominator == 1 and len(t) == 7 and t[0] == "\\frac" and t[1] == "{" and t[3] == "}"
                and t[4] == "{" and t[6] == "}" and t[2].isdigit() and t[5].isdigit()
                and 0 < int(t[2]) < int(t[5])):
            self.i += 7
            return whole + Fraction(int(t[2]), int(t[5]))
        return whole

    def variable(self, name: str):
        if self.peek() == "_":  # x_1, a_{n}
            self.take()
            if self.peek() == "{":
                start = self.i
                while self.peek() not in ("}", None):
                    self.take()
                name += "_" + "".join(self.toks[start + 1 : self.i])
                self.take("}")
            else:
                name += "_" + self.take()
        return ("var", name)

    def command(self, name: str):
        if name == "frac":
            return _node("/", self.group_or_token(True), self.group_or_token(True))
        if name == "binom":
            return _node("binom", self.group_or_token(True), self.group_or_token(True))
        if name == "sqrt":
            index = Fraction(2)
            if self.peek() == "[":
                self.take()
                index = self.expr()
                self.take("]")
                if not (isinstance(index, Fraction) and index.denominator == 1 and index > 0):
                    raise _Fail("root index")
            return _node("^", self.group_or_token(True), 1 / index)
        if name == "pi":
            return complex(math.pi)
        if name in ("lceil", "lfloor"):
            value = self.expr()
            self.take("\\r" + name[1:])
            return _node(name[1:], value)
        if name in _GREEK:
            return self.variable(name)
        if name in _FUNCTIONS:
            return self.function(name)
        raise _Fail(name)

    def function(self, name: str):
        """`\\sin x`, `\\sin(2x)`, `\\sin^2 x` = (sin x)^2, `\\log_2 8`; the argument of a bare
        `\\sin 2x` runs over the implicit product that follows."""
        exponent = base = None
        if name == "log" and self.peek() == "_":
            self.take()
            base = self.group_or_token(True)
        if self.peek() == "^":
            self.take()
            exponent = self.group_or_token()
        if self.peek() in ("(", "{"):
            arg = self.power()
        else:
            arg = self.power()
            while self.starts_factor(tok := self.peek()) and tok != "|" and tok[1:] not in _FUNCTIONS:
                arg = _node("*", arg, self.power())
        value = _node(name if base is None else "ln", arg)
        if base is not None:
            value = _node("/", value, _node("ln", base))
        return value if exponent is None else _node("^", value, exponent)


def _evaluate(tree, env: dict):
    if not isinstance(tree, tuple):
        return tree
    if tree[0] == "var":
        return env[tree[1]]
    return _OPS[tree[0]](*(_evaluate(arg, env) for arg in tree[1:]))


def _variables(tree) -> set[str]:
    if not isinstance(tree, tuple):
        return set()
    if tree[0] == "var":
        return {tree[1]}
    return set().union(*(_variables(arg) for arg in tree[1:]))


@lru_cache(maxsize=1 << 16)
def evaluate(s: str) -> tuple | None:
    """Values of expression s: a tuple of one exact/complex value (no variables) or of
    ``N_POINTS`` values at the variable points; None when s is not evaluated."""
    if len(s) > MAX_CHARS or (len(s) > 1 and s.isalpha()):  # `No` is a word, not N*o
        return None
    try:
        parser = _Parser(_tokens(s))
        tree = parser.expr()
        if parser.peek() is not None:
            return None
        if not isinstance(tree, tuple):
            return (tree,)
        names = _variables(tree)
        return tuple(_evaluate(tree, {n: _point(n, k) for n in names}) for k in range(N_POINTS))
    except (_Fail, ArithmeticError, ValueError, TypeError, RecursionError):
        return None


def _close(u, v) -> bool:
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
    """Whether `l1 = r1` and `l2 = r2` (given as (l, r) strings joined by '=') are the same
    equation: l1 - r1 proportional to l2 - r2 by one nonzero factor at every variable point."""
    x, y = (evaluate("(" + s.replace("=", ")-(") + ")") for s in (a, b))
    if x is None or y is None or len(x) == 1 or len(y) == 1:
        return None
    try:
        ratios = [complex(u) / complex(v) for u, v in zip(x, y)]
    except ZeroDivisionError:
        return None
    return abs(ratios[0]) > ZERO_TOL and all(_close(r, ratios[0]) for r in ratios[1:])
