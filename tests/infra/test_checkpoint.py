"""HF-layout checkpoints: round trips, a hand-built HF Llama checkpoint against an independent
float64 implementation of HF's forward, and one test per kind of bad checkpoint."""
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from e2h.hf.checkpoint import check_tokenizer, load_model, main, save_model
from e2h.model import ModelArgs, RewardModel, Transformer
from e2h.tokenizer import train_tokenizer

TOKENS = torch.tensor([[1, 5, 9, 3, 17, 33, 2, 8, 8, 21, 0, 39]])   # (1, 12)


def tiny(dtype=torch.float32, **overrides):
    torch.manual_seed(0)
    return Transformer(ModelArgs.from_name("tiny", **overrides)).to(dtype)


# ---- round trips ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip_gives_identical_logits(tmp_path, dtype):
    model = tiny(dtype)
    save_model(model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.embed_tokens.weight.dtype == dtype and loaded.args == model.args
    assert torch.equal(loaded(TOKENS), model(TOKENS))
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert (cfg["architectures"], cfg["model_type"], cfg["torch_dtype"]) == (
        ["LlamaForCausalLM"], "llama", str(dtype)[6:])
    assert (cfg["hidden_size"], cfg["num_key_value_heads"], cfg["intermediate_size"]) == (32, 2, 64)


def test_sharded_and_tied_round_trip_and_rewrite_keeps_other_files(tmp_path):
    model = tiny(tie_embeddings=True)
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "tokenizer.json").write_text("{}")
    save_model(model, out, max_shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert "lm_head.weight" not in index["weight_map"]                  # tied: no LM head tensor
    assert index["metadata"]["total_size"] == 4 * sum(p.numel() for p in model.parameters())
    loaded = load_model(out)
    assert loaded.lm_head is None and torch.equal(loaded(TOKENS), model(TOKENS))
    save_model(model, out)                                             # now one file: no stale shards
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]      # no temporary left behind


def test_reward_model_round_trip(tmp_path):
    rm = RewardModel(tiny())
    torch.nn.init.normal_(rm.score.weight)
    torch.nn.init.normal_(rm.score.bias)
    save_model(rm, tmp_path / "rm")
    keys = load_file(tmp_path / "rm" / "model.safetensors").keys()
    assert {"score.weight", "score.bias"} <= keys and "lm_head.weight" not in keys
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["architectures"] == [
        "LlamaForTokenClassification"]
    loaded = load_model(tmp_path / "rm")
    assert isinstance(loaded, RewardModel) and torch.equal(loaded(TOKENS), rm(TOKENS))


# ---- a checkpoint written by hand in HF's layout, against HF's definition ------------------

HF_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
             "intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4,
             "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
             "vocab_size": 40, "max_position_embeddings": 64, "tie_word_embeddings": False,
             "torch_dtype": "bfloat16", "hidden_act": "silu"}


