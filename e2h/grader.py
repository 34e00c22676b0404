"""MATH final-answer extraction and equivalence, without a computer-algebra system.

PAPER.md, "Text format" / "Grading": the final answer is the text after the last `# Answer`
heading (else the last `\\boxed{}`), compared with the reference answer under MATH
normalization. The same grader gives the final-answer reward of the RL methods on easy problems.

Deliberate simplifications: answers are compared as normalized strings, as exact rationals
(`fractions.Fraction`: integers, decimals, `\\frac{a}{b}`, `a/b`, mixed numbers `2\\frac{1}{2}`),
or structurally (tuples, intervals, sets, comma lists, `\\cup` unions, matrices). Nothing is
evaluated symbolically (`\\pi`, `\\sqrt{8}` vs `2\\sqrt{2}` stay distinct): where a CAS would be
needed the grader says unequal, so its errors lean towards rejecting correct answers.
"""

import re
from fractions import Fraction

_EOS_TEXT = "</s>"
_ANSWER_HEADING = re.compile(r"(?:^|\n)[ \t]*# Answer[ \t]*(?=\n|$)")
_BOX = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_REL_TOL = 1e-6


def _braced(text: str, i: int) -> tuple[str, int] | None:
    """Contents of the brace group opening at text[i] and the index after it; None if unbalanced."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{" and text[j - 1 : j] != "\\":
            depth += 1
        elif text[j] == "}" and text[j - 1 : j] != "\\":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j + 1
    return None


def _last_boxed(text: str) -> str | None:
    """Argument of the last `\\boxed{...}` / `\\fbox{...}` / `\\boxed x` in text."""
    matches = list(_BOX.finditer(text))
    if not matches:
        return None
    i = matches[-1].end()
    rest = text[i:].lstrip(" ")
    if rest.startswith("{"):
        found = _braced(rest, 0)
        return None if found is None else found[0]
    # `\boxed 5$`: the argument runs to the closing `$` or the end of the line
    arg = re.match(r"[^$\n]*", rest).group(0).strip()
    return arg or None


def extract_answer(text: str) -> str | None:
    """The final answer of a solution: after the last `# Answer` heading, else the last box.

    The answer section runs to the end of the text or to an `</s>` written as text; an empty
    section falls back to the last `\\boxed{}`. Returns None when neither is present.
    """
    headings = list(_ANSWER_HEADING.finditer(text))
    if headings:
        answer = text[headings[-1].end() :].split(_EOS_TEXT)[0].strip()
        if answer:
            return answer
    return _last_boxed(text)


# ---------------------------------------------------------------------------- normalization

# LaTeX spacing (`\!`, `\,`, `\ `, `\quad`, `~`), but not the row break `\\` of a matrix
_SPACES = re.compile(r"(?<!\\)\\(?:[ !,;:]|q?quad(?![a-zA-Z]))|~")
_SYNONYMS = [
    (r"\dfrac", r"\frac"), (r"\tfrac", r"\frac"), (r"\cfrac", r"\frac"),
    (r"\leq", r"\le"), (r"\geq", r"\ge"), (r"\neq", r"\ne"), (r"\varnothing", r"\emptyset"),
    ("−", "-"), ("∞", r"\infty"), ("π", r"\pi"),
]
_TEXT_MACRO = r"\\(?:text|mbox|textrm|textbf|mathrm|mathbf)\s*"
# a unit after a value: `5\text{ cm}`, `864 \mbox{ inches}^2`, `25 \, \text{km}`
_TRAILING_TEXT_UNIT = re.compile(_TEXT_MACRO + r"\{[^{}]*\}(\s*\^\s*\{?\d\}?)?\s*$")
# a bare unit word after a plain number: `5 cm`, `12 square units`, `30 degrees`
_TRAILING_WORD_UNIT = re.compile(r"^([-+]?[\d.,/]+)\s+[a-zA-Z]{2,}[a-zA-Z ]*(\^\d)?$")
_VARIABLE_PREFIX = re.compile(r"^\s*(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?\s*(?:=|\\in(?![a-zA-Z]))")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?")


def _unwrap_text(s: str) -> str:
    """`\\text{odd}` -> `odd`, for every text-like macro, innermost first."""
    pattern = re.compile(_TEXT_MACRO + r"\{([^{}]*)\}")
    while (new := pattern.sub(lambda m: m.group(1), s)) != s:
        s = new
    return s


def _read_arg(s: str, i: int) -> tuple[str, int] | None:
    """One macro argument at s[i]: `{...}`, a `\\command` or a single character."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return None
    if s[i] == "{":
        return _braced(s, i)
    if s[i] == "\\":
        m = re.match(r"\\[a-zA-Z]+", s[i:])
        if m:
            return m.group(0), i + m.end()
    return s[i], i + 1


