"""PRM800K (human step ratings -1/0/+1) as SFT and PRM examples; docs/paper.md, "Data".

Each rated step is judged given its *chosen prefix*: the steps the labeller kept before it.
- PRM example, one per rated step: steps = prefix + [step], step_labels = [None] * len(prefix)
  + [1 if rating >= 0 else 0] (neutral counts as positive), answer None, outcome_label None.
  Unrated steps (rating None: human-written steps, unlabelled alternatives) are skipped.
- SFT example, one per +1 step: (question, prefix) -> step. The record carries a ready
  ``prompt`` (the question's prompt followed by the prefix steps, each closed by "\\n\\n") and
  ``completion`` = the step, closed by "\\n\\n" when more steps follow, with ``eos`` False; a
  final step (its "# Answer" section included) has ``eos`` True. Every "\\n\\n" between steps is
  thus trained exactly once, and EOS only after an answer.

Two file layouts are read:
- the step tree (``*_steptree.jsonl``, one problem per line): nodes {id, parent, text, rating,
  is_solution, ...}; parent -1 starts a solution, else it is the preferred step before this one.
  This flattening dropped the "# Answer\\n\\nX" text of final steps, so a +1 final step
  (is_solution) gets the problem's MATH answer appended for SFT; without ``math_problems`` such
  steps are skipped, with a warning. PRM examples never get an answer appended: only the
  correct final steps could be completed, which would leak the label into the text.
- the raw PRM800K records (phase 1 and 2): label.steps[k].completions (None once labelling
  stopped), chosen_completion, or a human_completion that continues the prefix; texts are kept
  as written, "# Answer" sections included.

Deliberate simplifications: duplicate (prefix, step) pairs are kept (the released code drops
them), and with ``levels`` problems outside MATH (level None) are skipped, never called easy.
"""
from __future__ import annotations

from pathlib import Path

from data.format import ANSWER_HEADING, STEP_SEP, format_prompt
from data.readers import numbered_rows, parse_level, warn_skipped

_NODE_FIELDS = ("id", "parent", "text", "rating", "is_solution")


def sft_step_example(example_id, question, prefix, step, final, level) -> dict:
    prompt = format_prompt(question) + "".join(s.strip() + STEP_SEP for s in prefix)
    completion = step.strip() if final else step.strip() + STEP_SEP
    return {"id": example_id, "question": question, "prompt": prompt,
            "completion": completion, "eos": final, "level": level}


def rm_step_example(example_id, question, prefix, step, rating, level) -> dict:
    return {"id": example_id, "question": question, "steps": [*prefix, step], "answer": None,
            "step_labels": [None] * len(prefix) + [1 if rating >= 0 else 0],
            "outcome_label": None, "level": level, "rating": rating}


def _check_levels(levels):
    if levels is not None and not set(levels) <= {1, 2, 3, 4, 5}:
        raise ValueError(f"levels {tuple(levels)}: MATH levels are 1-5")


def _wanted(level, levels, skipped_ids, problem_id) -> bool:
    """Level filter: with ``levels``, an unknown level is skipped and counted, never guessed."""
    if levels is None:
        return True
    if level is None:
        skipped_ids.append(problem_id)
        return False
    return level in levels


def _chosen_prefix(nodes: dict, node: dict, where: str) -> list[str]:
    """Texts from the root down to the node's parent, following `parent` links."""
    texts, parent = [], node["parent"]
    while parent != -1:
        if parent not in nodes or len(texts) > len(nodes):
            raise ValueError(f"{where}: node {node['id']} has a broken parent chain at {parent}")
        texts.append(nodes[parent]["text"])
        parent = nodes[parent]["parent"]
    return texts[::-1]


