"""Reward model: zero-init head, weighted BCE, label masks, score positions, aggregation,
ROC-AUC and the ORM / PRM example builders."""
import math
import random

import pytest
import torch

import e2h.score
from data.format import format_prompt
from data.synthetic import label_solution
from e2h.model import ModelArgs, RewardModel, Transformer
from e2h.rm import encode_rm, loss_fn, orm_examples, prm_examples, rm_batch, rm_loss
from e2h.score import aggregate, encode_completion, roc_auc, score_completions, step_and_outcome_auc
from e2h.tokenizer import train_tokenizer

QUESTION = "Start at 7. Add 5, then double."
STEPS = ["7 + 5 = 12", "12 * 2 = 24"]
SOLUTION = "7 + 5 = 12\n\n12 * 2 = 24\n\n# Answer\n\n24"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = [format_prompt(QUESTION) + SOLUTION + "\n\n9\n\n3"] * 20
    return train_tokenizer(corpus, tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=60)


def tiny_rm(vocab_size=64):
    torch.manual_seed(0)
    return RewardModel(Transformer(ModelArgs.from_name("tiny", vocab_size=vocab_size)))


def test_zero_init_head_gives_one_half_everywhere():
    rm = tiny_rm()
    tokens = torch.randint(0, 64, (2, 7))
    p = torch.sigmoid(rm(tokens))
    assert p.shape == (2, 7) and p.dtype == torch.float32
    assert torch.equal(p, torch.full((2, 7), 0.5))
    assert not rm.trunk.lm_head.weight.requires_grad      # unused: frozen
    # a bf16 policy gives a bf16 head; the logits still come out in float32
    bf16 = RewardModel.from_policy(Transformer(ModelArgs.from_name("tiny")).bfloat16())
    assert bf16.score.weight.dtype == torch.bfloat16
    assert torch.equal(torch.sigmoid(bf16(tokens)), torch.full((2, 7), 0.5))


def test_from_policy_copies_the_trunk():
    policy = Transformer(ModelArgs.from_name("tiny"))
    rm = RewardModel.from_policy(policy)
    assert rm.trunk is not policy
    assert torch.equal(rm.trunk.layers[0].mlp.up_proj.weight, policy.layers[0].mlp.up_proj.weight)
    with torch.no_grad():
        rm.trunk.layers[0].mlp.up_proj.weight.add_(1.0)
    assert not torch.equal(rm.trunk.layers[0].mlp.up_proj.weight, policy.layers[0].mlp.up_proj.weight)
    assert policy.lm_head.weight.requires_grad             # the policy is left alone