def _brace_args(s: str, macro: str, n_args: int) -> str:
    """Rewrite `\\frac12` / `\\frac 1{2}` as `\\frac{1}{2}` and `\\sqrt2` as `\\sqrt{2}`."""
    out, i = [], 0
    pattern = re.compile(re.escape(macro) + r"(?![a-zA-Z])")
    while (m := pattern.search(s, i)) is not None:
        out.append(s[i : m.end()])
        j = m.end()
        if macro == r"\sqrt" and s[j : j + 1] == "[" and "]" in s[j:]:  # keep `\sqrt[3]` as is
            k = s.index("]", j)
            out.append(s[j : k + 1])
            j = k + 1
        for _ in range(n_args):
            arg = _read_arg(s, j)
            if arg is None:
                break
            out.append("{" + _brace_args(arg[0], macro, n_args) + "}")
            j = arg[1]
        i = j
    out.append(s[i:])
    return "".join(out)


def _strip_units(s: str) -> str:
    """Drop a trailing unit: `5\text{ cm}` -> `5`, `12 square units` -> `12` (not `2 pi`)."""
    without = _TRAILING_TEXT_UNIT.sub("", s).strip()
    if without and without != s.strip():
        s = without
    m = _TRAILING_WORD_UNIT.match(s.strip())
    if m and not {"pi", "and", "or"} & set(m.group(0).split()):
        return m.group(1)
    return s


