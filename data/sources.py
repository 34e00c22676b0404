"""What a run trains on: the synthetic curriculum, or the ``--data`` files told apart by their
fields, and which records of them are kept.

``--data`` files are recognised by the fields of their first record (MATH, MetaMathQA, GSM8K,
Math-Shepherd, TRL's stepwise PRM rows, PRM800K step trees or raw records, or the canonical SFT / RM / problem records of
data/format.py). Levels filter what is supervised: a record without a level (GSM8K, most of
MetaMathQA) is kept only with ``levels=None`` ("--levels all"), since it cannot be called easy.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from data import other_readers, prm800k, readers, synthetic


def parse_levels(text: str) -> tuple[int, ...] | None:
    """"1,2,3" -> (1, 2, 3); "all" -> None (no filter)."""
    return None if text == "all" else tuple(int(x) for x in text.split(","))


def keep_level(record: dict, levels) -> bool:
    return levels is None or record.get("level") in levels


def _first_record(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file not found")
    for _, row in readers.numbered_rows(path):   # malformed lines are errors naming the line
        return row
    raise ValueError(f"{path}: empty data file")


def _canonical(path: Path, required) -> list[dict]:
    """Canonical records of one file, each "level" read as 1-5, or None when it is absent or
    "Level ?"; any other level is an error naming the line."""
    rows = []
    for lineno, row in readers.numbered_rows(path, required):
        row["level"] = readers.parse_level(row.get("level"), f"{path}:{lineno}")
        rows.append(row)
    return rows


def by_level(records: list[dict], levels, what: str) -> list[dict]:
    """The records of ``levels`` (None: all); those without a level are skipped with a warning
    that counts them (they can be neither easy nor hard)."""
    if levels is None:
        return records
    unknown = [str(r.get("id", "?")) for r in records if r.get("level") is None]
    readers.warn_skipped(what, "records with no level (kept only with --levels all)", unknown)
    return [r for r in records if keep_level(r, levels)]


def data_format(path: Path) -> str:
    """Which reader a --data file needs, told by the fields of its first record."""
    first = _first_record(path)
    keys, answer = set(first), str(first.get("answer", ""))
    if "nodes" in keys:
        return "prm800k-steptree"
    if {"input", "label"} <= keys:
        return "math-shepherd"
    if {"prompt", "completions", "labels"} <= keys:
        return "stepwise"
    if {"question", "label"} <= keys:
        return "prm800k-raw"
    if {"problem", "solution", "unique_id"} <= keys:
        return "math"
    if "query" in keys or "The answer is:" in answer:
        return "metamath"
    if "#### " in answer:
        return "gsm8k"
    if "completion" in keys:
        return "sft"
    if "step_labels" in keys:
        return "rm"
    return "problems"


def read_data(paths, math_problems_path=None) -> dict[str, list[dict]]:
    """{"sft", "rm", "problems"} records from the --data files, each file by its fields, and
    "math", the --math-problems (answers and levels for PRM800K, Math-Shepherd and stepwise
    rows)."""
    math = readers.load_math(math_problems_path) if math_problems_path else []
    out = {"sft": [], "rm": [], "problems": [], "math": math}
    for path in map(Path, paths or []):
        kind = data_format(path)
        if kind.startswith("prm800k"):
            tree = kind.endswith("steptree")
            load = prm800k.load_prm800k_steptree if tree else prm800k.load_prm800k_raw
            sft, rm = load(path, math_problems=math)
            out["sft"] += sft
            out["rm"] += rm
        elif kind in ("math-shepherd", "stepwise"):
            if kind == "stepwise" and not math_problems_path:
                raise ValueError(f"{path}: stepwise PRM rows (prompt, completions, labels) carry "
                                 f"no level; give --math-problems, whose questions give each "
                                 f"row its MATH level")
            load = (other_readers.load_math_shepherd if kind == "math-shepherd"
                    else other_readers.load_stepwise)
            rm = load(path)
            readers.attach_levels(rm, math)
            out["rm"] += rm
        elif kind in ("math", "metamath", "gsm8k"):
            loader = {"math": readers.load_math, "metamath": other_readers.load_metamath,
                      "gsm8k": other_readers.load_gsm8k}[kind]
            problems = loader(path)
            readers.attach_levels(problems, math)   # MetaMathQA rows that quote MATH verbatim
            out["problems"] += problems
        elif kind == "sft":
            out["sft"] += _canonical(path, ("question", "completion"))
        elif kind == "rm":
            out["rm"] += _canonical(path, ("question", "steps", "answer", "step_labels",
                                           "outcome_label"))
        else:
            out["problems"] += _canonical(path, ("id", "question", "answer", "level"))
    return out


def synthetic_problems(n_per_level: int, levels, seed: int, split: str) -> list[dict]:
    """``n_per_level`` synthetic problems of each of ``levels`` (None: every level)."""
    levels = synthetic.SYNTHETIC_LEVELS if levels is None else levels
    return synthetic.make_split(n_per_level, levels=levels, seed=seed, split=split)


def sft_records(data, math_problems, levels, n_problems: int, seed: int) -> list[dict]:
    """Supervised examples of ``levels``: the --data files (SFT records, or problems with
    reference steps), else (``data`` None) the reference solutions of ``n_problems`` synthetic
    problems per level."""
    if data is None:
        return [{"id": p["id"], "question": p["question"], "level": p["level"],
                 "completion": synthetic.reference_completion(p)}
                for p in synthetic_problems(n_problems, levels, seed, "sft")]
    found = read_data(data, math_problems)
    records = found["sft"] + [readers.sft_example(p) for p in found["problems"] if p.get("steps")]
    return by_level(records, levels, "SFT data")


def problems(data, math_problems, levels, n_problems: int, seed: int,
             split: str) -> list[dict]:
    """Problems with answers to sample from: the --data / --math-problems files (``n_problems``:
    at most that many per level, in file order; 0: all), else (both None) ``n_problems``
    synthetic problems per level of ``split``."""
    if data is None and math_problems is None:
        return synthetic_problems(n_problems, levels, seed, split)
    found = read_data(data, math_problems)
    kept = [p for p in by_level(found["problems"] + found["math"], levels, "problems")
            if p.get("answer")]
    if n_problems:
        count, capped = Counter(), []
        for p in kept:
            count[p.get("level")] += 1
            if count[p.get("level")] <= n_problems:
                capped.append(p)
        kept = capped
    return kept


def rm_records(data, math_problems, levels) -> list[dict]:
    """The RM records (step or outcome labels) of the --data files, of ``levels``."""
    return by_level(read_data(data, math_problems)["rm"], levels, "RM data")


def read_samples(path, problems: list[dict]) -> list[dict]:
    """Graded samples written by another RM run (its <out>/data/samples.jsonl), checked to
    belong to this run's problems: ORM, PRM and OPRM can label the very same solutions."""
    ids = {p["id"] for p in problems}
    samples = []
    for lineno, s in readers.numbered_rows(path, ("id", "question", "completion", "answer",
                                                  "correct")):
        if s["id"] not in ids:
            raise ValueError(f"{path}:{lineno}: --samples id {s['id']!r} is not among this run's "
                             f"{len(problems)} problems (use the --seed, --levels and "
                             f"--n-problems of the run that wrote it)")
        samples.append(s)
    return samples
