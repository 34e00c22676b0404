"""The embedded default: a synthetic easy-to-hard curriculum (levels 1-5), a walk on primes.

A problem starts at an odd prime and has five slots; each slot offers two operations, and
exactly one way through the slots keeps every value prime (mod 100):

    Start at 43. Apply -6/-8, -2/-6, +6/-8, +0/-0, +4/-2 (mod 100);
    each result must be prime.

    43-6=37, 37-6=31, 31+6=37, 37+0=37, 37+4=41   answer 41

Level L has L real slots (two different operations from +-2, +-4, +-6, +-8) at random
positions and 5 - L do-nothing ones (``+0/-0`` or ``-0/+0``: either keeps the value). The
reference solution writes one step per slot, ``43-6=37``, then ``# Answer`` and the final
value; values have two digits (``03``), operands one. Prompt and solution have the same layout
and length at every level, so a hard problem is more real choices, never an unseen length or
position (a level written as "L operations" fails: docs/curriculum.md, "Difficulty as length").

Why a walk on primes: checking a written step is easier than choosing it, as in the paper's
mathematics. A step is right iff it starts from the previous value, uses an operation on its
slot's menu, has the arithmetic right and lands on a prime: a local check on numbers the
checker can read, the same at every level. Writing a step means trying both operations and,
where both land on primes (a branch point), looking ahead to see which one the later menus
can continue; the wrong branch only fails at a later slot. Hard problems have more real slots
and more branch points (a slot of the walk where both operations land on primes; of 300
training problems per level, levels 1 / 3 / 5: 0 / 90 / 171 have one), so the generator's
errors grow with the level while the check does not change. In an earlier version of this
curriculum (one given operation per slot, no choice) checking a step was the same
computation as writing it, and no evaluator trained on easy problems re-ranked hard ones
better than majority voting: measurements below.

Step labels (the stand-in for PRM800K's raters) are judged locally: step k is correct iff it
reads ``a<op>b=c`` with ``a`` the previous *written* value (the start for k = 1), ``<op>b``
one of slot k's two operations, ``c = a <op> b mod 100`` and ``c`` prime. A step after an
error that correctly continues from the wrong value is labelled 1, so one wrong choice shows
as a wrong step where the walk can no longer go on; steps beyond the fifth are wrong. The
outcome label is final-answer correctness (``e2h.grader.grade_answer``): with one walk per
problem, a solution whose steps are all right has the right answer.

Measurements (model "small", 0.83M parameters, tokenizer vocab 128; ``python -m study``'s settings,
seeds 0-2; results/report.md has every number):
- easy SFT (500 steps of batch 32 on levels 1-3) greedy 66.2 +- 4.8 / 31.5 +- 3.6 % (easy /
  hard, 100 test problems per level). 64 samples at T 0.7, top-k 20 on 30 test problems per
  level: pass@64 0.93-1.00 on levels 1-4 and 0.80-0.97 on level 5, per-sample accuracy
  0.69-0.77 on level 1 down to 0.22-0.25 on level 5: plenty for a re-ranker to pick from.
- first errors of those 28,800 samples: an operation that is not on the slot's menu
  (12,419), a prime with the arithmetic off (7,886), a composite (220). The generator has
  learned that every value is prime, so a wrong choice comes out as a step that looks right:
  the checker has to read the slot's menu and redo the sum. Its own smallest token
  probability does not rank its samples (within-problem AUC 0.46 +- 0.04 on Hard).
- evaluators (easy SFT trunk, program labels on 600 easy problems per level x 8 samples at
  T 1.0 from the step-400 checkpoint, 14,400 solutions; 900 steps of batch 16 at lr 3e-4):
  PRM step AUC 0.93 / 0.79 (easy / hard), within-problem AUC on Hard 0.57 +- 0.07, weighted
  voting minus majority on Hard +3.5 +- 3.3 / +4.5 +- 4.9 / +6.1 +- 4.4 points at N = 16 /
  32 / 64 (seed 0: -2.2 to +0.0; seeds 1 and 2: +5.7 to +10.0).
- what the PRM needed (operands written "+06" then, seed 0 unless said): 2,400 solutions, 300
  steps at lr 1e-4: weighted voting 1-3 points *below* majority on Hard; 9,600 solutions, 600
  steps at lr 3e-4, 3 seeds: +2.3 +- 3.1 / +2.5 +- 3.3 / +3.3 +- 2.4 at N = 16 / 32 / 64;
  14,400 solutions, 900 steps: +5.6 / +11.7 at N = 16 / 64 at lr 3e-4, -1.0 / -1.7 at 1e-3.

Measurements of the earlier version (one given +/- operation per slot):
- two-digit operands: 237 SFT steps of batch 64 left the arithmetic unlearned (greedy
  0.05 / 0.04 / 0.04 / 0.02 / 0.04 on 200 problems per level). One-digit operands, batch 32,
  lr 2e-3: learning is a sharp transition, 300 steps 0.37 / 0.26 / 0.20 / 0.12 / 0.05, 500
  steps 0.97 / 0.94 / 0.90 / 0.89 / 0.82, and at 800 steps 100 / 100 (easy / hard): once
  learned, the arithmetic carries to hard problems in full and the easy-to-hard gap exists
  only while learning.
- verifiers (generator trunk + zero-initialised head, per-token BCE on 6000-7500 program-
  labelled easy solutions; 600-3000 steps; lr 1e-4 to 2e-3; with or without a corrupted copy
  of the reference per sample; labels on every token or on the step delimiters only): within-
  problem AUC 0.48-0.62 on levels 4 / 5 and weighted voting within 1.5 points of majority in
  every variant; in the 3-seed study, PRM weighted voting minus majority on Hard -0.9 / -0.7 /
  -1.1 at N = 16 / 32 / 64. They learned which steps are risky (a real operation fails more
  often than +0), not whether a step's arithmetic is right. PPO against that PRM did gain on
  Hard (+2.3 +- 0.9 points); against this curriculum's PRM it does not (results/report.md).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import random
import re

from data.format import format_solution, parse_solution
from e2h.grader import grade_answer

SYNTHETIC_LEVELS = (1, 2, 3, 4, 5)
N_SLOTS = 5
MOD = 100
REAL_OPS = tuple((op, b) for op in "+-" for b in (2, 4, 6, 8))
IDENTITY_MENU = (("+", 0), ("-", 0))
PRIMES = frozenset(p for p in range(2, MOD) if all(p % d for d in range(2, int(p ** 0.5) + 1)))
# Roles: every problem belongs to exactly one, fixed by a hash of its canonical key (twentieths).
# Each stage draws from its own role (e2h/defaults.py, BUDGET): SFT and the reward models' data
# from "sft" (PRM800K feeds both in the paper), RL from "rl", never SFT's problems. Level 1 has
# only 1,790 problems (counted by enumeration), so the shares are set for it: ~30 % test (about
# 530), 15 % validation, 20 % sft (about 360), 35 % rl; the larger levels (61,900 problems at
# level 2, more above) have room for any size the budget asks.
SPLIT_BUCKETS = {"test": range(0, 6), "validation": range(6, 9), "sft": range(9, 13),
                 "rl": range(13, 20)}
# make_split gives up after this many draws with nothing new: 10x the longest wait seen for the
# last new level-1 problem when drawing a whole role (4,805 draws, seeds 0-2, every role)
MAX_DRAWS_WITHOUT_NEW = 50_000
_STEP = re.compile(r"^(\d+)([+\-])(\d+)=(\d+)$")
_QUESTION = re.compile(r"Start at (\d+)\. Apply (.*) \(mod \d+\); each result must be prime\.$")


def _num(x: int) -> str:
    """A value, always two digits: every step has the same length."""
    return str(x).zfill(len(str(MOD - 1)))


def apply_op(a: int, op: str, b: int) -> int:
    if op == "+":
        return (a + b) % MOD
    if op == "-":
        return (a - b) % MOD
    raise ValueError(f"data/synthetic.py: unknown operation {op!r}")


def problem_key(start: int, menus: list[tuple]) -> str:
    """What tells problems apart: the start and each slot's *unordered* menu. ``+2/-4`` and
    ``-4/+2`` (or ``+0/-0`` and ``-0/+0``) are one slot written two ways, so two question texts
    can be one problem; ids and splits derive from this key, never from the text."""
    menus = ("/".join(sorted(f"{op}{b}" for op, b in menu)) for menu in menus)
    return f"{_num(start)}:" + ",".join(menus)


def question_text(start: int, menus: list[tuple]) -> str:
    slots = ("/".join(f"{op}{b}" for op, b in menu) for menu in menus)
    return f"Start at {_num(start)}. Apply {', '.join(slots)} (mod {MOD}); each result must be prime."


def walks(start: int, menus: list[tuple]) -> list[list[tuple[str, int, int]]]:
    """Every way through the menus that keeps each value prime, as [(op, b, value), ...] per
    walk; two operations of one slot that give the same value count once."""
    if len(menus) == 0:
        return [[]]
    found, seen = [], set()
    for op, b in menus[0]:
        y = apply_op(start, op, b)
        if y in PRIMES and y not in seen:
            seen.add(y)
            found += [[(op, b, y)] + rest for rest in walks(y, menus[1:])]
    return found


def make_problem(level: int, rng: random.Random) -> dict:
    """One problem of the given level, drawn from ``rng`` (a ``random.Random``): menus are
    drawn until exactly one walk keeps every value prime."""
    if level not in SYNTHETIC_LEVELS:
        raise ValueError(f"data/synthetic.py: level {level} not in {SYNTHETIC_LEVELS}")
    odd_primes = sorted(p for p in PRIMES if p % 2)
    while True:
        start = rng.choice(odd_primes)
        real = set(rng.sample(range(N_SLOTS), level))
        menus = [tuple(rng.sample(REAL_OPS if k in real else IDENTITY_MENU, 2))
                 for k in range(N_SLOTS)]
        found = walks(start, menus)
        if len(found) == 1:
            break
    steps, x = [], start
    for op, b, y in found[0]:
        steps.append(f"{_num(x)}{op}{b}={_num(y)}")
        x = y
    key = problem_key(start, menus)
    return {"id": "syn-" + hashlib.sha1(key.encode()).hexdigest()[:12],
            "question": question_text(start, menus), "answer": _num(x), "level": level,
            "subject": "arithmetic", "steps": steps}


def key_of(question: str) -> str:
    return problem_key(*parse_question(question))


def split_of(question: str) -> str:
    """The split (role) a question belongs to, fixed by a hash of its problem's canonical key:
    splits never overlap, however the question is written."""
    bucket = int(hashlib.sha256(key_of(question).encode()).hexdigest(), 16) % 20
    return next(name for name, b in SPLIT_BUCKETS.items() if bucket in b)


def make_split(n_per_level: int, levels=SYNTHETIC_LEVELS, seed: int = 0,
               split: str = "sft") -> list[dict]:
    """``n_per_level`` distinct problems (by canonical key) of each level that belong to
    ``split``.

    The seed picks which problems are drawn; the split a problem belongs to is a property of
    its key, so the splits are disjoint whatever seeds and sizes are used. Asking a level for
    more problems than its split holds (level 1 is small) is an error that says how many there
    are. A split is drawn once per process (each validation asks for the same one again).
    """
    return copy.deepcopy(_drawn(n_per_level, tuple(levels), seed, split))


@functools.lru_cache(maxsize=32)
def _drawn(n_per_level: int, levels: tuple, seed: int, split: str) -> list[dict]:
    if split not in SPLIT_BUCKETS:
        raise ValueError(f"data/synthetic.py: unknown split {split!r}; "
                         f"choose from {sorted(SPLIT_BUCKETS)}")
    problems = []
    for level in levels:
        rng = random.Random(f"{seed}-{split}-{level}")
        seen, draws_since_new = set(), 0
        while len(seen) < n_per_level:
            p = make_problem(level, rng)
            key, draws_since_new = key_of(p["question"]), draws_since_new + 1
            if key not in seen and split_of(p["question"]) == split:
                seen.add(key)
                problems.append(p)
                draws_since_new = 0
            if draws_since_new > MAX_DRAWS_WITHOUT_NEW:
                raise ValueError(f"data/synthetic.py: level {level}'s {split!r} split has "
                                 f"{len(seen)} problems; {n_per_level} asked for")
    return problems


def parse_question(question: str) -> tuple[int, list[tuple]]:
    """(start, menus): one tuple of (op, operand) pairs per slot."""
    m = _QUESTION.match(question.strip())
    if m is None:
        raise ValueError(f"data/synthetic.py: not a synthetic question: {question!r}")
    menus = [tuple((s[0], int(s[1:])) for s in slot.split("/")) for slot in m.group(2).split(", ")]
    return int(m.group(1)), menus


def label_solution(problem: dict, completion: str) -> tuple[list[int], int]:
    """Program-checked labels of a written solution: (one 0/1 per step, 0/1 outcome).

    Local judgement (module docstring): step k is checked against slot k's menu and the
    previous written value, and must land on a prime. The outcome is final-answer correctness.
    """
    start, menus = parse_question(problem["question"])
    steps, answer = parse_solution(completion)
    labels, prev = [], start
    for k, step in enumerate(steps):
        m = _STEP.match(step.replace(" ", ""))
        if m is None or k >= len(menus):
            labels.append(0)
            continue
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        labels.append(int(a == prev and (op, b) in menus[k] and c == apply_op(a, op, b)
                          and c in PRIMES))
        prev = c
    return labels, int(grade_answer(answer, problem["answer"]))


def reference_completion(problem: dict) -> str:
    return format_solution(problem["steps"], problem["answer"])
