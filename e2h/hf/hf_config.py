"""config.json and the other JSON files of a Hugging Face Llama folder, both ways (docs/paper.md,
"Models"): HF LlamaConfig keys to ``ModelArgs`` and back, the architectures e2h reads (a causal
LM, a token-classification reward model with one label, or two as TRL's PRMs have, a one-label
sequence classifier), RoPE in both key sets (e2h/rope.py), and the generation / tokenizer
settings written beside the weights. A config key whose other values would change the math is
refused in one line naming the file and key.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from e2h.model import ModelArgs, RewardModel
from e2h.rope import hf_rope_keys, read_hf_rope
from e2h.tokenizer import hf_tokenizer_files

LM_ARCH, RM_ARCH, SEQ_ARCH = ("LlamaForCausalLM", "LlamaForTokenClassification",
                              "LlamaForSequenceClassification")
GENERATION = "generation_config.json"
# HF LlamaConfig key -> (ModelArgs field, default when the key is absent: None = required)
CONFIG = {"hidden_size": ("dim", None), "intermediate_size": ("ffn_dim", None),
          "num_hidden_layers": ("n_layers", None), "num_attention_heads": ("n_heads", None),
          "vocab_size": ("vocab_size", None), "num_key_value_heads": ("n_kv_heads", "n_heads"),
          "rms_norm_eps": ("norm_eps", 1e-6), "max_position_embeddings": ("max_seq_len", 2048),
          "tie_word_embeddings": ("tie_embeddings", False)}
# a two-label reward head (TRL's PRMs): label 1 means the step is correct
TWO_LABELS = {"0": "incorrect", "1": "correct"}
# config keys whose other values change the math e2h implements
UNSUPPORTED = {"model_type": ("llama", None), "hidden_act": ("silu", None),
               "attention_bias": (False, None), "mlp_bias": (False, None),
               "partial_rotary_factor": (1.0, None)}


def read_config(path: Path) -> tuple[ModelArgs, str, int]:
    """(ModelArgs, architecture, labels of a reward head) from an HF Llama config.json."""
    file = path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found")
    try:
        cfg = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    for key, allowed in UNSUPPORTED.items():
        if cfg.get(key) not in allowed:
            raise ValueError(f"{file}: {key}={cfg[key]!r} is not supported (expected {allowed[0]!r})")
    kwargs = {}
    for key, (field, default) in CONFIG.items():
        if key in cfg:
            kwargs[field] = cfg[key]
        elif default is None:
            raise ValueError(f"{file}: missing key {key!r}")
        else:
            kwargs[field] = kwargs[default] if isinstance(default, str) else default
    kwargs["rope_theta"], kwargs["rope_scaling"] = read_hf_rope(cfg, file, kwargs["max_seq_len"])
    arch, labels = read_architecture(cfg, file)
    kwargs["tie_embeddings"] = kwargs["tie_embeddings"] or arch != LM_ARCH   # RMs: no LM head
    try:
        args = ModelArgs(**kwargs)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{file}: {e}") from None
    if cfg.get("head_dim", args.head_dim) != args.head_dim:
        raise ValueError(f"{file}: head_dim {cfg['head_dim']} != hidden_size / num_attention_heads")
    return args, arch, labels


def read_architecture(cfg: dict, file: Path) -> tuple[str, int]:
    """The model class of config.json and its labels (HF stores ``id2label``): a reward model
    has one, or two for a token classifier (TRL's PRMs, label 1 = correct)."""
    archs = cfg.get("architectures") or [LM_ARCH]
    if len(archs) != 1 or archs[0] not in (LM_ARCH, RM_ARCH, SEQ_ARCH):
        raise ValueError(f"{file}: architectures={archs!r} is not supported (e2h loads "
                         f"{LM_ARCH}, {RM_ARCH} or {SEQ_ARCH})")
    labels = len(cfg["id2label"]) if cfg.get("id2label") else cfg.get("num_labels") or 1
    if archs[0] != LM_ARCH and labels != 1 and (archs[0], labels) != (RM_ARCH, 2):
        raise ValueError(f"{file}: {archs[0]} with {labels} labels is a classifier; e2h loads "
                         f"reward models with one label (one score per position), or a "
                         f"{RM_ARCH} with two (TRL's PRM: label 1 = correct)")
    return archs[0], labels


def hf_config(model, dtype: torch.dtype) -> dict:
    """config.json in HF LlamaConfig keys, so ecosystem tools open the directory unchanged."""
    is_rm = isinstance(model, RewardModel)
    args = (model.trunk if is_rm else model).args
    cfg = {"architectures": [RM_ARCH if is_rm else LM_ARCH], "model_type": "llama",
           "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
           "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "initializer_range": 0.02,
           "torch_dtype": str(dtype).removeprefix("torch.")}
    cfg.update({key: getattr(args, field) for key, (field, _) in CONFIG.items()})
    cfg.update(hf_rope_keys(args.rope_theta, args.rope_scaling))
    if is_rm:
        cfg["num_labels"] = model.score.out_features
        if cfg["num_labels"] == 2:
            cfg["id2label"] = TWO_LABELS
            cfg["label2id"] = {name: int(i) for i, name in TWO_LABELS.items()}
    return cfg


def hf_files(model, dtype: torch.dtype) -> dict[str, dict]:
    """Every JSON file save_model writes: config, generation defaults, tokenizer settings."""
    args = (model.trunk if hasattr(model, "trunk") else model).args
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}   # e2h/tokenizer.py
    return {"config.json": hf_config(model, dtype), GENERATION: generation,
            **hf_tokenizer_files(args.max_seq_len)}
