"""The hand-written Llama: norms, RoPE, GQA, causality, caches with rows of different lengths, presets;
the reward model's zero-initialized head."""
import ast
import math
from pathlib import Path

import pytest
import torch

from e2h.kv_cache import KVCache
from e2h.model import ModelArgs, RewardModel, RMSNorm, Transformer, apply_rope, rope_cos_sin


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(ModelArgs.from_name("tiny"))
    m.init_weights(std=0.3)
    return m


def test_rmsnorm_by_hand():
    norm = RMSNorm(2, eps=0.5)
    norm.weight.data = torch.tensor([1.0, 2.0])
    # mean of squares (9 + 16) / 2 = 12.5; + eps = 13; x / sqrt(13) * weight
    out = norm(torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(out, torch.tensor([[3 / math.sqrt(13), 8 / math.sqrt(13)]]),
                               rtol=0, atol=1e-6)


def test_rope_rotates_halves_by_hand():
    # D = 4, theta 100: frequencies 100^(-0/4) = 1 and 100^(-2/4) = 0.1. Pairs are (x0, x2) and
    # (x1, x3) (rotate-half); at position 2 they turn by angles 2 and 0.2.
    cos, sin = rope_cos_sin(torch.tensor([[2]]), head_dim=4, theta=100.0)   # (1, 1, 1, 4)
    x = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 1, 4)
    out = apply_rope(x, cos, sin).flatten()
    # (x0, x2) = (1, 0) -> (cos 2, sin 2);  (x1, x3) = (0, 1) -> (-sin 0.2, cos 0.2)
    expected = torch.tensor([math.cos(2), -math.sin(0.2), math.sin(2), math.cos(0.2)])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)

    def score(m, n):
        cq, sq = rope_cos_sin(torch.tensor([[m]]), 8, 1e4)
        ck, sk = rope_cos_sin(torch.tensor([[n]]), 8, 1e4)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()

    assert score(7, 3) == pytest.approx(score(104, 100), abs=1e-5)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)


def test_hidden_then_logits_equals_forward_and_logits_are_float32(model):
    tokens = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(model.logits(model.hidden(tokens)), model(tokens))
    bf16 = Transformer(model.args).to(torch.bfloat16)
    assert bf16(tokens).dtype == torch.float32


def test_causal_a_later_token_does_not_change_earlier_logits(model):
    a = model(torch.tensor([[1, 2, 3, 4, 5]]))
    b = model(torch.tensor([[1, 2, 3, 9, 5]]))
    assert torch.equal(a[:, :3], b[:, :3]) and not torch.allclose(a[:, 3:], b[:, 3:])


def test_gqa_equals_multi_head_with_repeated_kv_heads(model):
    """2 key/value heads shared by 4 query heads == 4 heads whose k/v weights repeat in pairs."""
    mha = Transformer(ModelArgs.from_name("tiny", n_kv_heads=4))
    state = model.state_dict()
    for name, w in state.items():
        if name.endswith(("k_proj.weight", "v_proj.weight")):   # (Hkv * D, C) -> (H * D, C)
            D = model.args.head_dim
            state[name] = w.view(2, D, -1).repeat_interleave(2, dim=0).reshape(4 * D, -1)
    mha.load_state_dict(state)
    tokens = torch.tensor([[1, 7, 3, 12, 40]])
    torch.testing.assert_close(mha(tokens), model(tokens), rtol=0, atol=1e-6)


def test_tied_embeddings_use_the_embedding_as_output():
    torch.manual_seed(0)
    tied = Transformer(ModelArgs.from_name("tiny", tie_embeddings=True))
    tokens = torch.tensor([[1, 2, 3]])
    assert tied.lm_head is None
    torch.testing.assert_close(tied(tokens), tied.hidden(tokens) @ tied.embed_tokens.weight.T,
                               rtol=0, atol=1e-6)


def test_rows_of_a_cache_filled_to_different_lengths_equal_each_row_alone(model):
    # Row 0 holds a 3-token prompt right-padded to 5: causal attention keeps the padding out of
    # its real tokens, and lengths = 3 masks the padding slots out of every later step.
    padded = torch.tensor([[5, 6, 7, 0, 0], [1, 2, 3, 4, 8]])
    cache = KVCache(model.args, 2, 7, torch.float32, "cpu")
    out = model(padded, cache=cache)                                  # (2, 5, V)
    torch.testing.assert_close(out[0, :3], model(torch.tensor([[5, 6, 7]]))[0], rtol=0, atol=1e-5)
    cache.lengths = torch.tensor([3, 5])
    step = model(torch.tensor([[9], [9]]), cache=cache)               # slots 3 and 5, positions too
    torch.testing.assert_close(step[0, 0], model(torch.tensor([[5, 6, 7, 9]]))[0, -1],
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(step[1, 0], model(torch.tensor([[1, 2, 3, 4, 8, 9]]))[0, -1],
                               rtol=0, atol=1e-5)
    assert cache.lengths.tolist() == [4, 6] and cache.length == 6


def test_parameter_names_mirror_hf_llama(model):
    names = set(dict(model.named_parameters()))
    assert {"embed_tokens.weight", "norm.weight", "lm_head.weight",
            "layers.1.self_attn.k_proj.weight", "layers.1.mlp.gate_proj.weight",
            "layers.1.input_layernorm.weight", "layers.1.post_attention_layernorm.weight"} <= names
    assert len(names) == 3 + 2 * 9


def test_llemma_7b_preset_has_the_published_parameter_count():
    with torch.device("meta"):
        m = Transformer(ModelArgs.from_name("llemma-7b"))
    C, F, V, L = 4096, 11008, 32016, 32
    per_layer = 4 * C * C + 3 * C * F + 2 * C                       # attention, SwiGLU, two norms
    assert sum(p.numel() for p in m.parameters()) == 2 * V * C + L * per_layer + C == 6_738_546_688


def test_model_never_imports_torch_distributed():
    tree = ast.parse((Path(__file__).resolve().parents[1] / "e2h" / "model.py").read_text())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert "torch" in modules and not any(m.startswith("torch.distributed") for m in modules)


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
