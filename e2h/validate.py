"""Greedy accuracy of a policy during and after RL, the best policy by validation accuracy, and
which problems a run trains on, validates on and is tested on.

docs/paper.md: PPO validates greedily every 10 steps and keeps the checkpoint with the best
validation accuracy; iterative DPO and ReST-EM here validate after every iteration the same way
(the paper saw ReST-EM degrade at a third iteration). On the synthetic curriculum the validation
and test problems are the curriculum's own disjoint splits (``--eval-problems`` and
``--test-problems`` per level); on real data the validation problems are held out of the
--math-problems pool with MATH500's (subject, level) counts (``--validation-data``, docs/paper.md
"Data"), and RL never trains on them.

A run's best policy lives in <out>/best/ (HF layout) with best.json saying where it came from;
the final model/ is that policy, and the run says which one it kept. Its closing table sets its
greedy test accuracy beside the starting policy's, with their difference measured problem by
problem and a paired bootstrap interval over problems (``difference``, e2h/paired.py).
"""
from __future__ import annotations

import json
from pathlib import Path

from data import readers, sources
from data.format import difficulty
from e2h import paired
from e2h.defaults import ROLE
from e2h.infra import distributed as dist
from e2h.infra import preemption, trainstate
from e2h.infra.files import write_json, write_text
from e2h.rerank import accuracy_by_split
from e2h.score import SPLITS
from e2h.run import finish, load_or_init, sample
from e2h.hf.sharded import load_into


def validation_split(args) -> tuple[set, list[dict]]:
    """(ids held out of RL training, validation problems) of a real-data run; empty without
    --validation-data."""
    if not getattr(args, "validation_data", None):
        return set(), []
    if not args.math_problems:
        raise ValueError("--validation-data needs --math-problems: the validation problems are "
                         "held out of that pool")
    pool = readers.load_math(args.math_problems)
    _, held = readers.math_validation_split(pool, readers.load_math(args.validation_data),
                                            args.seed)
    return {p["id"] for p in held}, held


def synthetic_data(args) -> bool:
    """The embedded default: no --data, so the synthetic curriculum is the data."""
    return args.hparams == "embedded" and not args.data


def problems(args) -> list[dict]:
    """The problems this run samples from (--data / --math-problems, else the synthetic
    problems of its stage's role: defaults.ROLE), less the validation problems held out of
    them (--validation-data)."""
    synthetic_only = args.hparams == "embedded" and not (args.data or args.math_problems)
    data, math = (None, None) if synthetic_only else (args.data or [], args.math_problems)
    held, _ = validation_split(args)
    return [p for p in sources.problems(data, math, sources.parse_levels(args.levels),
                                        args.n_problems, args.seed, ROLE[args.algo])
            if p["id"] not in held]


def problems_for(run, split: str) -> list[dict]:
    """Greedy evaluation problems: synthetic ones of every level, or the real validation split."""
    args = run.args
    if args.hparams == "embedded":
        n = args.test_problems if split == "test" else args.eval_problems
        return sources.synthetic_problems(n, None, args.seed, split) if n else []
    if split == "validation":
        return [p for p in validation_split(args)[1] if difficulty(p["level"])]
    return []


def graded(run, policy, split: str = "test", save: str | None = None) -> list[dict]:
    """Each problem's greedy result {id, level, correct}; [] when the run has no problems of
    that split. ``save``: also write them to <out>/data/<save> (jsonl), so two policies can be
    compared problem by problem."""
    problems = problems_for(run, split)
    if not problems:
        return []
    samples = sample(run, policy, problems, 1, "eval", temperature=0.0,
                     batch_size=run.args.eval_batch_size)
    records = [{k: s[k] for k in ("id", "level", "correct")} for s in samples]
    if save and dist.is_main():
        write_text(Path(run.out) / "data" / save, "".join(json.dumps(r) + "\n" for r in records))
    return records


def by_split(records: list[dict], split: str) -> dict:
    """Greedy accuracy (%) per difficulty, {"<split>_easy_acc", ..._hard_, ..._all_}; {}
    without records."""
    if not records:
        return {}
    return {f"{split}_{k}_acc": v for k, v in accuracy_by_split(records).items()}


def accuracy(run, policy, split: str = "test", save: str | None = None) -> dict:
    """Greedy accuracy (%) per difficulty (``by_split``) of ``graded``'s results."""
    return by_split(graded(run, policy, split, save), split)


class Best:
    """The policy with the highest greedy validation accuracy (All) so far, in <out>/best."""

    def __init__(self, run):
        self.run, self.dir = run, Path(run.out) / "best"
        info = self.dir / "best.json"
        self.info = json.loads(info.read_text()) if run.resume and info.is_file() else None

    def offer(self, policy, acc: dict, where: dict):
        """Keep ``policy`` if its validation accuracy beats the best so far (ties: the earlier)."""
        if not acc or (self.info is not None
                       and acc["validation_all_acc"] <= self.info["validation_all_acc"]):
            return
        self.info = {**where, **acc}
        with preemption.deferred():   # a stop signal must not part the weights from best.json
            trainstate.export_model(policy, self.dir, self.run.tok_path)
            if dist.is_main():
                tmp = self.dir / "best.json.tmp"
                tmp.write_text(json.dumps(self.info) + "\n")
                tmp.replace(self.dir / "best.json")

    def restore(self, policy) -> str:
        """Load the best policy's weights into ``policy``; a line saying which one was kept."""
        if self.info is None:
            return "no validation: kept the last policy"
        load_into(policy, load_or_init(self.dir, self.run.args, self.run.tok))
        where = ", ".join(f"{k} {v}" for k, v in self.info.items() if not k.endswith("_acc"))
        if self.info.get("step") == 0:
            where = "step 0, the starting policy: no later one validated higher"
        return (f"kept the policy of {where} (validation Easy / Hard / All "
                f"{self.info['validation_easy_acc']:.1f} / {self.info['validation_hard_acc']:.1f}"
                f" / {self.info['validation_all_acc']:.1f})")


