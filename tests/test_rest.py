"""ReST-EM filtering: correct solutions of easy problems only, duplicates once, at most k each."""
import random

import pytest
import torch

import e2h.rest as rest
from e2h.rest import filter_samples, rest_iteration_data


def sample(pid, text, correct, level=2, prm=None):
    return {"id": pid, "question": f"q{pid}", "completion": text, "answer": None,
            "correct": correct, "level": level,
            "step_scores": [] if prm is None else [prm, 0.95], "outcome_score": None}


def texts(records, pid=None):
    return [r["completion"] for r in records if pid is None or r["id"] == pid]


def test_keeps_only_correct_solutions_of_easy_problems():
    samples = [sample("e", "right", True), sample("e", "wrong", False),
               sample("e", "ungraded", None), sample("e", "   ", True),       # empty text
               sample("h", "hard right", True, level=5, prm=0.9)]          # answer not usable
    records = filter_samples(samples, max_per_problem=10, rng=random.Random(0))
    assert records == [{"id": "e", "question": "qe", "completion": "right", "level": 2}]


def test_duplicates_count_once():
    samples = [sample("e", "x = 1", True), sample("e", "x = 1\n", True), sample("e", "x = 2", True)]
    records = filter_samples(samples, max_per_problem=10, rng=random.Random(0))
    assert texts(records) == ["x = 1", "x = 2"]                 # the first copy is kept


def test_at_most_k_per_problem():
    many = [sample("a", f"solution {i}", True) for i in range(6)]
    few = [sample("b", f"other {i}", True) for i in range(2)]
    records = filter_samples(many + few, max_per_problem=3, rng=random.Random(0))
    kept = texts(records, "a")
    assert len(kept) == 3 == len(set(kept)) and set(kept) <= {s["completion"] for s in many}
    assert kept == sorted(kept, key=lambda t: int(t.split()[-1]))   # input order kept
    assert texts(records, "b") == ["other 0", "other 1"]            # under the cap: all
    again = filter_samples(many + few, max_per_problem=3, rng=random.Random(0))
    assert again == records


def test_hard_problems_by_reward_model_threshold():
    hard = [sample("h", "high", False, level=4, prm=0.8),    # min(0.8, 0.95) = 0.8
            sample("h", "edge", None, level=4, prm=0.6),     # 0.6 >= 0.6: kept
            sample("h", "low", True, level=4, prm=0.3)]      # the grader's verdict is ignored
    records = filter_samples(hard, max_per_problem=10, rng=random.Random(0), hard_threshold=0.6)
    assert texts(records) == ["high", "edge"]


def test_easy_solutions_need_the_answer_and_with_easy_threshold_the_prm_too():
    easy = [sample("e", "clean", True, prm=0.7),          # min(0.7, 0.95) = 0.7 >= 0.5
            sample("e", "lucky", True, prm=0.2),          # right answer, a step the PRM doubts
            sample("e", "edge", True, prm=0.5),           # 0.5 >= 0.5: kept
            sample("e", "confident", False, prm=0.9),     # a wrong answer is never kept
            sample("h", "hard", True, level=4, prm=0.9)]  # hard: only by --hard-threshold
    def kept(**kw):
        return texts(filter_samples(easy, max_per_problem=10, rng=random.Random(0), **kw))
    assert kept() == ["clean", "lucky", "edge"]
    assert kept(easy_threshold=0.5) == ["clean", "edge"]
    assert kept(easy_threshold=0.5, hard_threshold=0.5) == ["clean", "edge", "hard"]


SAMPLING = dict(temperature=1.0, top_k=40, max_new_tokens=768, max_per_problem=10, batch_size=16)


def test_iteration_data_filters_what_the_policy_drew(monkeypatch):
    drawn = [sample("e", "right", True), sample("e", "right", True), sample("e", "wrong", False)]
    monkeypatch.setattr(rest, "sample_solutions", lambda *a, **k: [dict(s) for s in drawn])
    policy = torch.nn.Linear(1, 1)                              # never called: sampling is faked
    records, metrics = rest_iteration_data(policy, None, [], random.Random(0), **SAMPLING, n=3,
                                           hard_threshold=None)
    assert texts(records) == ["right"]
    assert metrics["rest/examples"] == 1 and metrics["answer/accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="hard_threshold / easy_threshold need a reward model"):
        rest_iteration_data(policy, None, [], random.Random(0), **SAMPLING, n=32,
                            hard_threshold=0.5)