def load_prm800k_steptree(path, levels=None, math_problems=None):
    """(sft_examples, rm_examples) from a PRM800K step-tree file.

    ``levels``, e.g. (1, 2, 3): keep only problems of those MATH levels. ``math_problems``:
    canonical MATH problems, whose answers complete the +1 final steps of SFT examples.
    """
    _check_levels(levels)
    answers = {p["id"]: p["answer"] for p in math_problems or []}
    sft, rm, no_level, no_answer = [], [], [], []
    for lineno, row in numbered_rows(path, ("problem", "unique_id", "level", "nodes")):
        where = f"{path}:{lineno}"
        level = parse_level(row["level"], where)
        problem_id = row["unique_id"] or f"prm800k/{Path(path).stem}/{lineno}"
        if not _wanted(level, levels, no_level, problem_id):
            continue
        for i, node in enumerate(row["nodes"]):
            for key in _NODE_FIELDS:
                if key not in node:
                    raise ValueError(f"{where}: missing field 'nodes[{i}].{key}'")
        nodes = {node["id"]: node for node in row["nodes"]}
        for node in row["nodes"]:
            if node["rating"] is None:
                continue
            example_id = f"{problem_id}/{node['id']}"
            prefix = _chosen_prefix(nodes, node, where)
            rm.append(rm_step_example(example_id, row["problem"], prefix, node["text"],
                                      node["rating"], level))
            if node["rating"] != 1:
                continue
            step = node["text"]
            if node["is_solution"]:
                if problem_id not in answers:
                    no_answer.append(example_id)
                    continue
                step = f"{step.strip()}{STEP_SEP}{ANSWER_HEADING}{STEP_SEP}{answers[problem_id]}"
            sft.append(sft_step_example(example_id, row["problem"], prefix, step,
                                        node["is_solution"], level))
    warn_skipped(path, "problems with an unknown level (levels were asked for)", no_level)
    warn_skipped(path, "+1 final steps without a known answer (pass math_problems)", no_answer)
    return sft, rm


def load_prm800k_raw(path, levels=None, math_problems=None):
    """(sft_examples, rm_examples) from raw PRM800K records, phase 1 or phase 2.

    Levels come from ``math_problems`` by exact problem text (None when absent or unmatched);
    ``levels`` then filters as in ``load_prm800k_steptree``.
    """
    _check_levels(levels)
    by_question = {p["question"].strip(): p for p in math_problems or []}
    sft, rm, no_level = [], [], []
    for lineno, row in numbered_rows(path, ("question", "label")):
        where = f"{path}:{lineno}"
        question = row["question"].get("problem")
        steps = row["label"].get("steps")
        if question is None or steps is None:
            field = "question.problem" if question is None else "label.steps"
            raise ValueError(f"{where}: missing field '{field}'")
        problem = by_question.get(question.strip())
        level = problem["level"] if problem else None
        record_id = f"prm800k/{Path(path).stem}/{lineno}"
        if not _wanted(level, levels, no_level, record_id):
            continue
        prefix = []
        for k, step in enumerate(steps):
            completions = step.get("completions")
            if completions is None:  # labelling stopped at this step
                break
            for c, completion in enumerate(completions):
                rating, text = completion.get("rating"), completion.get("text")
                if text is None:
                    raise ValueError(f"{where}: missing field 'label.steps[{k}].completions[{c}].text'")
                if rating is None:
                    continue
                example_id = f"{record_id}/{k}/{c}"
                rm.append(rm_step_example(example_id, question, prefix, text, rating, level))
                if rating == 1:
                    sft.append(sft_step_example(example_id, question, prefix, text,
                                                ANSWER_HEADING in text, level))
            chosen, human = step.get("chosen_completion"), step.get("human_completion")
            if chosen is not None:
                prefix = [*prefix, completions[chosen]["text"]]
            elif human is not None:
                prefix = [*prefix, human["text"]]
            else:  # no continuation: the labeller gave up or found the error here
                break
    warn_skipped(path, "records with an unknown level (levels were asked for)", no_level)
    return sft, rm
