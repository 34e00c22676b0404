"""RoPE inverse frequencies of every supported scaling, worked out by hand on D = 8, theta = 1e4
(plain table 1, 0.1, 0.01, 0.001), and the config keys they are read from and written to."""
import json
import math

import pytest
import torch

from e2h.model import ModelArgs, rope_cos_sin
from e2h.rope import attention_scale, check_rope_scaling, hf_rope_keys, inv_freq, read_hf_rope

PLAIN = [1.0, 0.1, 0.01, 0.001]                   # 1e4 ** (-2i / 8), i = 0..3
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def table(scaling):
    return inv_freq(8, 1e4, scaling).double()


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-6, atol=0)


def test_plain_linear_and_dynamic_tables():
    close(table(None), PLAIN)
    close(table({"rope_type": "linear", "factor": 4.0}), [f / 4 for f in PLAIN])
    # dynamic raises theta only past max_position_embeddings, where e2h never runs
    close(table({"rope_type": "dynamic", "factor": 4.0}), PLAIN)


def test_llama3_table():
    # wavelengths 2 pi / f = 6.28, 62.8, 628, 6283; L = 64: above L / 1 = 64 divide by 8,
    # below L / 4 = 16 keep, between (62.8 only) blend with s = (L / wavelength - 1) / (4 - 1)
    s = (64 / (2 * math.pi / 0.1) - 1) / 3                          # = 0.00620
    close(table(LLAMA3), [1.0, (1 - s) * 0.1 / 8 + s * 0.1, 0.01 / 8, 0.001 / 8])


def yarn_dim(n):
    """The dimension index that turns n times in 64 positions: 8 ln(64 / (2 pi n)) / (2 ln 1e4)."""
    return 8 * math.log(64 / (2 * math.pi * n)) / (2 * math.log(1e4))


def test_yarn_table_and_attention_scale():
    # beta_fast 32 -> dim -0.497, floor -1, clipped to 0; beta_slow 1 -> dim 1.008, ceil 2.
    # ramp (i - 0) / (2 - 0) = 0, 0.5, 1, 1: i = 0 keeps its frequency, i >= 2 is divided by 4
    assert (math.floor(yarn_dim(32)), math.ceil(yarn_dim(1))) == (-1, 2)
    close(table(YARN), [1.0, 0.5 * 0.1 / 4 + 0.5 * 0.1, 0.01 / 4, 0.001 / 4])
    assert attention_scale(YARN) == pytest.approx(0.1 * math.log(4) + 1, rel=1e-12)   # 1.1386


def test_yarn_without_truncation_and_with_its_other_keys():
    # truncate False: the ramp runs from 0 (clipped -0.497) to 1.008: i = 1 is 1 / 1.008 interpolated
    r = 1 / yarn_dim(1)
    close(table({**YARN, "truncate": False}),
          [1.0, r * 0.1 / 4 + (1 - r) * 0.1, 0.01 / 4, 0.001 / 4])
    # beta_fast 8 -> dim 8 ln(64 / (16 pi)) / 18.42 = 0.105, floor 0: the same integer ramp
    close(table({**YARN, "beta_fast": 8.0}), table(YARN).tolist())
    mscale = {**YARN, "mscale": 0.707, "mscale_all_dim": 1.0}
    assert attention_scale(mscale) == pytest.approx(
        (0.1 * 0.707 * math.log(4) + 1) / (0.1 * 1.0 * math.log(4) + 1), rel=1e-12)   # 0.9643
    assert attention_scale({**YARN, "mscale": 0.707}) == attention_scale(YARN)        # needs both
    assert attention_scale({**YARN, "attention_factor": 1.3}) == 1.3
    assert attention_scale({"rope_type": "linear", "factor": 4.0}) == 1.0


def test_cos_and_sin_carry_the_yarn_attention_scale():
    cos, sin = rope_cos_sin(torch.tensor([[0, 3]]), 8, 1e4, YARN)           # (1, 1, 2, 8)
    scale = 0.1 * math.log(4) + 1
    torch.testing.assert_close(cos[0, 0, 0], torch.full((8,), scale), rtol=1e-6, atol=0)
    # position 3, i = 1: angle 3 * 0.0625
    torch.testing.assert_close(sin[0, 0, 1, 1], torch.tensor(scale * math.sin(3 * 0.0625)),
                               rtol=1e-6, atol=0)


