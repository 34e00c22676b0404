"""Reading jsonl and MATH, producing the canonical records of ``data/format.py``.

docs/paper.md, "Data": MATH (MATH500 test set, the 12k training pool, a validation split matched to
MATH500). The other data sets (GSM8K, MetaMathQA, Math-Shepherd, TRL's stepwise PRM rows) are
in ``data/other_readers.py``, PRM800K in ``data/prm800k.py``.
Easy = MATH levels 1-3, hard = levels 4-5; any other level is an error, never a guess.

Bad input gives one line naming the file and line: ``path:lineno: malformed JSON``,
``path:lineno: not UTF-8 text``, ``path:lineno: missing field 'x'``,
``path:lineno: unknown level 'Level 7'``. A problem with no
level (MATH has two, "Level ?") or an empty reference answer (two more) is skipped with a
warning that counts and names them, or raises with ``strict=True``.

"""
from __future__ import annotations

import json
import os
import random
import re
import tempfile
import warnings
from collections import Counter
from pathlib import Path

from data.format import format_solution



# ---------------------------------------------------------------------------- jsonl and levels

def numbered_rows(path, required=()):
    """Yield (line number, record) of a jsonl file, checking that each has the required fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at "
                                 f"column {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for key in required:
                if key not in row:
                    raise ValueError(f"{path}:{lineno}: missing field '{key}'")
            yield lineno, row


def read_jsonl(path, required=()) -> list[dict]:
    return [row for _, row in numbered_rows(path, required)]


def write_jsonl(path, records) -> None:
    """Write records one per line, atomically: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def parse_level(value, where: str) -> int | None:
    """MATH level as an int 1-5; None for an unknown level (None, "Level ?"); else ValueError."""
    if value is None or value == "Level ?":
        return None
    if isinstance(value, str) and re.fullmatch(r"Level [1-5]", value):
        return int(value[-1])
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5:
        return value
    raise ValueError(f"{where}: unknown level {value!r} (expected 1-5)")


def warn_skipped(path, reason: str, ids: list[str]) -> None:
    if ids:
        shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
        warnings.warn(f"{path}: skipped {len(ids)} {reason}: {shown}", stacklevel=3)


# ---------------------------------------------------------------------------- MATH

def split_paragraphs(solution: str) -> list[str]:
    """A reference solution's steps: its blank-line-separated paragraphs.

    A blank line inside an `[asy]` picture, a `\\begin{..}` environment or display math does not
    end a step. Paragraphs are not split further into sentences: periods in decimals,
    abbreviations and formulas make sentence splits unreliable.
    """
    steps, current = [], []
    for part in re.split(r"\n[ \t]*\n", solution.strip()):
        current.append(part)
        text = "\n\n".join(current)
        still_open = (text.count("[asy]") > text.count("[/asy]")
                      or text.count("\\begin{") > text.count("\\end{")
                      or text.count("\\[") > text.count("\\]")
                      or text.count("$$") % 2 == 1)
        if not still_open:
            steps.append(text.strip())
            current = []
    if current:
        steps.append("\n\n".join(current).strip())
    return [s for s in steps if s]


def load_math(path, strict: bool = False) -> list[dict]:
    """MATH problems (MATH500 or the 12k pool) as canonical problem records.

    Fields: problem -> question, unique_id -> id, answer, level, subject, and the reference
    solution's paragraphs as steps (the final answer is the `answer` field, the last box of the
    solution). Problems with an unknown level or an empty answer are skipped with a warning
    (``strict=True``: a ValueError naming the line).
    """
    required = ("problem", "solution", "answer", "subject", "level", "unique_id")
    problems, no_level, no_answer = [], [], []
    for lineno, row in numbered_rows(path, required):
        where = f"{path}:{lineno}"
        level = parse_level(row["level"], where)
        if level is None or not row["answer"].strip():
            if strict:
                what = "unknown level None" if level is None else "empty answer"
                raise ValueError(f"{where}: {what} ({row['unique_id']})")
            (no_level if level is None else no_answer).append(row["unique_id"])
            continue
        problems.append({"id": row["unique_id"], "question": row["problem"],
                         "answer": row["answer"], "level": level, "subject": row["subject"],
                         "steps": split_paragraphs(row["solution"])})
    warn_skipped(path, "problems with an unknown level", no_level)
    warn_skipped(path, "problems with an empty answer", no_answer)
    return problems


def math_validation_split(train_problems, test_problems, seed: int = 0):
    """Hold out of the training pool a validation set with the test set's (subject, level) counts.

    docs/paper.md: a 500-problem validation set matched to MATH500 is held out of RL. Returns
    (train, validation); both keep the pool's order, and they do not overlap.
    """
    wanted = Counter((p["subject"], p["level"]) for p in test_problems)
    rng = random.Random(seed)
    held = set()
    for (subject, level), n in sorted(wanted.items()):
        cell = sorted(p["id"] for p in train_problems
                      if (p["subject"], p["level"]) == (subject, level))
        if len(cell) < n:
            raise ValueError(f"only {len(cell)} pool problems of ({subject}, level {level}), "
                             f"{n} needed for the validation split")
        held.update(rng.sample(cell, n))
    train = [p for p in train_problems if p["id"] not in held]
    validation = [p for p in train_problems if p["id"] in held]
    return train, validation


def attach_levels(records, math_problems) -> int:
    """Set each record's MATH level and subject by exact question text; returns how many matched.

    Math-Shepherd and MetaMathQA rows that quote a MATH problem verbatim get its level; the others
    keep level None.
    """
    by_question = {p["question"].strip(): p for p in math_problems}
    matched = 0
    for record in records:
        problem = by_question.get(record["question"].strip())
        if problem is not None:
            record["level"], record["subject"] = problem["level"], problem["subject"]
            matched += 1
    return matched


def sft_example(problem: dict) -> dict:
    """A problem with reference steps as an SFT record: the whole formatted solution."""
    if not problem.get("steps"):
        raise ValueError(f"problem {problem['id']}: no reference steps to train on")
    return {"id": problem["id"], "question": problem["question"], "level": problem["level"],
            "completion": format_solution(problem["steps"], problem["answer"])}
