import random

import pytest

from data.format import format_solution, parse_solution
import itertools
from argparse import Namespace

from data import sources, synthetic
from data.synthetic import (IDENTITY_MENU, N_SLOTS, PRIMES, REAL_OPS, SYNTHETIC_LEVELS, apply_op,
                            key_of, label_solution, make_problem, make_split, parse_question,
                            question_text, reference_completion, split_of, walks)
from e2h import validate




def test_same_seed_same_problems_other_seed_other_problems():
    a = make_split(5, seed=3, split="sft")
    b = make_split(5, seed=3, split="sft")
    c = make_split(5, seed=4, split="sft")
    assert a == b
    assert {p["question"] for p in a}.isdisjoint({p["question"] for p in c})
    # a split is drawn once per process; what a caller does to its copy stays in that copy
    a[0]["steps"].append("x")
    a[1]["answer"] = "00"
    assert make_split(5, seed=3, split="sft") == b and b[0]["steps"][-1] != "x"


def test_level_is_the_number_of_real_slots_in_a_fixed_layout():
    rng = random.Random(0)
    for level in SYNTHETIC_LEVELS:
        for _ in range(20):
            p = make_problem(level, rng)
            start, menus = parse_question(p["question"])
            assert len(menus) == N_SLOTS and all(len(menu) == 2 for menu in menus)
            assert sum(set(menu) != set(IDENTITY_MENU) for menu in menus) == level
            assert len(p["steps"]) == N_SLOTS
            assert p["level"] == level


def test_every_level_has_the_same_text_length():
    rng = random.Random(1)
    problems = [make_problem(level, rng) for level in SYNTHETIC_LEVELS for _ in range(5)]
    assert {len(reference_completion(p)) for p in problems} == \
        {len("00+0=00") * 5 + 2 * 4 + len("\n\n# Answer\n\n00")}
    assert len({len(p["question"]) for p in problems}) == 1


def test_primes_below_100():
    assert sorted(PRIMES)[:10] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert len(PRIMES) == 25 and 97 in PRIMES and 91 not in PRIMES   # 91 = 7 * 13


def test_every_problem_has_exactly_one_walk_and_the_reference_follows_it():
    for p in make_split(20, seed=0, split="validation"):
        start, menus = parse_question(p["question"])
        (walk,) = walks(start, menus)
        x = start
        for k, (step, (op, b, y)) in enumerate(zip(p["steps"], walk)):
            assert (op, b) in menus[k] and y == apply_op(x, op, b) and y in PRIMES
            assert step == f"{x:02d}{op}{b}={y:02d}"
            x = y
        assert p["answer"] == f"{x:02d}"


def test_reference_solutions_are_labelled_all_correct_and_parse():
    for p in make_split(10, seed=0, split="validation"):
        text = reference_completion(p)
        steps, answer = parse_solution(text)
        assert steps == p["steps"] and answer == p["answer"]
        assert label_solution(p, text) == ([1] * N_SLOTS, 1)


PROBLEM = {"question": "Start at 73. Apply -2/+6, +0/-0, -0/+0, -6/-4, +8/-2 (mod 100); "
                       "each result must be prime.", "answer": "71"}
# slot 1 is a branch point: 73-2 = 71 and 73+6 = 79 are both prime. From 79: 79-6 = 73
# (79-4 = 75 = 3*25), then 73-2 = 71 (73+8 = 81 = 9*9). From 71: 71-4 = 67 (71-6 = 65), then
# 67+8 = 75 and 67-2 = 65 are both composite: the walk through 71 dies at slot 5.
GOOD = ["73+6=79", "79+0=79", "79-0=79", "79-6=73", "73-2=71"]


