"""Reading a reward model: score positions, batching, aggregation and ROC-AUC."""
import math

import pytest
import torch

import e2h.score
from data.format import format_prompt
from e2h.score import aggregate, encode_completion, roc_auc, score_completions, step_and_outcome_auc

# the reward-model tests' solution, tokenizer fixture and model (tests/test_rm.py)
from test_rm import QUESTION, SOLUTION, STEPS, tiny_rm, tok  # noqa: E402,F401


def test_encode_completion_splits_one_tokenization(tok):
    prompt_ids, completion_ids = encode_completion(tok, QUESTION, SOLUTION)
    assert prompt_ids + completion_ids == tok.encode(format_prompt(QUESTION) + SOLUTION, bos=True)
    assert tok.decode(completion_ids) == SOLUTION


class PositionProbe(torch.nn.Module):
    """logit = t / 100 at position t, so a score says where it was read."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens, positions=None):
        B, T = tokens.shape
        return torch.arange(T, dtype=torch.float32).expand(B, T) / 100


def read_position(p):
    return round(100 * math.log(p / (1 - p)))


def test_score_positions_steps_and_answer(tok):
    prompt = tok.encode(format_prompt(QUESTION), bos=True)
    long = tok.encode(SOLUTION, eos=True)
    short = tok.encode("9\n\n# Answer\n\n9", eos=True)
    texts = tok.token_texts(long)
    # by hand: the two step delimiters are the first tokens starting with "\n", the answer is
    # the "4" just before EOS
    delims = [i for i, t in enumerate(texts) if t.startswith("\n")][:2]
    assert "".join(texts[:delims[0]]) == "7 + 5 = 12" and "".join(texts[:delims[1]]) == "7 + 5 = 12\n\n12 * 2 = 24"
    assert texts[-2] == "4" and texts[-1] == ""
    scored = score_completions(PositionProbe(), tok, [prompt, prompt], [long, short], batch_size=2)
    P = len(prompt)
    assert [read_position(p) for p in scored[0]["step_scores"]] == [P + d for d in delims]
    assert read_position(scored[0]["outcome_score"]) == P + len(long) - 2
    assert [read_position(p) for p in scored[1]["step_scores"]] == [P + 1]      # "9" then "\n\n"
    assert read_position(scored[1]["outcome_score"]) == P + len(short) - 2
    # no answer section: steps only, no outcome score
    open_ended = score_completions(PositionProbe(), tok, [prompt], [tok.encode("9\n\n3")])[0]
    assert [read_position(p) for p in open_ended["step_scores"]] == [P + 1]
    assert open_ended["outcome_score"] is None


def test_score_completions_batching_does_not_change_scores(tok):
    rm = tiny_rm(tok.vocab_size)
    with torch.no_grad():
        rm.score.weight.normal_()
    prompt = tok.encode(format_prompt(QUESTION), bos=True)
    completions = [tok.encode(SOLUTION, eos=True), tok.encode("9\n\n# Answer\n\n9"), tok.encode("3\n\n9")]
    one = score_completions(rm, tok, [prompt] * 3, completions, batch_size=1)
    three = score_completions(rm, tok, [prompt] * 3, completions, batch_size=3)
    for a, b in zip(one, three):
        assert len(a["step_scores"]) == len(b["step_scores"]) > 0
        assert all(abs(x - y) < 1e-6 for x, y in zip(a["step_scores"], b["step_scores"]))
        assert (a["outcome_score"] is None) == (b["outcome_score"] is None)
        if a["outcome_score"] is not None:
            assert abs(a["outcome_score"] - b["outcome_score"]) < 1e-6


def test_aggregate():
    steps = [0.9, 0.5, 0.8]
    assert aggregate(steps, 0.3, "min") == 0.5
    assert abs(aggregate(steps, 0.3, "prod") - 0.9 * 0.5 * 0.8) < 1e-12
    assert abs(aggregate(steps, 0.3, "mean") - (0.9 + 0.5 + 0.8) / 3) < 1e-12
    assert aggregate(steps, 0.3, "last") == 0.3             # the outcome score
    assert aggregate(steps, None, "last") == 0.8            # no answer: the last step
    assert aggregate([], 0.7, "min") == 0.7                 # no step before the answer
    assert aggregate([], None, "prod") == 0.0               # nothing to score
    with pytest.raises(ValueError, match="how='max'"):
        aggregate(steps, 0.3, "max")


def test_roc_auc_against_pair_counts():
    # positives {0.35, 0.8}, negatives {0.1, 0.4}: pairs won 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3/4
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # positives {0.5, 0.9}, negatives {0.5, 0.2}: 0.5=0.5 counts 1/2, 0.5>0.2, 0.9>0.5, 0.9>0.2 -> 3.5/4
    assert roc_auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == 0.875
    assert roc_auc([0.3, 0.3, 0.3], [1, 0, 1]) == 0.5        # all tied
    assert math.isnan(roc_auc([0.3, 0.4], [1, 1]))


def test_step_and_outcome_auc_pairs_scores_with_labels(tok, monkeypatch):
    records = [
        {"question": QUESTION, "steps": STEPS, "answer": "24", "step_labels": [1, 0], "outcome_label": 0},
        {"question": QUESTION, "steps": STEPS, "answer": None, "step_labels": [None, 1], "outcome_label": None},
        {"question": QUESTION, "steps": ["9"], "answer": "9", "step_labels": [1], "outcome_label": 1},
        {"question": QUESTION, "steps": STEPS, "answer": "3", "step_labels": [0, 0], "outcome_label": 1},
    ]
    fake = [{"step_scores": [0.9, 0.5], "outcome_score": 0.3},
            {"step_scores": [0.5, 0.4], "outcome_score": None},
            {"step_scores": [0.6], "outcome_score": 0.8},
            {"step_scores": [0.1, 0.1, 0.1], "outcome_score": 0.05}]   # 3 delimiters, 2 steps: skipped
    texts = []

    def fake_score(rm, tok_, prompts, completions, batch_size):
        texts.extend(tok.decode(c) for c in completions)
        return fake

    monkeypatch.setattr(e2h.score, "score_completions", fake_score)
    out = step_and_outcome_auc(None, tok, records)
    assert texts[1] == "7 + 5 = 12\n\n12 * 2 = 24\n\n"      # a last step gets its delimiter
    # steps: positives {0.9, 0.4, 0.6} vs negative {0.5}: 0.9 and 0.6 win -> 2/3
    assert abs(out["step_auc"] - 2 / 3) < 1e-12 and out["n_steps"] == 4
    # outcomes: positives {0.8, 0.05} vs negative {0.3}: 0.8 wins -> 1/2
    assert out["outcome_auc"] == 0.5 and out["n_outcomes"] == 3
