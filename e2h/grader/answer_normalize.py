"""MATH answer normalization: the canonical string form the grader compares first.

docs/paper.md, "Grading": answers are compared under MATH normalization. Equal normal forms are
equal answers; ``e2h.grader.equivalent`` decides the rest (values, structure). A box inside an
answer is unwrapped, and several boxes (`\\boxed{2}, \\boxed{3}`) are one answer, their list.
"""

import re
from functools import lru_cache

MAX_CHARS = 1000
BOX = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


def braced(text: str, i: int) -> tuple[str, int] | None:
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


def boxed_arguments(text: str) -> list[tuple[int, int, str]]:
    """(start, end, argument) of every outermost `\\boxed{...}` / `\\fbox{...}` in text, in order;
    a box written without braces (`\\boxed 5$`) takes the text up to `$` or the line end."""
    boxes, i = [], 0
    for m in BOX.finditer(text):
        if m.start() < i:  # inside the previous box
            continue
        j = m.end()
        while text[j : j + 1] == " ":
            j += 1
        if text[j : j + 1] == "{":
            found = braced(text, j)
            if found is None:
                break
            arg, i = found
        else:
            arg = re.match(r"[^$\n]*", text[j:]).group(0)
            i = j + len(arg)
            arg = arg.strip()
        if arg:
            boxes.append((m.start(), i, arg))
    return boxes


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
# a bare unit word after a plain number: `5 cm`, `12 square units`, `30 degrees` (`{2}`, not
# `{2,}`, before `[a-zA-Z ]*`: the same words, matched in linear time on a long answer)
_TRAILING_WORD_UNIT = re.compile(r"^([-+]?[\d.,/]+)\s+[a-zA-Z]{2}[a-zA-Z ]*(\^\d)?$")
_VARIABLE_PREFIX = re.compile(r"^\s*(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?\s*(?:=|\\in(?![a-zA-Z]))")
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°")
_DEGREE_BEFORE_COMMA = re.compile(rf"(?:{_DEGREE.pattern})(?=\s*,)")
_MARKED_THOUSANDS = re.compile(r"(?<=\d)(?:,\s*\\!\s*|\{,\})(?=\d{3})")
_SIZING = re.compile(r"\\(?:left|right|displaystyle)(?![a-zA-Z])")
_TEXT_AND = re.compile(_TEXT_MACRO + r"\{\s*(?:and|or)\s*\}")
_BARE_AND = re.compile(r"(?<=\S)\s+(?:and|or)\s+(?=\S)")
_TEXT_GROUP = re.compile(_TEXT_MACRO + r"\{([^{}]*)\}")
_IN = re.compile(r"\\in(?![a-zA-Z])")
_WHITESPACE = re.compile(r"\s+")
_BARE_POINT = re.compile(r"(?<!\d)\.(\d)")
_ONE_CHAR_GROUP = re.compile(r"([_^])\{(\w)\}")
_CHOICE = re.compile(r"^\(([A-Z])\)[a-zA-Z-]*$")
_COMMAND = re.compile(r"\\[a-zA-Z]+")
_MACROS = {m: re.compile(re.escape(m) + r"(?![a-zA-Z])") for m in (r"\frac", r"\sqrt")}
_INTEGER = re.compile(r"-?\d+")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?")


def _unwrap_text(s: str) -> str:
    """`\\text{odd}` -> `odd`, for every text-like macro, innermost first."""
    while (new := _TEXT_GROUP.sub(lambda m: m.group(1), s)) != s:
        s = new
    return s