def hf_state(cfg):
    g = torch.Generator().manual_seed(0)
    C, F_, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * C // cfg["num_attention_heads"]
    rand = lambda *shape, std=0.2: (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)
    sd = {"model.embed_tokens.weight": rand(V, C, std=1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd.update({p + "self_attn.q_proj.weight": rand(C, C),
                   p + "self_attn.k_proj.weight": rand(kv, C),
                   p + "self_attn.v_proj.weight": rand(kv, C),
                   p + "self_attn.o_proj.weight": rand(C, C),
                   p + "mlp.gate_proj.weight": rand(F_, C), p + "mlp.up_proj.weight": rand(F_, C),
                   p + "mlp.down_proj.weight": rand(C, F_),
                   p + "input_layernorm.weight": 1 + rand(C, std=0.1),
                   p + "post_attention_layernorm.weight": 1 + rand(C, std=0.1)})
    sd["model.norm.weight"] = 1 + rand(C, std=0.1)
    sd["lm_head.weight"] = rand(V, C)
    return sd


def hf_llama_hidden(sd, cfg, tokens, inv_freq=None, scale=1.0):
    """LlamaModel's forward in float64 for one sequence, final norm included: rotate-half RoPE
    (``inv_freq`` (D/2,), default theta ** (-2i / D); cos and sin times ``scale``), repeat_kv,
    eager softmax attention, RMSNorm, SwiGLU."""
    w = {k: v.double() for k, v in sd.items()}
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D, T = cfg["hidden_size"] // H, len(tokens)
    rms = lambda x, g: g * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg["rms_norm_eps"])
    if inv_freq is None:
        inv_freq = 1.0 / cfg["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), torch.as_tensor(
        inv_freq, dtype=torch.float64))                                          # (T, D/2)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    cos, sin = cos * scale, sin * scale
    rotate_half = lambda x: torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1)
    mask = torch.full((T, T), -math.inf, dtype=torch.float64).triu(1)
    x = w["model.embed_tokens.weight"][tokens]                                    # (T, C)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(T, H, D).transpose(0, 1)    # (H, T, D)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(T, Hkv, D).transpose(0, 1)  # (Hkv, T, D)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(T, Hkv, D).transpose(0, 1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k = k[:, None].expand(Hkv, H // Hkv, T, D).reshape(H, T, D)                  # repeat_kv
        v = v[:, None].expand(Hkv, H // Hkv, T, D).reshape(H, T, D)
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(D) + mask, -1) @ v      # (H, T, D)
        x = x + attn.transpose(0, 1).reshape(T, H * D) @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        x = x + (F.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)
                 ) @ w[p + "mlp.down_proj.weight"].T
    return rms(x, w["model.norm.weight"])                                        # (T, C)


def hf_llama_logits(sd, cfg, tokens, inv_freq=None, scale=1.0):
    """LlamaForCausalLM's logits (T, V) in float64."""
    return hf_llama_hidden(sd, cfg, tokens, inv_freq, scale) @ sd["lm_head.weight"].double().T


def write_hf_checkpoint(path, cfg, sd):
    """Three shards + index, as transformers' save_pretrained lays them out."""
    path.mkdir()
    groups = [[k for k in sd if k.startswith(("model.embed", "model.layers.0."))],
              [k for k in sd if k.startswith("model.layers.1.")],
              [k for k in sd if k.startswith(("model.layers.2.", "model.norm", "lm_head",
                                               "score"))]]
    weight_map = {}
    for i, keys in enumerate(groups):
        name = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({k: sd[k] for k in keys}, str(path / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps(cfg))


def test_hand_built_hf_checkpoint_matches_hf_llama_definition(tmp_path):
    sd = hf_state(HF_CONFIG)
    write_hf_checkpoint(tmp_path / "hf", HF_CONFIG, sd)
    as_stored = load_model(tmp_path / "hf")                            # default: dtype on disk
    assert as_stored.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(as_stored.layers[2].mlp.down_proj.weight,
                       sd["model.layers.2.mlp.down_proj.weight"])
    model = load_model(tmp_path / "hf", dtype=torch.float32)
    assert (model.args.n_kv_heads, model.args.rope_theta, model.args.norm_eps) == (2, 1e6, 1e-6)
    tokens = TOKENS[0]
    expected = hf_llama_logits(sd, HF_CONFIG, tokens)
    assert expected.abs().max() > 1                                    # logits far from zero
    # float32 against float64 on the same bf16 weights: float32 rounding over 3 layers, about
    # 1.6e-6 at |logit| ~ 5 (a theta of 1e4 instead of 1e6 moves logits by 0.5)
    torch.testing.assert_close(model(tokens[None])[0].double(), expected, rtol=0, atol=1e-5)


# D = 8: plain table 1e4 ** (-2i / 8) = 1, 0.1, 0.01, 0.001 (worked out in tests/test_rope.py).
# llama3 (factor 8, L 64): keep 1, blend 0.1 with s = (64 / (2 pi / 0.1) - 1) / 3, divide the rest.
S = (64 / (2 * math.pi / 0.1) - 1) / 3
ROPE_CONFIGS = {
    "transformers 5, theta 1e6": ({"rope_theta": None, "rope_parameters": {
        "rope_type": "default", "rope_theta": 1e6}}, None, 1.0),
    "yarn in rope_parameters": ({"rope_theta": None, "rope_parameters": {
        "rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0,
        "original_max_position_embeddings": 64}}, [1.0, 0.0625, 0.0025, 0.00025],
        0.1 * math.log(4) + 1),
    "llama3 in legacy rope_scaling": ({"rope_theta": 1e4, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}}, [1.0, (1 - S) * 0.1 / 8 + S * 0.1, 0.01 / 8,
                                                   0.001 / 8], 1.0),
    "linear in legacy type": ({"rope_theta": 1e4, "rope_scaling": {
        "type": "linear", "factor": 4.0}}, [0.25, 0.025, 0.0025, 0.00025], 1.0),
}


