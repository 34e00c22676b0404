import random

import pytest

from data.format import format_solution, parse_solution
from data.synthetic import (IDENTITY_OPS, N_SLOTS, SYNTHETIC_LEVELS, label_solution, make_problem, make_split,
                            parse_question, reference_completion, split_of)




def test_same_seed_same_problems_other_seed_other_problems():
    a = make_split(5, seed=3, split="train")
    b = make_split(5, seed=3, split="train")
    c = make_split(5, seed=4, split="train")
    assert a == b
    assert {p["question"] for p in a}.isdisjoint({p["question"] for p in c})


def test_level_is_the_number_of_real_operations_in_a_fixed_layout():
    rng = random.Random(0)
    for level in SYNTHETIC_LEVELS:
        for _ in range(20):
            p = make_problem(level, rng)
            start, ops = parse_question(p["question"])
            assert len(ops) == N_SLOTS
            assert sum(op not in IDENTITY_OPS for op in ops) == level
            assert len(p["steps"]) == N_SLOTS
            assert p["level"] == level


def test_every_level_has_the_same_text_length():
    rng = random.Random(1)
    lengths = {len(reference_completion(make_problem(level, rng))) for level in SYNTHETIC_LEVELS}
    assert lengths == {len("00+00=00") * 5 + 2 * 4 + len("\n\n# Answer\n\n00")}


def test_reference_solution_by_hand():
    rng = random.Random(0)
    p = make_problem(5, rng)
    start, ops = parse_question(p["question"])
    x = start
    for (op, b), step in zip(ops, p["steps"]):
        y = {"+": x + b, "-": x - b}[op] % 100
        assert step == f"{x:02d}{op}{b:02d}={y:02d}"
        x = y
    assert p["answer"] == f"{x:02d}"


def test_reference_solutions_are_labelled_all_correct_and_parse():
    for p in make_split(10, seed=0, split="validation"):
        text = reference_completion(p)
        steps, answer = parse_solution(text)
        assert steps == p["steps"] and answer == p["answer"]
        assert label_solution(p, text) == ([1] * N_SLOTS, 1)


PROBLEM = {"question": "Start at 47. Apply +05, -00, -08, +09, +00 (mod 100).", "answer": "53"}
# 47+5 = 52, 52-0 = 52, 52-8 = 44, 44+9 = 53, 53+0 = 53
GOOD = ["47+05=52", "52-00=52", "52-08=44", "44+09=53", "53+00=53"]


def test_hand_written_solution():
    assert label_solution(PROBLEM, format_solution(GOOD, "53")) == ([1, 1, 1, 1, 1], 1)


def test_wrong_arithmetic_is_wrong_at_its_step_and_later_steps_are_judged_locally():
    # step 3 writes 52-08=46; steps 4-5 carry 46 on correctly: 46+9 = 55, 55+0 = 55
    steps = GOOD[:2] + ["52-08=46", "46+09=55", "55+00=55"]
    assert label_solution(PROBLEM, format_solution(steps, "55")) == ([1, 1, 0, 1, 1], 0)


def test_wrong_operation_or_operand_or_carried_value_is_wrong():
    # slot 2 (-00) skipped: every later step does another slot's operation; the do-nothing
    # slot leaves the final value right, so only the steps reveal the error
    skipped = GOOD[:1] + GOOD[2:]
    assert label_solution(PROBLEM, format_solution(skipped, "53")) == ([1, 0, 0, 0], 1)
    extra = GOOD + ["53+00=53"]                              # the question asks for 5 steps
    assert label_solution(PROBLEM, format_solution(extra, "53")) == ([1, 1, 1, 1, 1, 0], 1)
    operand = GOOD[:3] + ["44+08=52", "52+00=52"]           # slot 4 asks +09
    assert label_solution(PROBLEM, format_solution(operand, "52")) == ([1, 1, 1, 0, 1], 0)
    carried = GOOD[:3] + ["45+09=54", "54+00=54"]           # reads 45, step 3 wrote 44
    assert label_solution(PROBLEM, format_solution(carried, "54")) == ([1, 1, 1, 0, 1], 0)
    wrapped = {"question": "Start at 95. Apply +07, -00, -09, +00, +00 (mod 100).", "answer": "93"}
    # 95+7 = 102 -> 02, 02-9 = -7 -> 93: both wrap around modulo 100
    steps = ["95+07=02", "02-00=02", "02-09=93", "93+00=93", "93+00=93"]
    assert label_solution(wrapped, format_solution(steps, "93")) == ([1, 1, 1, 1, 1], 1)


def test_unparseable_step_and_missing_answer():
    steps = GOOD[:2] + ["fifty-two minus eight"] + GOOD[3:]
    # the garbled step is wrong; step 4 reads 44 but the last written value was 52
    assert label_solution(PROBLEM, format_solution(steps, "53")) == ([1, 1, 0, 0, 1], 1)
    assert label_solution(PROBLEM, format_solution(GOOD, None)) == ([1, 1, 1, 1, 1], 0)
    assert label_solution(PROBLEM, format_solution(GOOD, "54")) == ([1, 1, 1, 1, 1], 0)


def test_splits_do_not_overlap():
    qs = {s: {p["question"] for p in make_split(100, seed=0, split=s)}
          for s in ("train", "validation", "test")}
    assert qs["train"].isdisjoint(qs["validation"])
    assert qs["train"].isdisjoint(qs["test"])
    assert qs["validation"].isdisjoint(qs["test"])
    assert all(split_of(q) == "test" for q in qs["test"])
    assert len(qs["test"]) == 100 * len(SYNTHETIC_LEVELS)


def test_bad_level_and_split_are_reported():
    with pytest.raises(ValueError, match="level 6"):
        make_problem(6, random.Random(0))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make_split(1, split="dev")
