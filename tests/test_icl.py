"""The few-shot (ICL) baseline: the Minerva prompt, answer extraction, exemplars by difficulty,
greedy evaluation."""
import random

import pytest

import e2h.sample
from e2h.icl import evaluate_icl, extract_icl_answer, icl_prompt, pick_exemplars
from e2h.sample import Sample


EXEMPLAR = {"id": "e", "question": "What is 1+1?", "solution": "We add: $1+1=\\boxed{2}$.",
            "answer": "2", "level": 1}


def test_icl_prompt_minerva_format():
    assert icl_prompt([EXEMPLAR], " What is 2+3? ") == (
        "Problem:\nWhat is 1+1?\n\nSolution:\nWe add: $1+1=\\boxed{2}$.\n"
        "Final Answer: The final answer is $2$. I hope it is correct.\n\n"
        "Problem:\nWhat is 2+3?\n\nSolution:\n")


def test_extract_icl_answer():
    final = "Final Answer: The final answer is ${}$. I hope it is correct."
    assert extract_icl_answer("2+3=5.\n" + final.format("5")) == "5"
    assert extract_icl_answer("so\n" + final.format("\\frac{1}{2}") + "\n\nProblem:\nNext") == "\\frac{1}{2}"
    # only the first solution counts: the model goes on to write another exemplar
    assert extract_icl_answer("hmm\n\nProblem:\nX\n\nSolution:\n" + final.format("9")) is None
    assert extract_icl_answer("it is $\\boxed{7}$") == "7"       # no Final Answer line
    assert extract_icl_answer("no answer here") is None


def test_pick_exemplars_by_difficulty():
    problems = [dict(EXEMPLAR, id=str(i), level=1 + i % 5) for i in range(20)]
    easy = pick_exemplars(problems, "easy", k=4, rng=random.Random(0))
    hard = pick_exemplars(problems, "hard", k=4, rng=random.Random(0))
    assert len(easy) == 4 and all(p["level"] <= 3 for p in easy)
    assert len(hard) == 4 and all(p["level"] >= 4 for p in hard)
    assert len({p["id"] for p in pick_exemplars(problems, "all", k=4, rng=random.Random(0))}) == 4
    with pytest.raises(ValueError, match="only 0 hard problems"):
        pick_exemplars(problems[:3], "hard", k=4, rng=random.Random(0))
    with pytest.raises(ValueError, match="which='medium'"):
        pick_exemplars(problems, "medium", rng=random.Random(0))


class CharTokenizer:
    """One token per character (ids 3..), enough to drive sampling without a trained vocabulary."""
    bos_id, eos_id, pad_id = 1, 2, 0

    def encode(self, text, bos=False, eos=False):
        return [self.bos_id] * bos + [3 + ord(c) for c in text] + [self.eos_id] * eos

    def decode(self, ids):
        return "".join(chr(i - 3) for i in ids if i >= 3)


def test_evaluate_icl_greedy_with_the_few_shot_prompt(monkeypatch):
    tok = CharTokenizer()
    replies = {"What is 2+3?": "5\nFinal Answer: The final answer is $5$. I hope it is correct.",
               "What is 2+2?": "5\nFinal Answer: The final answer is $5$. I hope it is correct."}
    seen = []

    def fake_generate(model, prompts, max_new_tokens, temperature, top_k, n, eos_id, stop_fn, generator,
                      max_rows, seeds):
        seen.append((temperature, n))
        out = []
        for p in prompts:
            text = tok.decode(p)
            assert text.startswith("Problem:\nWhat is 1+1?") and text.endswith("\n\nSolution:\n")
            question = text.split("Problem:\n")[-1].split("\n\nSolution:")[0]
            out.append(Sample(tok.encode(replies[question] + "\n\nProblem:")))
            assert stop_fn(out[-1].tokens)       # stops at the next "Problem:"
        return out

    monkeypatch.setattr(e2h.sample, "generate", fake_generate)
    problems = [{"id": "a", "question": "What is 2+3?", "answer": "5", "level": 2},
                {"id": "b", "question": "What is 2+2?", "answer": "4", "level": 4}]
    samples, acc = evaluate_icl(None, tok, problems, [EXEMPLAR], max_new_tokens=512, batch_size=8)
    assert seen == [(0.0, 1)]                    # greedy, one sample per problem
    assert [s["answer"] for s in samples] == ["5", "5"]
    assert acc == {"easy": 100.0, "hard": 0.0, "all": 50.0}