@pytest.mark.parametrize("name", ROPE_CONFIGS)
def test_rope_keys_of_both_transformers_generations_give_hf_llama_logits(tmp_path, name):
    patch, table, scale = ROPE_CONFIGS[name]
    cfg = {k: v for k, v in {**HF_CONFIG, **patch}.items() if v is not None}
    sd = hf_state(cfg)
    write_hf_checkpoint(tmp_path / "hf", cfg, sd)
    model = load_model(tmp_path / "hf", dtype=torch.float32)
    theta = (patch.get("rope_parameters") or patch)["rope_theta"]
    expected = hf_llama_logits(sd, {**cfg, "rope_theta": theta}, TOKENS[0], table, scale)
    plain = hf_llama_logits(sd, {**cfg, "rope_theta": 1e4}, TOKENS[0])
    assert (expected - plain).abs().max() > 0.1                        # the RoPE keys matter
    torch.testing.assert_close(model(TOKENS)[0].double(), expected, rtol=0, atol=1e-5)
    save_model(model, tmp_path / "again")                              # and survive a round trip
    assert load_model(tmp_path / "again").args == model.args


def test_sequence_classification_reward_model_loads_scored_like_hf(tmp_path):
    cfg = {**HF_CONFIG, "architectures": ["LlamaForSequenceClassification"],
           "id2label": {"0": "LABEL_0"}, "pad_token_id": 0}
    sd = hf_state(cfg)
    del sd["lm_head.weight"]
    sd["score.weight"] = (torch.randn(1, 32, generator=torch.Generator().manual_seed(1))
                          ).to(torch.bfloat16)                          # no bias, as in HF
    write_hf_checkpoint(tmp_path / "seq", cfg, sd)
    rm = load_model(tmp_path / "seq", dtype=torch.float32)
    assert isinstance(rm, RewardModel) and rm.score.bias.item() == 0
    # HF reads the sequence classifier at the last token: score . hidden state there, the same
    # number e2h gives at that position (and at every earlier one, for the prefix ending there)
    expected = hf_llama_hidden(sd, cfg, TOKENS[0]) @ sd["score.weight"].double()[0]   # (T,)
    torch.testing.assert_close(rm(TOKENS)[0].double(), expected, rtol=0, atol=1e-5)
    save_model(rm, tmp_path / "rm")                                    # e2h's own layout from here
    cfg_out = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert cfg_out["architectures"] == ["LlamaForTokenClassification"]
    assert torch.equal(load_model(tmp_path / "rm")(TOKENS), rm(TOKENS))


def test_two_label_token_classifier_is_a_prm_reading_label_1(tmp_path):
    # TRL's PRM: AutoModelForTokenClassification with two labels, label 1 = "step is correct"
    cfg = {**HF_CONFIG, "architectures": ["LlamaForTokenClassification"],
           "id2label": {"0": "LABEL_0", "1": "LABEL_1"}}
    sd = hf_state(cfg)
    del sd["lm_head.weight"]
    sd["score.weight"] = torch.zeros(2, 32, dtype=torch.bfloat16)
    sd["score.bias"] = torch.tensor([0.5, 2.0], dtype=torch.bfloat16)   # logits (0.5, 2.0) everywhere
    write_hf_checkpoint(tmp_path / "const", cfg, sd)
    rm = load_model(tmp_path / "const", dtype=torch.float32)
    # softmax(0.5, 2.0)[1] = e^2 / (e^0.5 + e^2) = 1 / (1 + e^-1.5) = 0.8175744761936437
    p = torch.sigmoid(rm(TOKENS))
    torch.testing.assert_close(p, torch.full_like(p, 0.8175744761936437), rtol=0, atol=1e-6)
    sd["score.weight"] = (torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
                          ).to(torch.bfloat16)
    write_hf_checkpoint(tmp_path / "trl", cfg, sd)
    rm = load_model(tmp_path / "trl", dtype=torch.float32)
    logits = hf_llama_hidden(sd, cfg, TOKENS[0]) @ sd["score.weight"].double().T + sd[
        "score.bias"].double()                                          # (T, 2), HF's logits
    torch.testing.assert_close(torch.sigmoid(rm(TOKENS)[0]).double(), logits.softmax(-1)[:, 1],
                               rtol=0, atol=1e-5)                     # float32 trunk, as above


