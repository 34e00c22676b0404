"""The embedded default: a synthetic easy-to-hard arithmetic curriculum (levels 1-5).

A problem starts from a two-digit value and applies five operations, left to right, mod 100:

    Start at 47. Apply +05, -00, -08, +09, +00 (mod 100).

Every problem has the same five operation slots; level L has L real operations (add or
subtract a digit 1-9, carries and borrows included) at random slots and 5 - L do-nothing
ones (+00, -00). The reference solution always writes one step per slot, ``47+05=52``, then
``# Answer`` and the final value; numbers have two digits. Prompt and solution have the same
layout and length at every level, so a hard problem is more real arithmetic, never an unseen
length or position (a level written as "L operations" fails: CURRICULUM.md). The steps of a
hard problem are the same kind as an easy one's, which is what lets a step-level evaluator
trained on easy problems judge hard ones; the generator's errors compound over more steps.

Step labels (the stand-in for PRM800K's raters) are judged locally: step k is correct iff
it reads ``a<op>b=c`` with ``a`` the previous *written* result (the start value for k = 1),
``<op>b`` slot k of the question, and ``c = a <op> b mod 100``. A step after an error that
correctly carries the wrong value on is labelled 1. The label is then a function of (slot k,
previous result, step k) alone, the same function at every level: the thing an easy-trained
evaluator must carry over to hard problems. min/prod aggregation still turns one wrong step
into a low solution score, and PPO's min-shaped process reward lands on the wrong step
instead of on every later one. Steps beyond the fifth are wrong. The outcome label is
final-answer correctness (``e2h.grader.grade_answer``).

Design measurements (model "small", 0.83M parameters, tokenizer vocab 128 -> 79 tokens per
example; AdamW, cosine, SFT on levels 1-3; greedy accuracy on 200 test problems per level):
- two-digit operands and *b: 237 steps of batch 64 (1.6M tokens) left arithmetic unlearned
  (greedy 0.05 / 0.04 / 0.04 / 0.02 / 0.04); the model learned the layout (do-nothing steps
  right 698/700) but only ~4 of 79 tokens per example carry arithmetic.
- one-digit +/-, batch 32, lr 2e-3: learning is a sharp transition with SFT steps:
  step 300: 0.37/0.26/0.20/0.12/0.05, 350: 0.69/0.46/0.37/0.28/0.19,
  400: 0.80/0.67/0.55/0.56/0.44, 450: 0.93/0.85/0.75/0.78/0.68, 500: 0.97/0.94/0.90/0.89/0.82.
  At 500 steps, T 0.7 top-k 20: pass@16 0.99 / 0.99 / 0.98 on levels 3-5 against
  maj@16 0.92 / 0.89 / 0.85 (errors are systematic per problem, majority ~ greedy).
- verifier (generator trunk + zero-initialised head, per-token BCE on 6000 program-labelled
  solutions to easy problems sampled at T 1.0 from the step-400 checkpoint, 13% wrong steps;
  600 steps, batch 32): within-problem AUC on levels 4/5 0.50/0.45 at lr 2e-3, 0.53/0.52
  at 3e-4, 0.62/0.55 at 1e-4; weighted voting = majority +-0.015; best-of-16 0.57-0.69, far
  below majority. "First error" labels (later steps 0) did no better (0.50 on level 4). The
  generator's own minimum token probability ranks the same samples at AUC 0.89: the signal
  exists, and a short verifier run does not yet extract it.
- the same verifier with one corrupted copy of the reference solution added per sampled
  solution (one real step's result off by 1, 2, 9, 10 or 11, later steps carried on: 14% wrong
  steps, every problem with a right and a wrong version): within-problem AUC on levels 4/5
  0.48/0.56 at lr 3e-4, 0.55/0.52 at 1e-3; labels on the "\n\n" tokens only: 0.51/0.50;
  3000 steps instead of 600 (lr 3e-4): 0.57/0.50, training loss 0.28 -> 0.24. Weighted voting
  stays within 1 point of majority in every variant. The verifier learns which steps are risky
  (step AUC 0.7-0.8 across problems: a real operation fails more often than +00), not whether
  a step's arithmetic is right: in this curriculum, checking a step is the same computation as
  writing it, so an evaluator has no advantage over the generator it judges.
- with train.py's SFT (batch 32, lr 2e-3, cosine to 0, 3000 problems per level) the
  transition comes at a seed-dependent step: at 500 steps seed 0 reaches 34 / 15 (easy /
  hard greedy, 100 problems per level), seed 1 79 / 52; at 800 steps both reach 100 / 100.
  Once the arithmetic is learned it carries to hard problems in full: the easy-to-hard gap of
  this curriculum exists only while the generator is learning (errors compound over more real
  operations), unlike MATH, where hard problems need skills easy ones do not teach.
- a variant where checking a step should be easier than choosing it, a walk on primes: each
  slot offers two operations (+-2, +-4, +-6, +-8; do-nothing slots +00/-00), exactly one walk
  keeps every value prime, and a step is right iff it is on its slot's menu, its arithmetic is
  right and it lands on a prime; level L has L real slots, and where both operations land on
  primes only a look-ahead tells which one the later menus continue. study.py settings, seed 0,
  30 test problems per level, 64 samples at T 0.7: easy SFT greedy 64.7 / 35.0 (easy / hard;
  100 problems per level), pass@64 0.93-1.00 on every level, per-sample accuracy 0.70 (level
  1) to 0.23 (level 5): much for a re-ranker to pick from. But the generator almost never
  writes a composite (4 of 5387 first errors): it writes a prime with the arithmetic off
  (2767) or an operation that is not on the menu (2614), so the check is again mostly
  arithmetic. PRM weighted voting
  minus majority on Hard at N = 16 / 64: -0.9 / -3.3 with 800 training solutions (300 steps,
  lr 1e-4); +5.6 / +11.7 with 4800 (900 steps, lr 3e-4); -0.8 / +0.0 with 3200 (600 steps, lr
  3e-4); -1.0 / -1.7 with 4800 at lr 1e-3. The full study with 3200-solution evaluators
  (3 seeds, 41.6 minutes on 2 cores, over the 30-minute budget): PRM weighted voting minus
  majority on Hard +2.3 +- 3.1 / +2.5 +- 3.3 / +3.3 +- 2.4 at N = 16 / 32 / 64 (OPRM +0.6 /
  +1.0 / +0.6), F2 and F4 reproduced, but PPO against the PRM no longer gains on Hard (+0.0 +-
  1.1; DPO -0.5 +- 0.7). Over budget and without F3, the curriculum above stays.
"""
from __future__ import annotations

