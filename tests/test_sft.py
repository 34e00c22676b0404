"""SFT loss, token log-probs, collation, frozen parameters and the few-shot (ICL) baseline."""
import math
import random

import pytest
import torch

import e2h.sample
from e2h.icl import evaluate_icl, extract_icl_answer, icl_prompt, pick_exemplars
from e2h.model import ModelArgs, Transformer
from e2h.sample import Sample
from e2h.sequences import collate, token_logps
from e2h.sft import freeze_embeddings, loss_fn, sft_batch, sft_loss

LN3 = math.log(3.0)


def test_token_logps_by_hand():
    # V = 2. Position 0 logits (0, ln 3): p = (1/4, 3/4); position 1 logits (ln 2, 0): p = (2/3, 1/3).
    logits = torch.tensor([[[0.0, LN3], [math.log(2.0), 0.0], [5.0, 5.0]]])   # (1, 3, 2)
    tokens = torch.tensor([[0, 1, 0]])                                        # predict 1, then 0
    expected = torch.tensor([[math.log(3 / 4), math.log(2 / 3)]])
    assert torch.allclose(token_logps(logits, tokens), expected, atol=1e-6)
    # temperature 2 halves the logits: p(1) = sqrt(3) / (1 + sqrt(3)), p(0) = sqrt(2) / (sqrt(2) + 1)
    s3, s2 = math.sqrt(3), math.sqrt(2)
    expected_t2 = torch.tensor([[math.log(s3 / (1 + s3)), math.log(s2 / (s2 + 1))]])
    assert torch.allclose(token_logps(logits, tokens, temperature=2.0), expected_t2, atol=1e-6)


def test_token_logps_float32_for_bf16_logits():
    logits = torch.tensor([[[0.0, LN3], [0.0, 0.0]]]).bfloat16()              # (1, 2, 2)
    out = token_logps(logits, torch.tensor([[0, 1]]))
    assert out.dtype == torch.float32
    # bf16 keeps 7 fraction bits: ln 3 = 1.0986 = 1 + 12.6/128 is stored as 1 + 13/128;
    # log p(1) = b - log(1 + e^b), computed in float32 from that value
    b = 1 + 13 / 128
    assert abs(out.item() - (b - math.log(1 + math.exp(b)))) < 1e-6


def test_sft_loss_averages_over_target_tokens():
    # Batch of 2 sequences, T = 3, V = 2. Every position has logits (0, ln 3): log p(1) = ln 3/4,
    # log p(0) = ln 1/4. Targets (mask on tokens 1..2): row 0 predicts 1 and 0, row 1 predicts 1
    # (its last token is masked).
    logits = torch.tensor([0.0, LN3]).expand(2, 3, 2)
    tokens = torch.tensor([[1, 1, 0], [0, 1, 1]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    a, b = math.log(3 / 4), math.log(1 / 4)
    expected = -(a + b + a) / 3                 # 3 target tokens, each weighted 1/3
    per_sequence_mean = -((a + b) / 2 + a) / 2  # the alternative, NOT used
    loss, metrics = sft_loss(logits, tokens, mask)
    assert abs(loss.item() - expected) < 1e-6
    assert abs(expected - per_sequence_mean) > 0.09
    assert metrics["n_tokens"].item() == 3
    # greedy predicts token 1 everywhere: right on 2 of the 3 targets
    assert abs(metrics["mean_token_accuracy"].item() - 2 / 3) < 1e-6
    assert not metrics["nll"].requires_grad


def test_sft_loss_ignores_masked_positions():
    logits = torch.tensor([0.0, LN3]).expand(1, 3, 2).clone()
    tokens = torch.tensor([[1, 1, 0]])
    mask = torch.tensor([[0, 1, 0]])
    loss, _ = sft_loss(logits, tokens, mask)
    logits[0, 1] = torch.tensor([9.0, -9.0])     # the logits that predict the masked token
    loss_changed, _ = sft_loss(logits, tokens, mask)
    assert abs(loss.item() - (-math.log(3 / 4))) < 1e-6
    assert loss_changed.item() == loss.item()


def test_collate_pads_right_and_keeps_dtype():
    t = collate([[5, 6, 7], [8]], pad_value=0)
    assert t.dtype == torch.int64 and t.tolist() == [[5, 6, 7], [8, 0, 0]]
    f = collate([[0.5], [1.0, 0.25]], pad_value=0.0)
    assert f.dtype == torch.float32 and f.tolist() == [[0.5, 0.0], [1.0, 0.25]]
    assert collate([[1, 2, 3], [4]], pad_value=9, max_len=2).tolist() == [[1, 2], [4, 9]]
    batch = sft_batch([([1, 5, 6, 2], [0, 0, 1, 1]), ([1, 7], [0, 1])], pad_id=0)
    assert batch["tokens"].tolist() == [[1, 5, 6, 2], [1, 7, 0, 0]]
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]   # pads are never targets


def test_loss_fn_and_frozen_parameters():
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("tiny"))
    frozen = freeze_embeddings(model)
    assert frozen == ["embed_tokens.weight", "layers.0.input_layernorm.weight",
                      "layers.0.post_attention_layernorm.weight", "layers.1.input_layernorm.weight",
                      "layers.1.post_attention_layernorm.weight", "norm.weight", "lm_head.weight"]
    batch = {"tokens": torch.tensor([[1, 5, 6, 2]]), "loss_mask": torch.tensor([[0, 0, 1, 1]])}
    loss, _ = loss_fn(model, batch)
    expected, _ = sft_loss(model(batch["tokens"]), batch["tokens"], batch["loss_mask"])
    assert loss.item() == expected.item()
    loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is None) == (name in frozen), name


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
                      max_rows):
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
