"""The reward-model objective: weighted per-token BCE, label masks through the batch, and the
ORM / PRM example builders."""
import math
import random

import pytest
import torch

from data.format import format_prompt
from data.synthetic import label_solution
from e2h.model import ModelArgs, RewardModel, Transformer
from e2h.rm import encode_rm, loss_fn, orm_examples, prm_examples, rm_batch, rm_loss
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