import hashlib
import random
import re

from data.format import format_solution, parse_solution
from e2h.grader import grade_answer

SYNTHETIC_LEVELS = (1, 2, 3, 4, 5)
N_SLOTS = 5
MOD = 100
OPS = "+-"            # real operations: add or subtract a one-digit operand (1-9)
OPERAND_MAX = 9
IDENTITY_OPS = (("+", 0), ("-", 0))
SPLIT_BUCKETS = {"test": (0,), "validation": (1,), "train": tuple(range(2, 10))}
_STEP = re.compile(r"^(\d+)([+\-*])(\d+)=(\d+)$")


def _num(x: int) -> str:
    return str(x).zfill(len(str(MOD - 1)))


def apply_op(a: int, op: str, b: int) -> int:
    if op == "+":
        return (a + b) % MOD
    if op == "-":
        return (a - b) % MOD
    if op == "*":
        return (a * b) % MOD
    raise ValueError(f"data/synthetic.py: unknown operation {op!r}")


def _real_op(rng: random.Random) -> tuple[str, int]:
    op = rng.choice(OPS)
    return (op, rng.randint(2, OPERAND_MAX)) if op == "*" else (op, rng.randint(1, OPERAND_MAX))


def question_text(start: int, ops: list[tuple[str, int]]) -> str:
    return f"Start at {_num(start)}. Apply " + ", ".join(f"{o}{_num(b)}" for o, b in ops) \
        + f" (mod {MOD})."


