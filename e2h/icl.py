"""The few-shot baseline (docs/paper.md, "Generators", the ICL rows of Table 1).

A 4-shot prompt in the Minerva style ("Problem:" / "Solution:" / "Final Answer: The final
answer is $X$. I hope it is correct."), exemplars drawn from easy, hard or all levels, decoded
greedily with no training. It needs a pretrained base model: on a randomly initialized one a
few-shot prompt tests nothing.

    python -m e2h.icl --model DIR --math FILE --test FILE --tokenizer PATH --out DIR
"""
from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

import torch

from data.format import EASY_LEVELS, HARD_LEVELS, LEVELS
from data.readers import load_math, write_jsonl
from e2h.hf.checkpoint import load_model
from e2h.infra.errors import guard
from e2h.flags import ShowDefaults
from e2h.grader import extract_answer
from e2h.rerank import accuracy_by_split
from e2h.sample import sample_solutions
from e2h.tokenizer import Tokenizer

ICL_STOP = "\n\nProblem:"   # the model, left alone, goes on to write the next exemplar
_FINAL = re.compile(r"Final Answer: The final answer is (.*?)\. I hope it is correct\.", re.S)


def icl_exemplar(question: str, solution: str, answer: str) -> str:
    return (f"Problem:\n{question.strip()}\n\nSolution:\n{solution.strip()}\n"
            f"Final Answer: The final answer is ${answer.strip()}$. I hope it is correct.")


def icl_prompt(exemplars: list[dict], question: str) -> str:
    """Minerva-style few-shot prompt: the exemplars, then the question, ending at "Solution:\\n".

    Each exemplar is a problem record with ``question``, ``answer`` and a worked solution
    (``solution`` text, else its ``steps`` joined by newlines).
    """
    shots = [icl_exemplar(e["question"], _solution_text(e), e["answer"]) for e in exemplars]
    return "\n\n".join(shots + [f"Problem:\n{question.strip()}\n\nSolution:\n"])


def _solution_text(problem: dict) -> str:
    return problem.get("solution") or "\n".join(problem.get("steps") or [])


def pick_exemplars(problems: list[dict], which: str, k: int = 4, rng=None) -> list[dict]:
    """k exemplars from the easy (levels 1-3), hard (4-5) or all problems that have a solution.

    ``rng`` is a ``random.Random``; the pool keeps the order of ``problems``.
    """
    levels = {"easy": EASY_LEVELS, "hard": HARD_LEVELS, "all": LEVELS}
    if which not in levels:
        raise ValueError(f"pick_exemplars: which={which!r}; choose easy, hard or all")
    pool = [p for p in problems
            if p.get("level") in levels[which] and p.get("answer") and _solution_text(p)]
    if len(pool) < k:
        raise ValueError(f"pick_exemplars: only {len(pool)} {which} problems with a solution, "
                         f"need {k}")
    return rng.sample(pool, k)


def extract_icl_answer(text: str) -> str | None:
    """The answer of a Minerva-style continuation: the "Final Answer" line of the first solution,
    else the last ``\\boxed{}`` / "# Answer" of it (``e2h.grader.extract_answer``)."""
    text = text.split(ICL_STOP)[0]
    m = _FINAL.search(text)
    if m:
        answer = m.group(1).strip()
        if answer.startswith("$") and answer.endswith("$") and len(answer) > 1:
            answer = answer[1:-1].strip()
        return answer or None
    return extract_answer(text)


def evaluate_icl(model, tok, problems: list[dict], exemplars: list[dict], *, max_new_tokens: int,
                 batch_size: int) -> tuple[list[dict], dict]:
    """Greedy few-shot accuracy of an untrained model: (sample records, accuracy per split)."""
    samples = sample_solutions(model, tok, problems, n=1, temperature=0.0, top_k=None,
                               max_new_tokens=max_new_tokens, batch_size=batch_size,
                               prompt_fn=lambda q: icl_prompt(exemplars, q),
                               answer_fn=extract_icl_answer,
                               stop_fn=lambda ids: ICL_STOP in tok.decode(ids[-len(ICL_STOP):]))
    return samples, accuracy_by_split(samples)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m e2h.icl", description=__doc__.split("\n")[0],
                                formatter_class=ShowDefaults)
    p.add_argument("--model", required=True, help="HF Llama directory (the untrained base model)")
    p.add_argument("--math", required=True, help="MATH train problems jsonl: the exemplar pool")
    p.add_argument("--test", required=True, help="MATH problems jsonl to answer (MATH500)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the one in the "
                   "--model folder)")
    p.add_argument("--out", required=True, help="folder for icl.json and icl_samples.jsonl")
    p.add_argument("--limit", type=int, default=0, help="only the first LIMIT test problems (0: all)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="longest continuation")
    p.add_argument("--seed", type=int, default=0, help="which exemplars are drawn")
    p.add_argument("--sample-batch-size", type=int, default=8, help="problems per generate call")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, "
                   "else cpu)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.tokenizer = args.tokenizer or str(Path(args.model) / "tokenizer.json")
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = load_model(args.model, dtype=dtype, device=args.device).eval()
    exemplars = pick_exemplars(load_math(args.math), "easy", 4, random.Random(args.seed))
    problems = load_math(args.test)[:args.limit or None]
    with torch.no_grad():
        samples, acc = evaluate_icl(model, Tokenizer(args.tokenizer), problems, exemplars,
                                    max_new_tokens=args.max_new_tokens,
                                    batch_size=args.sample_batch_size)
    out = Path(args.out)
    write_jsonl(out / "icl_samples.jsonl", samples)
    write_jsonl(out / "icl.json", [{"greedy": acc}])   # one line: the JSON object, atomically


if __name__ == "__main__":
    sys.exit(guard(main, interrupted="interrupted; nothing is marked done: run the command again"))
