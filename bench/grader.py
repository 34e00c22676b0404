"""Time of the MATH grader (`e2h.grader.grade_answer`) per answer pair, against a string baseline.

Baseline, measured in the same run on the same pairs: the normalized-string test alone
(`normalize_answer(given) == normalize_answer(truth)`), the grader's first and cheapest step.
Both run with cold caches (cleared before each pass), so every distinct string is normalized
and evaluated within the timed pass; the fastest of --repeats passes counts.

Pairs: --pairs FILE, one JSON object a line with "truth" and either "given" (an answer) or
"text" (a solution, read with `extract_answer`); without it, MATH500: each reference answer
against five cosmetic rewrites of itself and against the next problem's answer.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from e2h.grader import latex_eval  # noqa: E402
from e2h.grader.answer_normalize import normalize_answer  # noqa: E402
from e2h.grader import extract_answer, grade_answer  # noqa: E402

MATH500 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "math" / "math500_test.jsonl"


def math500_pairs(path: Path) -> list[tuple[str, str]]:
    answers = [json.loads(line)["answer"] for line in path.read_text().splitlines()]
    pairs = []
    for a, b in zip(answers, answers[1:] + answers[:1]):
        rewrites = [f"${a}$", rf"\boxed{{{a}}}", a + ".", a.replace(r"\frac", r"\dfrac"), f"x = {a}"]
        pairs += [(r, a) for r in rewrites] + [(b, a)]
    return pairs


def file_pairs(path: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(extract_answer(r["text"]) if "text" in r else r["given"], r["truth"]) for r in rows]


def string_baseline(given: str | None, truth: str | None) -> bool:
    return given is not None and truth is not None and normalize_answer(given) == normalize_answer(truth)


def best_pass_seconds(grade, pairs, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        normalize_answer.cache_clear()
        latex_eval.evaluate.cache_clear()
        start = time.perf_counter()
        for given, truth in pairs:
            grade(given, truth)
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=None, help="JSONL pairs (default: MATH500)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; the fastest counts")
    args = parser.parse_args()
    path = args.pairs or MATH500
    if not path.exists():
        raise SystemExit(f"bench/grader.py: --pairs {path}: file not found")
    pairs = file_pairs(path) if args.pairs else math500_pairs(path)
    base = best_pass_seconds(string_baseline, pairs, args.repeats)
    full = best_pass_seconds(grade_answer, pairs, args.repeats)
    equal = sum(grade_answer(g, t) for g, t in pairs)
    print(f"{len(pairs)} pairs from {path} ({equal} graded equal)")
    print("| grader | ms / pair | vs string baseline |")
    print("|---|---|---|")
    print(f"| normalized strings (baseline) | {base / len(pairs) * 1e3:.4f} | 1.00x |")
    print(f"| grade_answer | {full / len(pairs) * 1e3:.4f} | {full / base:.2f}x |")


if __name__ == "__main__":
    main()