def solve(start: int, ops: list[tuple[str, int]]) -> tuple[list[str], str]:
    """Reference steps (one per slot) and the final answer."""
    steps, x = [], start
    for op, b in ops:
        y = apply_op(x, op, b)
        steps.append(f"{_num(x)}{op}{_num(b)}={_num(y)}")
        x = y
    return steps, _num(x)


def make_problem(level: int, rng: random.Random) -> dict:
    """One problem of the given level, drawn from ``rng`` (a ``random.Random``)."""
    if level not in SYNTHETIC_LEVELS:
        raise ValueError(f"data/synthetic.py: level {level} not in {SYNTHETIC_LEVELS}")
    real = set(rng.sample(range(N_SLOTS), level))
    ops = [_real_op(rng) if k in real else rng.choice(IDENTITY_OPS) for k in range(N_SLOTS)]
    start = rng.randint(1, MOD - 1)
    steps, answer = solve(start, ops)
    question = question_text(start, ops)
    return {"id": "syn-" + hashlib.sha1(question.encode()).hexdigest()[:12],
            "question": question, "answer": answer, "level": level,
            "subject": "arithmetic", "steps": steps}


def split_of(question: str) -> str:
    """The split a question belongs to, fixed by a hash of its text: splits never overlap."""
    bucket = int(hashlib.sha256(question.encode()).hexdigest(), 16) % 10
    return next(name for name, b in SPLIT_BUCKETS.items() if bucket in b)


def make_split(n_per_level: int, levels=SYNTHETIC_LEVELS, seed: int = 0,
               split: str = "train") -> list[dict]:
    """``n_per_level`` distinct problems of each level that belong to ``split``.

    The seed picks which problems are drawn; the split a question belongs to is a property of
    its text, so train, validation and test are disjoint whatever seeds and sizes are used.
    """
    if split not in SPLIT_BUCKETS:
        raise ValueError(f"data/synthetic.py: unknown split {split!r}; "
                         f"choose from {sorted(SPLIT_BUCKETS)}")
    problems = []
    for level in levels:
        rng = random.Random(f"{seed}-{split}-{level}")
        seen = set()
        while len(seen) < n_per_level:
            p = make_problem(level, rng)
            if p["question"] not in seen and split_of(p["question"]) == split:
                seen.add(p["question"])
                problems.append(p)
    return problems


def parse_question(question: str) -> tuple[int, list[tuple[str, int]]]:
    m = re.match(r"Start at (\d+)\. Apply (.*) \(mod \d+\)\.$", question.strip())
    if m is None:
        raise ValueError(f"data/synthetic.py: not a synthetic question: {question!r}")
    ops = [(s[0], int(s[1:])) for s in m.group(2).split(", ")]
    return int(m.group(1)), ops


def label_solution(problem: dict, completion: str) -> tuple[list[int], int]:
    """Program-checked labels of a written solution: (one 0/1 per step, 0/1 outcome).

    Local judgement (module docstring): step k is checked against slot k and the previous
    written result. The outcome is final-answer correctness.
    """
    start, ops = parse_question(problem["question"])
    steps, answer = parse_solution(completion)
    labels, prev = [], start
    for k, step in enumerate(steps):
        m = _STEP.match(step.replace(" ", ""))
        if m is None or k >= len(ops):
            labels.append(0)
            continue
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        labels.append(int(a == prev and (op, b) == ops[k] and c == apply_op(a, op, b)))
        prev = c
    return labels, int(grade_answer(answer, problem["answer"]))


def reference_completion(problem: dict) -> str:
    return format_solution(problem["steps"], problem["answer"])