def test_hand_written_solution_and_the_walk():
    assert label_solution(PROBLEM, format_solution(GOOD, "71")) == ([1, 1, 1, 1, 1], 1)
    start, menus = parse_question(PROBLEM["question"])
    assert walks(start, menus) == [[("+", 6, 79), ("+", 0, 79), ("-", 0, 79), ("-", 6, 73),
                                    ("-", 2, 71)]]
    # a do-nothing slot accepts either of its operations
    other = GOOD[:1] + ["79-0=79", "79+0=79"] + GOOD[3:]
    assert label_solution(PROBLEM, format_solution(other, "71")) == ([1, 1, 1, 1, 1], 1)


def test_the_wrong_branch_is_right_until_it_dies():
    # 73-2=71 is a right step (on the menu, prime); the walk fails at slot 5, where both
    # operations give composites: 67+8 = 75 is wrong, and so the answer
    dead = ["73-2=71", "71+0=71", "71-0=71", "71-4=67", "67+8=75"]
    assert label_solution(PROBLEM, format_solution(dead, "75")) == ([1, 1, 1, 1, 0], 0)
    # writing a prime instead: 67-2 is 65, not 61
    fudged = dead[:4] + ["67-2=61"]
    assert label_solution(PROBLEM, format_solution(fudged, "61")) == ([1, 1, 1, 1, 0], 0)


def test_wrong_operation_or_carried_value_or_composite_is_wrong():
    # -4 is not on slot 1's menu (-2/+6) and 69 = 3*23; step 2 reads 79, not the 69 it
    # follows: wrong; steps 3-5 carry 79 on right
    off_menu = ["73-4=69"] + GOOD[1:]
    assert label_solution(PROBLEM, format_solution(off_menu, "71")) == ([0, 0, 1, 1, 1], 1)
    # slot 4's +6 is not on its menu (-6/-4): 79+6 = 85; the last step reads 85 right
    not_listed = GOOD[:3] + ["79+6=85", "85-2=83"]
    assert label_solution(PROBLEM, format_solution(not_listed, "83")) == ([1, 1, 1, 0, 1], 0)
    carried = GOOD[:3] + ["97-6=91", "91-2=89"]             # reads 97, step 3 wrote 79
    assert label_solution(PROBLEM, format_solution(carried, "89")) == ([1, 1, 1, 0, 1], 0)
    composite = GOOD[:3] + ["79-4=75", "75-2=73"]            # on the menu, 75 = 3*25
    assert label_solution(PROBLEM, format_solution(composite, "73")) == ([1, 1, 1, 0, 1], 0)
    extra = GOOD + ["71+0=71"]                                 # the question has 5 slots
    assert label_solution(PROBLEM, format_solution(extra, "71")) == ([1, 1, 1, 1, 1, 0], 1)
    wrapped = {"question": "Start at 97. Apply +6/+2, -4/-6, +0/-0, -0/+0, +0/-0 "
                           "(mod 100); each result must be prime.", "answer": "97"}
    # 97+6 = 103 -> 03 (97+2 = 99 = 9*11), 03-6 = -3 -> 97 (03-4 = 99): both wrap modulo 100
    steps = ["97+6=03", "03-6=97", "97+0=97", "97-0=97", "97+0=97"]
    assert label_solution(wrapped, format_solution(steps, "97")) == ([1, 1, 1, 1, 1], 1)
    start, menus = parse_question(wrapped["question"])
    assert len(walks(start, menus)) == 1


def test_unparseable_step_and_missing_answer():
    steps = GOOD[:2] + ["seventy-nine minus nothing"] + GOOD[3:]
    # the garbled step is wrong; step 4 reads 79, the last written value, so it stays right
    assert label_solution(PROBLEM, format_solution(steps, "71")) == ([1, 1, 0, 1, 1], 1)
    assert label_solution(PROBLEM, format_solution(GOOD, None)) == ([1, 1, 1, 1, 1], 0)
    assert label_solution(PROBLEM, format_solution(GOOD, "73")) == ([1, 1, 1, 1, 1], 0)


ROLES = ("sft", "rl", "validation", "test")