def test_two_label_export_gives_the_same_probabilities_as_softmax_label_1(tmp_path):
    rm = RewardModel(tiny())
    torch.nn.init.normal_(rm.score.weight)
    torch.nn.init.normal_(rm.score.bias)
    save_model(rm, tmp_path / "rm")
    (tmp_path / "rm" / "tokenizer.json").write_text("{}")
    main(["--two-labels", str(tmp_path / "rm"), str(tmp_path / "trl")])
    head = load_file(tmp_path / "trl" / "model.safetensors")
    assert torch.equal(head["score.weight"][0], torch.zeros(32)) and head["score.bias"][0] == 0
    cfg = json.loads((tmp_path / "trl" / "config.json").read_text())
    assert (cfg["num_labels"], cfg["id2label"]) == (2, {"0": "incorrect", "1": "correct"})
    assert (tmp_path / "trl" / "tokenizer.json").read_text() == "{}"
    loaded = load_model(tmp_path / "trl")
    logits = loaded.score(loaded.trunk.hidden(TOKENS))                 # (1, T, 2), HF's logits
    torch.testing.assert_close(logits.softmax(-1)[..., 1], torch.sigmoid(rm(TOKENS)),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(loaded(TOKENS), rm(TOKENS), rtol=0, atol=1e-6)
    with raises(ValueError, tmp_path / "rm" / "config.json", "a policy"):
        save_model(tiny(), tmp_path / "rm")
        main(["--two-labels", str(tmp_path / "rm"), str(tmp_path / "x")])


@pytest.mark.parametrize("patch, words", [
    ({"architectures": ["LlamaForSequenceClassification"], "id2label": {"0": "A", "1": "B"}},
     ["LlamaForSequenceClassification with 2 labels is a classifier", "one label"]),
    ({"architectures": ["LlamaForTokenClassification"], "num_labels": 3},
     ["LlamaForTokenClassification with 3 labels"]),
    ({"architectures": ["LlamaModel"]}, ["architectures=['LlamaModel'] is not supported"]),
    ({"partial_rotary_factor": 0.5}, ["partial_rotary_factor=0.5 is not supported"]),
])
def test_models_e2h_does_not_implement_are_refused_in_one_line(tmp_path, patch, words):
    cfg = {**HF_CONFIG, **patch}
    write_hf_checkpoint(tmp_path / "hf", cfg, hf_state(cfg))
    with raises(ValueError, tmp_path / "hf" / "config.json", *words):
        load_model(tmp_path / "hf")


def test_saved_folder_has_generation_and_tokenizer_settings(tmp_path):
    save_model(tiny(), tmp_path / "m")
    folder = tmp_path / "m"
    cfg = json.loads((folder / "config.json").read_text())
    assert (cfg["rope_theta"], cfg["rope_scaling"], cfg["rope_parameters"]) == (
        1e4, None, {"rope_type": "default", "rope_theta": 1e4})
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    specials = json.loads((folder / "special_tokens_map.json").read_text())
    assert specials == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                        "pad_token": "<unk>"}
    assert tok_cfg == {"tokenizer_class": "PreTrainedTokenizerFast", **specials,
                       "model_max_length": 256, "clean_up_tokenization_spaces": False}
    (folder / "tokenizer_config.json").write_text("{}")                # a stale copy is replaced
    save_model(tiny(), folder)
    assert json.loads((folder / "tokenizer_config.json").read_text()) == tok_cfg