def normalize_answer(s: str) -> str:
    """Canonical string form of a MATH answer; equal strings are equal answers.

    Removes `$`, `\\boxed`, `\\left`/`\\right`, LaTeX spacing, degrees, percent and dollar
    signs, trailing units and periods, a leading `x =`, thousands separators and all
    whitespace; braces `\\frac`/`\\sqrt` arguments, unwraps `\\text{}`, writes `.5` as `0.5`
    and a top-level `a/b` as `\\frac{a}{b}`. Group raw answers by this key; it is not
    idempotent on comma lists (`45, 135` -> `45,135`, which then reads as a thousands number).
    """
    s = s.strip()
    if _BOX.search(s):
        s = _last_boxed(s) or ""
    s = s.replace(r"\$", "").replace("$", "").strip().rstrip(".")
    for old, new in _SYNONYMS:
        s = s.replace(old, new)
    s = re.sub(r"(?<=\d)(?:,\s*\\!\s*|\{,\})(?=\d{3})", "", s)  # marked thousands `1,\!000`, `1{,}000`
    s = _SPACES.sub(" ", s)
    s = re.sub(r"\\(?:left|right|displaystyle)(?![a-zA-Z])", "", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°", "", s)
    s = s.replace(r"\%", "").replace("%", "")
    s = re.sub(_TEXT_MACRO + r"\{\s*and\s*\}", ",", s)  # `19 \text{ and }43` is a list
    s = _unwrap_text(_strip_units(s)).strip()
    if s.count("=") + len(re.findall(r"\\in(?![a-zA-Z])", s)) == 1:
        s = _VARIABLE_PREFIX.sub("", s)
    if _THOUSANDS.fullmatch(s.strip()):
        s = s.replace(",", "")
    s = _brace_args(_brace_args(s, r"\frac", 2), r"\sqrt", 1)
    s = re.sub(r"\s+", "", s).rstrip(".")
    s = re.sub(r"(?<!\d)\.(\d)", r"0.\1", s)
    s = re.sub(r"([_^])\{(\w)\}", r"\1\2", s)  # `4210_{5}` -> `4210_5`, `x^{2}` -> `x^2`
    s = re.sub(r"^\(([A-Z])\)$", r"\1", s)  # multiple choice `(C)` -> `C`
    s = re.sub(r"^(-?)\\frac\{-", r"-\1\\frac{", s)  # `\frac{-a}{b}` -> `-\frac{a}{b}`
    return _slash_to_frac(s.removeprefix("--"))


def _top_level(s: str, sep: str) -> list[str]:
    """Split s at occurrences of sep outside any (), [], {} nesting."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s[i] in "([{":
            depth += 1
        elif s[i] in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    return parts + [s[start:]]


def _slash_to_frac(s: str) -> str:
    """A top-level `a/b` of two operator-free terms as `\frac{a}{b}` (`a-b/2` is left alone)."""
    parts = _top_level(s, "/")
    if len(parts) != 2:
        return s
    sign, num = ("-", parts[0][1:]) if parts[0].startswith("-") else ("", parts[0])
    den = parts[1]
    if not num or not den or any(c in num + den for c in "+-,="):
        return s
    return sign + r"\frac{" + num + "}{" + den + "}"


# ---------------------------------------------------------------------------- equivalence

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)"


def _to_number(s: str) -> tuple[Fraction, bool] | None:
    """(exact value, written as a decimal) of a normalized rational literal, else None."""
    try:
        if re.fullmatch(_NUMBER, s):
            return Fraction(s), "." in s
        m = re.fullmatch(rf"({_NUMBER})/({_NUMBER})", s)
        if m and Fraction(m.group(2)) != 0:
            return Fraction(m.group(1)) / Fraction(m.group(2)), "." in s
        m = re.fullmatch(rf"(-?)\\frac\{{({_NUMBER})\}}\{{({_NUMBER})\}}", s)
        if m and Fraction(m.group(3)) != 0:
            value = Fraction(m.group(2)) / Fraction(m.group(3))
            return (-value if m.group(1) else value), "." in s
        m = re.fullmatch(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", s)  # mixed number 2\frac{1}{2}
        if m and 0 < int(m.group(3)) < int(m.group(4)):
            value = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
            return (-value if m.group(1) else value), False
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _numbers_equal(a: str, b: str) -> bool | None:
    x, y = _to_number(a), _to_number(b)
    if x is None or y is None:
        return None
    if x[0] == y[0]:
        return True
    # a decimal written to ~7 significant digits matches the exact value it rounds
    close = abs(x[0] - y[0]) <= _REL_TOL * max(abs(x[0]), abs(y[0]))
    return (x[1] or y[1]) and close


def _brackets(s: str) -> tuple[str, str, str] | None:
    """(open, inner, close) when s is one bracketed group: `(..)`, `[..)`, `\\{..\\}`."""
    if s.startswith(r"\{") and s.endswith(r"\}"):
        inner = s[2:-2]
        return (r"\{", inner, r"\}") if len(_top_level(inner, r"\}")) == 1 else None
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return None
    depth = 0
    for i, c in enumerate(s):  # the opening bracket must close at the very end
        depth += c in "([{"
        depth -= c in ")]}"
        if depth == 0 and i < len(s) - 1:
            return None
    return s[0], s[1:-1], s[-1]


def _all_equal(xs: list[str], ys: list[str]) -> bool:
    return len(xs) == len(ys) and all(equivalent(x, y) for x, y in zip(xs, ys))


def _unordered_equal(xs: list[str], ys: list[str]) -> bool:
    if len(xs) != len(ys):
        return False
    left = list(ys)
    for x in xs:
        match = next((i for i, y in enumerate(left) if equivalent(x, y)), None)
        if match is None:
            return False
        left.pop(match)
    return True


def _matrix(s: str) -> list[list[str]] | None:
    m = re.fullmatch(r"\\begin\{[pbv]?matrix\}(.*)\\end\{[pbv]?matrix\}", s)
    if m is None:
        return None
    return [row.split("&") for row in m.group(1).split(r"\\")]


def equivalent(a: str, b: str) -> bool:
    """Equivalence of two answers already passed through ``normalize_answer`` (recursive over
    structure). Voting normalizes each distinct answer once and compares forms with this."""
    if a == b:
        return True
    numbers = _numbers_equal(a, b)
    if numbers is not None:
        return numbers
    if len(_top_level(a, r"\cup")) > 1 or len(_top_level(b, r"\cup")) > 1:
        return _all_equal(_top_level(a, r"\cup"), _top_level(b, r"\cup"))
    ma, mb = _matrix(a), _matrix(b)
    if ma is not None or mb is not None:
        return (ma is not None and mb is not None and len(ma) == len(mb)
                and all(_all_equal(ra, rb) for ra, rb in zip(ma, mb)))
    ba, bb = _brackets(a), _brackets(b)
    if ba is not None and bb is not None:
        if (ba[0], ba[2]) != (bb[0], bb[2]):  # `(1,2]` is not `[1,2]`
            return False
        xs, ys = _top_level(ba[1], ","), _top_level(bb[1], ",")
        if ba[0] == r"\{":  # a set: element order does not matter
            return _unordered_equal(xs, ys)
        return _all_equal(xs, ys)
    xs, ys = _top_level(a, ","), _top_level(b, ",")
    if ba is None and bb is None and len(xs) > 1:
        # a bare list answers "enter all solutions, separated by commas": order does not matter
        return _unordered_equal(xs, ys)
    return False


def grade_answer(given: str | None, truth: str | None) -> bool:
    """True when the answer `given` is equivalent to the reference answer `truth`."""
    if given is None or truth is None:
        return False
    a, b = normalize_answer(given), normalize_answer(truth)
    return bool(a) and bool(b) and equivalent(a, b)
