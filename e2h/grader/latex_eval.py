"""Numeric values of LaTeX answers, for the MATH grader (``e2h.grader``), without computer algebra.

An answer such as `\\frac{4\\pi}{3}`, `-2(1009)^2` or `12\\sqrt{13}` is parsed (recursive descent:
sums, products with or without `\\cdot` / `\\times` / `/`, unary signs, powers, `\\frac`,
`\\sqrt[n]{}`, `\\binom`, `!`, `|x|`, floor and ceiling, a few functions) and evaluated:

- to an exact `fractions.Fraction` wherever the value is rational: integers, decimals read as
  written, fractions, integer powers, roots of perfect powers (`\\sqrt{\\frac94}` = 3/2);
- else to a complex float (`\\pi`, `\\sqrt2`, `i`, functions);
- with letters as variables, at ``N_POINTS`` fixed points, each letter set to a value that
  depends only on its name, so that comparing the values compares the functions (the classic
  randomized identity test: `(x+1)^2` and `x^2+2x+1` agree at every point). `i` is the
  imaginary unit; a run of four or more letters, or an answer made of letters only (`No`,
  `odd`), is a word, not a product, and is not evaluated.

Anything not understood, and anything too large (long input, deep nesting, an exact result over
``latex_ops.MAX_BITS`` bits such as `10^{10^{10}}`), evaluates to None. ``e2h.grader.answer_values``
compares the values.
"""
from __future__ import annotations

import math
import re
import zlib
from fractions import Fraction
from functools import lru_cache

from e2h.grader.latex_ops import FUNCTIONS, OPS, Refused

MAX_CHARS = 300       # longer inputs are not evaluated
MAX_DEPTH = 40        # nesting of groups and signs
N_POINTS = 2          # points at which expressions with variables are compared

_TOKEN = re.compile(r"\d+(?:\.\d*)?|\.\d+|\\[a-zA-Z]+|\\.|\S")
_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "phi", "psi",
          "omega", "rho", "sigma", "tau"}
_COMMANDS = ({"frac", "sqrt", "binom", "pi", "cdot", "times", "div", "lceil", "rceil", "lfloor",
              "rfloor"} | _GREEK | set(FUNCTIONS))
_PRIMARY_START = set("0123456789.({|\\abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


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


def _node(op: str, *args):
    """An expression node; folded to its value at once when no argument holds a variable."""
    if any(isinstance(a, tuple) for a in args):
        return (op, *args)
    return OPS[op](*args)


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
            return self.mixed_number(Fraction(int(tok)) if tok.isdigit() else Fraction(tok))
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
        t = self.toks[self.i : self.i + 7]  # \frac { p } { q }
        if (whole.denominator == 1 and len(t) == 7 and t[0] == "\\frac" and t[1::3] == ["{", "{"]
                and t[3::3] == ["}", "}"] and t[2].isdigit() and t[5].isdigit()
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
        if name in FUNCTIONS:
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
            while (self.starts_factor(tok := self.peek()) and tok != "|"
                   and tok[1:] not in FUNCTIONS):
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
    return OPS[tree[0]](*(_evaluate(arg, env) for arg in tree[1:]))


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
    except (_Fail, Refused, ArithmeticError, ValueError, TypeError, RecursionError):
        return None