def test_rm_loss_weighted_bce_by_hand():
    # logits (0, ln 3, -ln 3, 2), labels (1, 1, 0, 1), weights (1, 1, 0, 1):
    # BCE(0, 1) = ln 2; BCE(ln 3, 1) = -ln(3/4); token 3 is masked; BCE(2, 1) = ln(1 + e^-2)
    ln3 = math.log(3.0)
    logits = torch.tensor([[0.0, ln3, -ln3, 2.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    weights = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    expected = (math.log(2) - math.log(3 / 4) + math.log(1 + math.exp(-2))) / 3
    loss, metrics = rm_loss(logits, labels, weights)
    assert abs(loss.item() - expected) < 1e-6
    assert metrics["n_tokens"].item() == 3
    # p > 0.5 matches the label on tokens 2 and 4 (token 1 has p = 0.5 exactly: counted wrong)
    assert abs(metrics["accuracy"].item() - 2 / 3) < 1e-6
    assert abs(metrics["mean_p"].item() - (0.5 + 0.75 + 1 / (1 + math.exp(-2))) / 3) < 1e-6
    # the masked token's label does not matter
    labels[0, 2] = 1.0
    assert rm_loss(logits, labels, weights)[0].item() == loss.item()


def test_label_and_weight_masks_through_the_batch(tok):
    prm = {"question": QUESTION, "steps": STEPS, "answer": "24", "step_labels": [1, 0], "outcome_label": 0}
    orm = {"question": QUESTION, "steps": ["9"], "answer": "9", "step_labels": [None], "outcome_label": 1}
    batch = rm_batch([encode_rm(tok, prm), encode_rm(tok, orm)], tok.pad_id)
    assert batch["tokens"].dtype == torch.int64 and batch["labels"].dtype == torch.float32

    def labelled_text(row, label):
        texts = tok.token_texts(batch["tokens"][row].tolist())
        return "".join(t for t, y, w in zip(texts, batch["labels"][row].tolist(),
                                            batch["weights"][row].tolist()) if w == 1 and y == label)

    # PRM: step 1 and its "\n\n" positive; step 2, its "\n\n" and the answer take labels 0 / outcome 0
    assert labelled_text(0, 1.0) == "7 + 5 = 12\n\n"
    assert labelled_text(0, 0.0) == "12 * 2 = 24\n\n# Answer\n\n24"
    # ORM: the outcome on every solution token; prompt, BOS, EOS and the right padding weigh 0
    assert labelled_text(1, 1.0) == "9\n\n# Answer\n\n9"
    assert labelled_text(1, 0.0) == ""
    n_real = len(encode_rm(tok, orm)[0])
    assert batch["tokens"][1, n_real:].eq(tok.pad_id).all() and batch["weights"][1, n_real:].eq(0).all()
    loss, metrics = loss_fn(tiny_rm(tok.vocab_size), batch)
    assert abs(loss.item() - math.log(2)) < 1e-6          # zero head: p = 1/2 on every token
    assert metrics["n_tokens"].item() == batch["weights"].sum().item()


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


def sample(pid, correct, completion="1 + 1 = 2\n\n# Answer\n\n2"):
    return {"id": pid, "question": f"question {pid}", "completion": completion, "answer": "2",
            "correct": correct, "level": 2, "step_scores": [], "outcome_score": None}


def test_orm_examples_rebalance_each_problem():
    samples = ([sample("A", True)] * 8 + [sample("A", False)]          # 8:1 -> 3:1
               + [sample("B", True)] + [sample("B", False)] * 5        # 1:5 -> 1:3
               + [sample("C", True)] * 3                               # one class: dropped
               + [sample("D", True), sample("D", False)] * 2           # 2:2 kept whole
               + [sample("E", None)] * 2)                              # no reference: skipped
    records = orm_examples(samples, random.Random(0), max_ratio=3)
    count = {}
    for r in records:
        count[(r["id"], r["outcome_label"])] = count.get((r["id"], r["outcome_label"]), 0) + 1
    assert count == {("A", 1): 3, ("A", 0): 1, ("B", 1): 1, ("B", 0): 3, ("D", 1): 2, ("D", 0): 2}
    assert records[0] == {"id": "A", "question": "question A", "steps": ["1 + 1 = 2"], "answer": "2",
                          "step_labels": [None], "outcome_label": 1, "level": 2}
    assert orm_examples(samples, random.Random(0)) == records            # seeded
    ones = orm_examples(samples, random.Random(0), max_ratio=1)
    assert sum(r["id"] == "A" for r in ones) == 2


def test_prm_examples_use_the_program_labels():
    problem = {"id": "p", "question": "Start at 73. Apply -2/+6, +0/-0, -0/+0, -6/-4, "
                                      "+8/-2 (mod 100); each result must be prime.",
               "answer": "71", "level": 3}
    # step 4 is wrong (79-6 is 73); step 5 is judged from the 74 it carries: 74-2=72 is
    # right arithmetic but 72 is not prime
    completion = "73+6=79\n\n79+0=79\n\n79-0=79\n\n79-6=74\n\n74-2=72\n\n# Answer\n\n72"
    records = prm_examples([sample("p", False, completion)], [problem], label_solution)
    assert records[0]["step_labels"] == [1, 1, 1, 0, 0] and records[0]["outcome_label"] == 0
    assert records[0]["steps"][3] == "79-6=74" and records[0]["answer"] == "72"
    with pytest.raises(ValueError, match="5 steps but 2 step labels"):
        prm_examples([sample("p", False, completion)], [problem], lambda p, c: ([1, 1], 0))
    with pytest.raises(ValueError, match="sample id 'q' is not among the problems"):
        prm_examples([sample("q", False, completion)], [problem], label_solution)


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