# ---- bad checkpoints: one error naming the file and the tensor -----------------------------

@pytest.fixture
def sharded(tmp_path):
    save_model(tiny(), tmp_path / "ckpt", max_shard_bytes=40_000)
    path = tmp_path / "ckpt"
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return path, index["weight_map"]


def rewrite(path, weight_map, key, edit):
    """Apply edit(tensors) to the shard holding ``key``."""
    file = path / weight_map[key]
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, str(file))
    return file


def raises(exc, *parts):
    return pytest.raises(exc, match=".*".join(re.escape(str(p)) for p in parts))


def test_missing_tensor(sharded):
    path, wm = sharded
    key = "model.layers.1.mlp.up_proj.weight"
    rewrite(path, wm, key, lambda t: t.pop(key))
    del wm[key]
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    with raises(ValueError, path / "model.safetensors.index.json", "missing tensor", key):
        load_model(path)


def test_unexpected_tensor(sharded):
    path, wm = sharded
    key = "model.layers.0.self_attn.q_norm.weight"
    wm[key] = wm["model.norm.weight"]
    file = rewrite(path, wm, "model.norm.weight", lambda t: t.update({key: torch.ones(8)}))
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    with raises(ValueError, file, "unexpected tensor", key):
        load_model(path)


def test_wrong_shape(sharded):
    path, wm = sharded
    key = "model.layers.0.self_attn.k_proj.weight"
    file = rewrite(path, wm, key, lambda t: t.update({key: torch.zeros(32, 32)}))
    with raises(ValueError, file, key, "(32, 32)", "config.json", "(16, 32)"):
        load_model(path)


def test_config_disagrees_with_weights(sharded):
    path, wm = sharded
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "vocab_size": 72}))
    with raises(ValueError, path / wm["model.embed_tokens.weight"], "model.embed_tokens.weight",
                "(64, 32)", "config.json", "(72, 32)"):
        load_model(path)


def test_missing_shard(sharded):
    path, wm = sharded
    file = path / wm["model.layers.1.mlp.up_proj.weight"]
    file.unlink()
    with raises(FileNotFoundError, file, "not found"):
        load_model(path)


def test_truncated_file(sharded):
    path, wm = sharded
    file = path / wm["model.norm.weight"]
    data = file.read_bytes()
    file.write_bytes(data[:-100])
    last = max(load_file_header_keys(data), key=lambda kv: kv[1])[0]   # tensor stored last
    with raises(ValueError, file, "truncated", f"tensor {last}"):
        load_model(path)


def load_file_header_keys(data):
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return [(k, v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]


def test_corrupt_header(sharded):
    path, wm = sharded
    file = path / wm["model.embed_tokens.weight"]
    data = bytearray(file.read_bytes())
    data[8:12] = b"\xff\xfe!!"                                        # the JSON no longer parses
    file.write_bytes(bytes(data))
    with raises(ValueError, file, "corrupt safetensors header"):
        load_model(path)


def test_header_offsets_disagree_with_shape(sharded):
    path, wm = sharded
    file = path / wm["model.norm.weight"]
    data = file.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["model.norm.weight"]["data_offsets"][1] -= 4               # 31 floats for shape (32,)
    raw = json.dumps(header, separators=(",", ":")).encode()
    file.write_bytes(data[:8] + raw.ljust(n) + data[8 + n:])          # same header length
    with raises(ValueError, file, "corrupt safetensors header", "model.norm.weight", "124 bytes"):
        load_model(path)


def test_tokenizer_larger_than_embedding(tmp_path):
    text = "".join(chr(c) for c in range(ord("!"), ord("~") + 1))   # 94 distinct characters
    tok = train_tokenizer([text], tmp_path / "tok.json", 128)
    assert tok.vocab_size > 64
    check_tokenizer(tok, tiny(vocab_size=tok.vocab_size))             # same size: fine
    with raises(ValueError, tmp_path / "tok.json", f"{tok.vocab_size} tokens", "64 rows"):
        check_tokenizer(tok, tiny())
