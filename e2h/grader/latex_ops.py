"""Arithmetic for ``latex_eval``: exact on rationals, complex floats otherwise, with guards.

A value is a `fractions.Fraction` (exact) or a complex float. An operation whose exact result
would exceed ``MAX_BITS`` bits (`10^{10^{10}}`, `1000!^{1000}`), a factorial or binomial of
anything but a small natural number, and a floor or ceiling of a float too close to an integer
to be sure of raise ``Refused``; float overflow and division by zero raise the usual
ArithmeticError. Either way the answer is not evaluated.
"""
import cmath
import math
from fractions import Fraction

MAX_BITS = 20_000     # size of an exact integer power (2004! has 19,000 bits)
MAX_FACTORIAL = 2500
ZERO_TOL = 1e-12      # |imaginary part| below this is float noise: sin(pi) = 1.2e-16


class Refused(Exception):
    """An operation this module will not carry out exactly or reliably."""


FUNCTIONS = {
    "sin": cmath.sin, "cos": cmath.cos, "tan": cmath.tan, "ln": cmath.log, "exp": cmath.exp,
    "sec": lambda z: 1 / cmath.cos(z), "csc": lambda z: 1 / cmath.sin(z),
    "cot": lambda z: 1 / cmath.tan(z), "arcsin": cmath.asin, "arccos": cmath.acos,
    "arctan": cmath.atan, "log": cmath.log10,  # \log without a base: base 10
}


def power(base, exp):
    """base ** exp: exact for rationals (integer exponents, roots of perfect powers), the real
    root for an odd root of a negative rational, else the principal complex power."""
    if isinstance(base, Fraction) and isinstance(exp, Fraction):
        if exp.denominator == 1:
            size = max(base.numerator.bit_length(), base.denominator.bit_length())
            if abs(base) != 1 and base != 0 and size * abs(exp.numerator) > MAX_BITS:
                raise Refused("exponent")
            return base ** exp.numerator
        root = exact_root(base, exp.denominator)
        if root is not None:
            return power(root, Fraction(exp.numerator))
        if base < 0 and exp.denominator % 2 == 1:  # the real odd root: \sqrt[3]{-2}
            return -complex(float(-base) ** float(exp))
    if isinstance(exp, Fraction) and exp.denominator == 1 and abs(exp) <= 1000:
        return complex(base) ** int(exp)  # repeated squaring: exact-ish, no log/exp
    return complex(base) ** complex(exp)


def exact_root(x: Fraction, n: int) -> Fraction | None:
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
    if not (isinstance(x, Fraction) and x.denominator == 1 and 0 <= x <= MAX_FACTORIAL):
        raise Refused("factorial")
    return Fraction(math.factorial(int(x)))


def _rounded(x, to_int):
    """Floor / ceiling of a real value; refused within 1e-9 of an integer, where float error
    could pick the wrong side."""
    if isinstance(x, Fraction):
        return Fraction(to_int(x))
    x = complex(x)
    if abs(x.imag) > ZERO_TOL or abs(x.real - round(x.real)) < 1e-9:
        raise Refused("rounding")
    return Fraction(to_int(x.real))


def _binom(n, k):
    if not all(isinstance(v, Fraction) and v.denominator == 1 and 0 <= v <= MAX_FACTORIAL
               for v in (n, k)):
        raise Refused("binom")
    return Fraction(math.comb(int(n), int(k)))


# the operations of an expression tree node, by name (functions take complex arguments)
OPS = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": lambda a, b: a / b, "^": power, "neg": lambda a: -a, "!": _factorial, "binom": _binom,
    "abs": lambda a: abs(a) if isinstance(a, Fraction) else complex(abs(a)),
    "floor": lambda a: _rounded(a, math.floor), "ceil": lambda a: _rounded(a, math.ceil),
}
OPS.update({name: (lambda f: lambda a: f(complex(a)))(f) for name, f in FUNCTIONS.items()})
