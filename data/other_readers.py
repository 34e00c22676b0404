"""Readers of the data sets besides MATH and PRM800K, producing the canonical records of
``data/format.py`` (docs/paper.md, "Data"): GSM8K (answers after "#### "), MetaMathQA
(solutions ending "The answer is: X"), Math-Shepherd (steps ending in the tag "ки", labelled
"+"/"-") and TRL's stepwise PRM rows (``{"prompt", "completions": [step, ...], "labels":
[bool, ...]}``, what TRL's PRM trainer reads).

GSM8K, Math-Shepherd and stepwise rows have no difficulty levels: their records carry
``"level": None``, so ``data.format.is_easy`` refuses them instead of counting them as easy or
hard (data/sources.py attaches MATH's levels where a row quotes a MATH problem). Bad input
gives one line naming the file and line, as data/readers.py.
"""
from __future__ import annotations

import re
from pathlib import Path

from data.readers import numbered_rows

SHEPHERD_TAG = "ки"
_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K calculator annotations `<<3+5=8>>`
_STEP_NUMBER = re.compile(r"^Step \d+:\s*")  # Math-Shepherd "Step 3: "
_METAMATH_ANSWER = "The answer is:"


def load_gsm8k(path) -> list[dict]:
    """GSM8K: steps = the solution's lines without `<<calculator>>` notes, answer after `#### `.

    A second benchmark without levels: level None, subject "GSM8K"; answers lose their
    thousands commas ("1,080" -> "1080").
    """
    problems = []
    for lineno, row in numbered_rows(path, ("question", "answer")):
        body, sep, answer = row["answer"].rpartition("####")
        if not sep:
            raise ValueError(f"{path}:{lineno}: answer has no '#### ' final line")
        steps = [line.strip() for line in _CALCULATOR.sub("", body).splitlines() if line.strip()]
        problems.append({"id": f"gsm8k/{Path(path).stem}/{lineno}", "question": row["question"],
                         "answer": answer.strip().replace(",", ""), "level": None,
                         "subject": "GSM8K", "steps": steps})
    return problems


def _metamath_steps(text: str, where: str) -> tuple[list[str], str]:
    body, sep, answer = text.rpartition(_METAMATH_ANSWER)
    if not sep:
        raise ValueError(f"{where}: solution does not end with '{_METAMATH_ANSWER} X'")
    splitter = SHEPHERD_TAG if SHEPHERD_TAG in body else "\n"
    steps = [s.strip() for s in body.split(splitter) if s.strip()]
    return steps, answer.replace(SHEPHERD_TAG, "").strip()


def load_metamath(path) -> list[dict]:
    """MetaMathQA rows as problems with steps: split on "ки" when tagged, else on line breaks.

    Accepts the original fields (query, response) or the re-segmented ones (question, answer).
    The closing "The answer is: X" becomes the answer; level None (see ``attach_levels``).
    """
    problems = []
    for lineno, row in numbered_rows(path):
        question_key = "query" if "query" in row else "question"
        solution_key = "response" if "response" in row else "answer"
        for key in (question_key, solution_key):
            if key not in row:
                raise ValueError(f"{path}:{lineno}: missing field '{key}'")
        steps, answer = _metamath_steps(row[solution_key], f"{path}:{lineno}")
        problems.append({"id": f"metamath/{row.get('idx', lineno)}", "question": row[question_key],
                         "answer": answer, "level": None, "subject": row.get("type", "MetaMathQA"),
                         "steps": steps})
    return problems


def _shepherd_steps(text: str, labelled: str, where: str):
    """Pair each "ки"-terminated step of `text` with the "+"/"-" in the same place of `labelled`."""
    segments = text.split(SHEPHERD_TAG)
    steps, labels, pos = [], [], 0
    for segment in segments[:-1]:
        tag = labelled[pos + len(segment) : pos + len(segment) + 1]
        if not labelled.startswith(segment, pos) or tag not in ("+", "-"):
            raise ValueError(f"{where}: 'label' does not match 'input' at step {len(steps) + 1}")
        steps.append(segment)
        labels.append(1 if tag == "+" else 0)
        pos += len(segment) + 1
    return steps, labels


def load_math_shepherd(path) -> list[dict]:
    """Math-Shepherd rows as PRM examples: one example per solution, every step labelled.

    The question is the text before " Step 1:"; "Step k: " prefixes and `<<calculator>>` notes
    are dropped; the final "The answer is: X" becomes the answer section (outcome label None:
    the last step's label already judges it).
    """
    examples = []
    for lineno, row in numbered_rows(path, ("input", "label")):
        where = f"{path}:{lineno}"
        question, sep, _ = row["input"].partition(" Step 1:")
        if not sep:
            raise ValueError(f"{where}: 'input' has no ' Step 1:'")
        steps, labels = _shepherd_steps(row["input"][len(question) :], row["label"][len(question) :], where)
        steps = [_STEP_NUMBER.sub("", _CALCULATOR.sub("", s).strip()) for s in steps]
        last, sep, answer = steps[-1].rpartition(_METAMATH_ANSWER) if steps else ("", "", "")
        sep = sep if last.strip() else ""  # a step that is only "The answer is: X" stays a step
        if sep:
            steps[-1] = last.strip()
        examples.append({"id": f"math_shepherd/{lineno}", "question": question.strip(),
                         "steps": steps, "answer": answer.strip() if sep else None,
                         "step_labels": labels, "outcome_label": None, "level": None,
                         "task": row.get("task")})
    return examples


def load_stepwise(path) -> list[dict]:
    """TRL's stepwise PRM rows as PRM examples: ``prompt`` is the question, ``completions`` the
    steps (joined by e2h's blank line, data/format.py), ``labels[k]`` (true: step k is right)
    the label of step k. No answer section and no outcome label: the last step's label judges
    the solution, as in Math-Shepherd. Level None (``attach_levels`` gives MATH's)."""
    examples = []
    for lineno, row in numbered_rows(path, ("prompt", "completions", "labels")):
        where = f"{path}:{lineno}"
        steps, labels = row["completions"], row["labels"]
        if not isinstance(row["prompt"], str):
            raise ValueError(f"{where}: 'prompt' must be a string (a conversational prompt is "
                             f"not read)")
        if not isinstance(steps, list) or not steps or not all(
                isinstance(s, str) and s.strip() for s in steps):
            raise ValueError(f"{where}: 'completions' must be a non-empty list of non-empty strings")
        if not isinstance(labels, list) or not all(label in (True, False) for label in labels):
            raise ValueError(f"{where}: 'labels' must be a list of true / false")
        if len(labels) != len(steps):
            raise ValueError(f"{where}: {len(steps)} completions but {len(labels)} labels")
        examples.append({"id": f"stepwise/{Path(path).stem}/{lineno}",
                         "question": row["prompt"].strip(), "steps": [s.strip() for s in steps],
                         "answer": None, "step_labels": [int(label) for label in labels],
                         "outcome_label": None, "level": None})
    return examples