def test_one_problem_written_two_ways_is_one_problem():
    # slot 1's menu and the do-nothing slots written in the other order: the same problem
    a = "Start at 73. Apply -2/+6, +0/-0, -0/+0, -6/-4, +8/-2 (mod 100); each result must be prime."
    b = "Start at 73. Apply +6/-2, -0/+0, -0/+0, -6/-4, -2/+8 (mod 100); each result must be prime."
    c = "Start at 73. Apply -2/+6, +0/-0, -0/+0, -6/-4, +8/-4 (mod 100); each result must be prime."
    assert key_of(a) == key_of(b) == "73:+6/-2,+0/-0,+0/-0,-4/-6,+8/-2"
    assert key_of(c) != key_of(a)
    assert split_of(a) == split_of(b)
    p = make_problem(3, random.Random(0))
    # ids derive from the key: the same problem drawn with its menus reordered keeps its id
    start, menus = parse_question(p["question"])
    flipped = [tuple(reversed(m)) for m in menus]
    assert key_of(question_text(start, flipped)) == key_of(p["question"])
    assert p["id"] == "syn-" + synthetic.hashlib.sha1(key_of(p["question"]).encode()).hexdigest()[:12]


def level_one_problems():
    """Every level-1 problem, by enumeration: one real slot of 28 menus at one of 5 places."""
    odd = sorted(p for p in PRIMES if p % 2)
    found = set()
    for start, where, menu in itertools.product(odd, range(N_SLOTS),
                                                itertools.combinations(REAL_OPS, 2)):
        menus = [menu if k == where else IDENTITY_MENU for k in range(N_SLOTS)]
        if len(walks(start, menus)) == 1:
            found.add(question_text(start, menus))
    return found


def test_level_one_is_1790_problems_and_each_role_holds_its_share(monkeypatch):
    questions = level_one_problems()
    assert len(questions) == 1790 == len({key_of(q) for q in questions})
    sizes = {role: sum(split_of(q) == role for q in questions) for role in ROLES}
    assert sizes == {"sft": 362, "rl": 623, "validation": 285, "test": 520}
    # a role can be drawn whole, and asking for one more says how many there are
    monkeypatch.setattr(synthetic, "MAX_DRAWS_WITHOUT_NEW", 5000)
    assert {key_of(p["question"]) for p in make_split(285, (1,), split="validation")} == \
        {key_of(q) for q in questions if split_of(q) == "validation"}
    with pytest.raises(ValueError, match="level 1's 'validation' split has 285 problems; 286"):
        make_split(286, (1,), split="validation")


def test_roles_do_not_share_a_problem_across_seeds():
    keys = {role: [key_of(p["question"]) for seed in (0, 1, 2)
                   for p in make_split(60, seed=seed, split=role)] for role in ROLES}
    for a, b in itertools.combinations(ROLES, 2):
        assert set(keys[a]).isdisjoint(keys[b]), (a, b)
    assert all(split_of(p["question"]) == "test" for p in make_split(60, seed=0, split="test"))
    # within one draw, a problem never appears twice, however it is written
    assert len(set(keys["test"][:300])) == 300 == 60 * len(SYNTHETIC_LEVELS)


def test_rl_never_samples_the_problems_sft_trained_on():
    # the stages' own selection: SFT's records and each RL stage's problems, same seed
    sft = sources.sft_records(None, None, (1, 2, 3), 200, 0)
    sft_keys = {key_of(r["question"]) for r in sft}
    for algo, role in (("dpo", "rl"), ("rest", "rl"), ("ppo", "rl"), ("prm", "sft")):
        args = Namespace(algo=algo, hparams="embedded", data=None, math_problems=None,
                         levels="1,2,3", n_problems=200, seed=0)
        keys = {key_of(p["question"]) for p in validate.problems(args)}
        assert len(keys) == 600
        assert keys.isdisjoint(sft_keys) == (role == "rl"), algo
    assert {split_of(r["question"]) for r in sft} == {"sft"}


def test_bad_level_and_split_are_reported():
    with pytest.raises(ValueError, match="level 6"):
        make_problem(6, random.Random(0))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make_split(1, split="dev")
