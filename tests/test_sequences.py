"""The log-probs every objective shares: per-token log-probs by hand, right-padding collation,
and summed completion log-probs against each sequence scored alone."""
import math

import pytest
import torch
import torch.nn.functional as F

from e2h.model import ModelArgs, Transformer
from e2h.sequences import collate, sequence_logps, token_logps

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


def test_collate_pads_right_and_keeps_dtype():
    t = collate([[5, 6, 7], [8]], pad_value=0)
    assert t.dtype == torch.int64 and t.tolist() == [[5, 6, 7], [8, 0, 0]]
    f = collate([[0.5], [1.0, 0.25]], pad_value=0.0)
    assert f.dtype == torch.float32 and f.tolist() == [[0.5, 0.0], [1.0, 0.25]]
    assert collate([[1, 2, 3], [4]], pad_value=9, max_len=2).tolist() == [[1, 2], [4, 9]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(ModelArgs.from_name("tiny"))


# [BOS, prompt..., completion..., EOS] with loss masks on completion + EOS (as tokenize_sft)
ROWS = [([1, 5, 6, 7, 8, 2], [0, 0, 0, 1, 1, 1]), ([1, 10, 11, 2], [0, 0, 1, 1]),
        ([1, 5, 6, 9, 2], [0, 0, 0, 1, 1]), ([1, 10, 12, 13, 14, 15, 2], [0, 0, 1, 1, 1, 1, 1])]


def test_sequence_logps_sums_completion_tokens(model):
    tokens = collate([t for t, _ in ROWS], pad_value=0)            # (4, 7), right-padded
    loss_mask = collate([m for _, m in ROWS], pad_value=0)
    got = sequence_logps(model, tokens, loss_mask)
    with torch.no_grad():
        for row, (e, mask) in enumerate(ROWS):
            logps = F.log_softmax(model(torch.tensor([e]))[0], -1)       # alone, no padding
            expected = sum(logps[t - 1, e[t]] for t in range(1, len(e)) if mask[t])
            # sums of ~20 nats: fp32 spacing there is 2e-6, so the 1e-6 budget is relative
            torch.testing.assert_close(got[row], expected, rtol=1e-6, atol=1e-6)


def test_zero_completion_tokens_is_an_error(model):
    tokens = torch.tensor([[1, 5, 6, 2], [1, 5, 6, 2]])
    loss_mask = torch.tensor([[0, 0, 1, 1], [1, 0, 0, 0]])   # row 1: only BOS, never a target
    with pytest.raises(ValueError, match="sequence 1 has no completion tokens"):
        sequence_logps(model, tokens, loss_mask)