@pytest.mark.parametrize("scaling, words", [
    ({"rope_type": "longrope", "short_factor": [1.0]}, ["rope_type='longrope'", "not supported"]),
    ({"rope_type": "yarn", "factor": 4.0}, ["needs 'original_max_position_embeddings'"]),
    ({**YARN, "extrapolation": 2.0}, ["key 'extrapolation'=2.0", "not understood"]),
    ({"rope_type": "default", "factor": 2.0}, ["key 'factor'=2.0", "'default'"]),
    ({"rope_type": "linear", "factor": "2"}, ["factor='2'", "not valid"]),
    ({**LLAMA3, "high_freq_factor": 1.0}, ["high_freq_factor=1.0 must exceed"]),
])
def test_anything_not_computed_is_refused_in_one_line(scaling, words):
    with pytest.raises(ValueError) as e:
        check_rope_scaling(scaling, "config.json: rope_parameters")
    message = str(e.value)
    assert message.startswith("config.json: rope_parameters: ") and "\n" not in message
    assert all(w in message for w in words), message
    with pytest.raises(ValueError, match="ModelArgs.rope_scaling"):
        ModelArgs.from_name("tiny", rope_scaling=scaling)


# ---- config keys: transformers 4.x (rope_theta, rope_scaling) and 5.x (rope_parameters) ----

def read(**cfg):
    return read_hf_rope(cfg, "config.json", 256)


def test_both_generations_of_keys_read_alike():
    assert read() == (1e4, None)                                          # HF's default theta
    assert read(rope_theta=1e6, rope_scaling=None) == (1e6, None)         # 4.x
    assert read(rope_parameters={"rope_theta": 1e6, "rope_type": "default"}) == (1e6, None)   # 5.x
    linear = {"rope_type": "linear", "factor": 2.0}
    assert read(rope_theta=1e6, rope_scaling={"type": "linear", "factor": 2.0}) == (1e6, linear)
    assert read(rope_parameters={"rope_theta": 1e6, **linear}) == (1e6, linear)
    # yarn and llama3 without an original length use max_position_embeddings, as transformers 5
    assert read(rope_parameters={"rope_type": "yarn", "factor": 4.0})[1] == {
        **YARN, "original_max_position_embeddings": 256}
    both = {"rope_theta": 1e4, "rope_scaling": YARN, "rope_parameters": {**YARN, "rope_theta": 1e4}}
    assert read(**both) == (1e4, YARN)
    assert read(**hf_rope_keys(1e4, YARN)) == (1e4, YARN) and hf_rope_keys(1e4, YARN) == both
    assert json.loads(json.dumps(hf_rope_keys(5e5, None))) == {
        "rope_theta": 5e5, "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
    whole_head = {"rope_type": "default", "partial_rotary_factor": 1.0}
    assert read(rope_parameters=whole_head) == (1e4, None)


@pytest.mark.parametrize("cfg, words", [
    ({"rope_theta": 1e4, "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}},
     ["rope_theta=10000.0 and rope_parameters.rope_theta=1000000.0 disagree"]),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0},
      "rope_parameters": {"rope_type": "linear", "factor": 4.0}}, ["rope_scaling", "disagree"]),
    ({"rope_scaling": {"type": "linear", "rope_type": "dynamic", "factor": 2.0}},
     ["rope_scaling.type and rope_scaling.rope_type disagree"]),
    ({"rope_parameters": {"rope_type": "longrope", "factor": 2.0}},
     ["config.json: rope_parameters: rope_type='longrope' is not supported"]),
    ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}},
     ["key 'partial_rotary_factor'=0.5"]),
    ({"rope_scaling": [2.0]}, ["rope_scaling=[2.0] is not a dict"]),
    ({"original_max_position_embeddings": 32, "rope_parameters": YARN},
     ["original_max_position_embeddings=32", "=64 disagree"]),
])
def test_keys_that_would_read_differently_are_refused(cfg, words):
    with pytest.raises(ValueError) as e:
        read(**cfg)
    message = str(e.value)
    assert message.startswith("config.json: ") and all(w in message for w in words), message