def starting_point(run, policy, validated: bool = True) -> tuple[tuple, Best | None]:
    """Before RL: the starting policy's test accuracy and per-problem results (``starting_accuracy``,
    for the closing table) and a Best that already holds the starting policy with its validation
    accuracy, so that a run whose every checkpoint validates lower ends with the policy it started
    from. On a resume past step 0 the start was offered then (best.json remembers the winner).
    ``validated`` False (PPO with --eval-every 0): no Best, the run ends with its last policy."""
    start = starting_accuracy(run, policy)
    if not validated:
        return start, None
    best = Best(run)
    if run.step == 0:
        acc = accuracy(run, policy, "validation")
        if acc:
            run.log({"step": 0, **{f"eval/{k}": v for k, v in acc.items()}})
        best.offer(policy, acc, {"step": 0})
    return start, best


def starting_accuracy(run, policy) -> tuple[dict, list[dict]]:
    """The SFT policy's greedy test accuracy and per-problem results, measured once before RL;
    a resume reads them back (data/start_accuracy.json, data/start_test.jsonl) rather than
    measure the resumed policy."""
    data = run.out / "data"
    if run.args.resume and (data / "start_accuracy.json").is_file():
        results = data / "start_test.jsonl"
        records = (readers.read_jsonl(results, required=("id", "level", "correct"))
                   if results.is_file() else [])
        return json.loads((data / "start_accuracy.json").read_text()), records
    records = graded(run, policy, "test", save="start_test.jsonl")
    acc = by_split(records, "test")
    if dist.is_main():
        write_json(data / "start_accuracy.json", acc, indent=None)
    return acc, records


def difference(before: list[dict], after: list[dict], split: str = "test") -> dict:
    """Greedy accuracy after minus before, in points, per difficulty, with its 95% interval:
    {"<split>_easy_acc_diff", ..._diff_lo, ..._diff_hi, (hard, all), "<split>_paired_problems"}.
    Paired: on the problems graded both times, matched by id, the mean of the per-problem
    difference of 0/1 correctness; the interval is a paired bootstrap over those problems
    (e2h/paired.py: 2,000 resamples, 2.5th to 97.5th percentile, the study's own). {} when
    either side has no results (a resumed run whose start left no start_test.jsonl)."""
    if not before or not after:
        return {}
    by = {k: paired.greedy_difference(before, after, k) for k in SPLITS}
    out = {f"{split}_{k}_acc_diff{end}": by[k][key] for k in SPLITS
           for end, key in (("", "diff"), ("_lo", "lo"), ("_hi", "hi"))}
    return {**out, f"{split}_paired_problems": by["all"]["problems"]}


def before_after(name: str, before: dict, after: dict, diff: dict | None = None,
                 split: str = "test") -> str:
    """Markdown: the starting policy's greedy accuracy next to the trained one's, and, given
    ``difference``'s numbers, their paired difference (after minus start) with its interval."""
    if not before or not after:
        return ""
    rows = [("SFT policy (start)", before), (f"after {name}", after)]
    lines = [f"Greedy accuracy (%) on the same {split} problems:", "",
             "| policy | Easy | Hard | All |", "|---|---|---|---|"]
    lines += [f"| {label} | " + " | ".join(f"{acc[f'{split}_{k}_acc']:.1f}"
                                          for k in ("easy", "hard", "all")) + " |"
              for label, acc in rows]
    if diff:
        cell = lambda k: "{:+.1f} ({:+.1f}, {:+.1f})".format(
            *(diff[f"{split}_{k}_acc_diff{end}"] for end in ("", "_lo", "_hi")))
        lines += ["| difference (95 % interval) | " + " | ".join(map(cell, SPLITS)) + " |", "",
                  f"difference: after minus start in points, problem by problem on the "
                  f"{diff[f'{split}_paired_problems']} problems graded both times; 95 % interval: "
                  "paired bootstrap over problems."]
    return "\n".join(lines)


def above_zero(name: str, diff: dict, split: str = "test") -> str:
    """One line: whether the 95% interval of the All difference lies above 0."""
    d, lo, hi = (diff[f"{split}_all_acc_diff{end}"] for end in ("", "_lo", "_hi"))
    verdict = "lies above 0" if lo > 0 else "does not lie above 0"
    return (f"{name}: {split} All after minus start {d:+.1f} points, 95 % interval "
            f"({lo:+.1f}, {hi:+.1f}): the interval {verdict}")


def closing(run, policy, best: Best | None, start: tuple[dict, list[dict]]) -> dict:
    """An RL run's end: the best policy by validation (if any) becomes the final one, then its
    test accuracy next to the SFT policy's (``start``: ``starting_accuracy``'s), with the paired
    difference and its interval (``difference``)."""
    before, before_records = start
    if best is not None:
        dist.say(f"{run.args.algo}: " + best.restore(policy))
    after_records = graded(run, policy, "test", save="final_test.jsonl")
    after = by_split(after_records, "test")
    diff = difference(before_records, after_records)
    table = before_after(run.args.algo, before, after, diff)
    if table:
        dist.say(table)
    if diff:
        dist.say(above_zero(run.args.algo, diff))
    extra = {f"start_{k}": v for k, v in before.items()}
    if best is not None and best.info is not None:
        extra["best_validation_acc"] = best.info["validation_all_acc"]
    return finish(run, policy, {**extra, **after, **diff})