def _read_arg(s: str, i: int) -> tuple[str, int] | None:
    """One macro argument at s[i]: `{...}`, a `\\command` or a single character."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return None
    if s[i] == "{":
        return braced(s, i)
    if s[i] == "\\":
        m = _COMMAND.match(s, i)
        if m:
            return m.group(0), m.end()
    return s[i], i + 1


def _brace_args(s: str, macro: str, n_args: int) -> str:
    """Rewrite `\\frac12` / `\\frac 1{2}` as `\\frac{1}{2}` and `\\sqrt2` as `\\sqrt{2}`."""
    out, i = [], 0
    while (m := _MACROS[macro].search(s, i)) is not None:
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
    if without and without != s.strip() and without[-1] not in "=<>,(":  # `x = \text{east}`
        s = without
    m = _TRAILING_WORD_UNIT.match(s.strip())
    if m and not {"pi", "and", "or"} & set(m.group(0).split()):
        return m.group(1)
    return s


@lru_cache(maxsize=1 << 16)  # a reference answer is normalized once for all its N samples
def normalize_answer(s: str) -> str:
    """Canonical string form of a MATH answer; equal strings are equal answers.

    Removes `$`, `\\boxed` (several boxes become a comma list, as do `and` / `or`),
    `\\left`/`\\right`, LaTeX spacing, degrees, percent and dollar signs, trailing units and
    periods, a leading `x =`, thousands separators and all whitespace; braces `\\frac`/`\\sqrt`
    arguments, unwraps `\\text{}`, writes `.5` as `0.5` and a top-level `a/b` as `\\frac{a}{b}`.
    Group raw answers by this key; it is not idempotent on comma lists (`45, 135` -> `45,135`,
    which then reads as a thousands number). Texts over MAX_CHARS are returned stripped,
    unchanged.
    """
    s = s.strip()
    if _INTEGER.fullmatch(s) or len(s) > MAX_CHARS:  # integers: every step below keeps them;
        return s  # a longer text is no MATH answer (the longest is 159 characters): kept as is
    if BOX.search(s):
        s = ", ".join(arg for _, _, arg in boxed_arguments(s))
    s = s.replace(r"\$", "").replace("$", "").strip().rstrip(".")
    for old, new in _SYNONYMS:
        s = s.replace(old, new)
    s = _MARKED_THOUSANDS.sub("", s)  # `1,\!000`, `1{,}000`
    s = _SPACES.sub(" ", s)
    s = _SIZING.sub("", s)
    s = _DEGREE_BEFORE_COMMA.sub(" ", s)  # `60^\circ,120^\circ` is a list, not 60,120
    s = _DEGREE.sub("", s)
    s = s.replace(r"\%", "").replace("%", "")
    s = _TEXT_AND.sub(",", s)  # `19 \text{ and }43`, `2 \text{ or } 3` are lists
    if not _TEXT_GROUP.search(s):  # `2 or 3`, but no word of a `\text{}` answer
        s = _BARE_AND.sub(",", s)
    s = _unwrap_text(_strip_units(s)).strip()
    if s.count("=") + len(_IN.findall(s)) == 1:
        s = _VARIABLE_PREFIX.sub("", s)
    if _THOUSANDS.fullmatch(s.strip()):
        s = s.replace(",", "")
    s = _brace_args(_brace_args(s, r"\frac", 2), r"\sqrt", 1)
    s = _WHITESPACE.sub("", s).rstrip(".")
    s = _BARE_POINT.sub(r"0.\1", s)
    s = _ONE_CHAR_GROUP.sub(r"\1\2", s)  # `4210_{5}` -> `4210_5`, `x^{2}` -> `x^2`
    s = _CHOICE.sub(r"\1", s)  # multiple choice `(C)`, `(C) a line` -> `C`
    return _slash_to_frac(s)


def top_level(s: str, sep: str) -> list[str]:
    """Split s at occurrences of sep outside any (), [], {} nesting."""
    if sep not in s:  # most calls: no scan
        return [s]
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
    parts = top_level(s, "/")
    if len(parts) != 2:
        return s
    sign, num = ("-", parts[0][1:]) if parts[0].startswith("-") else ("", parts[0])
    den = parts[1]
    if not num or not den or any(c in num + den for c in "+-,="):
        return s
    return sign + r"\frac{" + num + "}{" + den + "}"
