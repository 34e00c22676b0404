"""The SFT loss by hand, its batches, and the frozen embeddings, norms and LM head."""
import math

import torch

from e2h.model import ModelArgs, Transformer
from e2h.sft import freeze_embeddings, loss_fn, sft_batch, sft_loss

LN3 = math.log(3.0)


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


def test_sft_batch_pads_are_never_targets():
    batch = sft_batch([([1, 5, 6, 2], [0, 0, 1, 1]), ([1, 7], [0, 1])], pad_id=0)
    assert batch["tokens"].tolist() == [[1, 5, 6, 2], [1, 7, 0, 0]]
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]


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
