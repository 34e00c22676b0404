"""Hugging Face Llama checkpoints: load (Llemma, or what e2h wrote) and save (PAPER.md, "Models").

Layout: ``config.json`` plus ``model.safetensors``, or shards ``model-0000i-of-0000N.safetensors``
listed in ``model.safetensors.index.json``. A tensor's key is ``"model." + parameter name``,
except ``lm_head.weight``; with tied embeddings there is no ``lm_head.weight``. A reward model is
saved as HF's ``LlamaForTokenClassification`` with one label: the trunk as above, no LM head,
plus ``score.weight`` (1, C) and ``score.bias`` (1,). A one-label
``LlamaForSequenceClassification`` (the reward models TRL and OpenRLHF train: ``score.weight``,
no bias, read at the last token) loads as a reward model with a zero bias: its logit at a
position is what the sequence classifier gives for the text ending there.

RoPE is read from ``rope_theta`` / ``rope_scaling`` (transformers 4.x) and ``rope_parameters``
(5.x); where both are present they must agree. ``save_model`` writes both, and beside the weights
``generation_config.json`` and the ``tokenizer_config.json`` / ``special_tokens_map.json`` that
let ``AutoTokenizer`` open the folder once a tokenizer.json is there (e2h/tokenizer.py).

Loading holds one copy of the weights: the model is built on the meta device, allocated once in
the target dtype (``to_empty``), then filled tensor by tensor from each shard; a sharded model
reads only the rows of its own shards (e2h/sharded.py). Everything that can be checked without
reading tensor data is checked first (config, shard files, headers, file sizes, the key set,
every shape and dtype), so a bad checkpoint raises one error naming the file and tensor before
any weight is read, and no model is returned. Saving writes one tensor at a time
(e2h/safetensors_file.py).

Deliberate leniency: the ``rotary_emb.inv_freq`` buffers older transformers versions saved are
ignored; RoPE is recomputed from the config.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from e2h.model import ModelArgs, RewardModel, Transformer
from e2h.rope import hf_rope_keys, read_hf_rope
from e2h.safetensors_file import DTYPES, read_header, write_safetensors
from e2h.tokenizer import HF_FILES as TOKENIZER_FILES
from e2h.tokenizer import hf_tokenizer_files

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
LM_ARCH, RM_ARCH, SEQ_ARCH = ("LlamaForCausalLM", "LlamaForTokenClassification",
                              "LlamaForSequenceClassification")
GENERATION = "generation_config.json"
# HF LlamaConfig key -> (ModelArgs field, default when the key is absent: None = required)
CONFIG = {"hidden_size": ("dim", None), "intermediate_size": ("ffn_dim", None),
          "num_hidden_layers": ("n_layers", None), "num_attention_heads": ("n_heads", None),
          "vocab_size": ("vocab_size", None), "num_key_value_heads": ("n_kv_heads", "n_heads"),
          "rms_norm_eps": ("norm_eps", 1e-6), "max_position_embeddings": ("max_seq_len", 2048),
          "tie_word_embeddings": ("tie_embeddings", False)}
# config keys whose other values change the math e2h implements
UNSUPPORTED = {"model_type": ("llama", None), "hidden_act": ("silu", None),
               "attention_bias": (False, None), "mlp_bias": (False, None),
               "partial_rotary_factor": (1.0, None)}


def hf_params(model) -> dict[str, torch.nn.Parameter]:
    """Parameters of a Transformer or RewardModel under their HF keys."""
    is_rm = isinstance(model, RewardModel)
    trunk = model.trunk if is_rm else model
    out = {}
    for name, p in trunk.named_parameters():
        if name != "lm_head.weight":
            out["model." + name] = p
        elif not is_rm:                       # a reward model has no LM head
            out[name] = p
    if is_rm:
        out["score.weight"], out["score.bias"] = model.score.weight, model.score.bias
    return out


def read_config(path: Path) -> tuple[ModelArgs, str]:
    """(ModelArgs, architecture) from an HF Llama config.json."""
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
    arch = read_architecture(cfg, file)
    kwargs["tie_embeddings"] = kwargs["tie_embeddings"] or arch != LM_ARCH   # RMs: no LM head
    try:
        args = ModelArgs(**kwargs)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{file}: {e}") from None
    if cfg.get("head_dim", args.head_dim) != args.head_dim:
        raise ValueError(f"{file}: head_dim {cfg['head_dim']} != hidden_size / num_attention_heads")
    return args, arch


def read_architecture(cfg: dict, file: Path) -> str:
    """The model class of config.json; a reward model has one label (HF stores ``id2label``)."""
    archs = cfg.get("architectures") or [LM_ARCH]
    if len(archs) != 1 or archs[0] not in (LM_ARCH, RM_ARCH, SEQ_ARCH):
        raise ValueError(f"{file}: architectures={archs!r} is not supported (e2h loads "
                         f"{LM_ARCH}, {RM_ARCH} or {SEQ_ARCH})")
    labels = len(cfg["id2label"]) if cfg.get("id2label") else cfg.get("num_labels") or 1
    if archs[0] != LM_ARCH and labels != 1:
        raise ValueError(f"{file}: {archs[0]} with {labels} labels is a classifier; e2h loads "
                         f"reward models with one label (one score per position)")
    return archs[0]


def weight_files(path: Path) -> dict[str, tuple[Path, str, list[int]]]:
    """{key: (file, dtype, shape)} over model.safetensors or every shard of the index."""
    index = path / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise ValueError(f"{index}: not a safetensors index (no weight_map)") from None
        files = sorted({path / name for name in weight_map.values()})
    elif (path / SINGLE).is_file():
        weight_map, files = None, [path / SINGLE]
    else:
        raise FileNotFoundError(f"{path}: neither {SINGLE} nor {INDEX} found")
    found = {}
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file}: shard listed in {index} not found")
        for key, (dtype, shape) in read_header(file).items():
            if weight_map is not None and weight_map.get(key) != file.name:
                raise ValueError(f"{file}: tensor {key} is not listed for this file in {index}")
            found[key] = (file, dtype, shape)
    for key, name in (weight_map or {}).items():
        if key not in found:
            raise ValueError(f"{path / name}: tensor {key} listed in {index} is not in the file")
    return {k: v for k, v in found.items() if not k.endswith("rotary_emb.inv_freq")}


def check_weights(found: dict, params: dict, path: Path):
    """Every expected tensor present once, nothing else, with the shape config.json implies."""
    source = path / INDEX if (path / INDEX).is_file() else path / SINGLE
    missing = [k for k in params if k not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{source}: missing tensor {missing[0]}{more}, which "
                         f"{path / 'config.json'} implies")
    for key, (file, dtype, shape) in found.items():
        if key not in params:
            raise ValueError(f"{file}: unexpected tensor {key}, not in the model "
                             f"{path / 'config.json'} describes")
        if list(params[key].shape) != shape:
            raise ValueError(f"{file}: tensor {key} has shape {tuple(shape)} but "
                             f"{path / 'config.json'} implies {tuple(params[key].shape)}")
        if dtype not in DTYPES:
            raise ValueError(f"{file}: tensor {key} has dtype {dtype}, expected one of {list(DTYPES)}")


def open_model(path) -> tuple[torch.nn.Module, dict[str, tuple[Path, str, list[int]]]]:
    """The model ``path``'s config.json describes (a Transformer, or a RewardModel for
    LlamaForTokenClassification and LlamaForSequenceClassification), on the meta device, and {HF key: (file,
    dtype, shape)} of its tensors, after every check that reads no tensor data. Whoever fills
    the model reads the tensors (``read_rows``): all of them (``load_model``) or only the rows
    of one rank's shards (e2h/sharded.py)."""
    path = Path(path)
    args, arch = read_config(path)
    found = weight_files(path)
    with torch.device("meta"):
        model = Transformer(args)
        if arch != LM_ARCH:
            model = RewardModel(model)
    params = hf_params(model)
    if arch == SEQ_ARCH:
        del params["score.bias"]                 # a sequence classifier's head has no bias
    check_weights(found, params, path)
    return model, found


def read_rows(targets: dict[str, tuple[torch.Tensor, int, int]], found: dict):
    """Fill ``targets[key] = (tensor, start, stop)`` with rows [start, stop) (dim 0) of each
    tensor, reading only those bytes from each file, one file open at a time; a tensor the
    checkpoint does not hold (a sequence classifier's bias) is zero."""
    with torch.no_grad():
        for key, (t, _, _) in targets.items():
            if key not in found:
                t.zero_()
        for file in sorted({found[k][0] for k in targets if k in found}):
            try:
                with safe_open(file, framework="pt") as f:
                    for key in f.keys():
                        if key in targets and targets[key][2] > targets[key][1]:
                            t, start, stop = targets[key]
                            t.copy_(f.get_slice(key)[start:stop])   # casts to t's dtype
            except (SafetensorError, OSError) as e:   # safetensors' own errors name no file
                raise ValueError(f"{file}: unreadable safetensors file ({e})") from None


def load_model(path, dtype: torch.dtype | None = None, device=None):
    """A Transformer (or a RewardModel for LlamaForTokenClassification) from an HF directory.

    dtype None keeps the dtype on disk (that of the embedding); device defaults to the CPU.
    """
    model, found = open_model(path)
    dtype = dtype or DTYPES[found["model.embed_tokens.weight"][1]]
    model = model.to(dtype=dtype).to_empty(device=device or "cpu")
    read_rows({k: (p, 0, p.shape[0]) for k, p in hf_params(model).items()}, found)
    return model


def check_tokenizer(tok, model):
    """A token id past the embedding would index out of range: refuse such a pair up front."""
    rows = (model.trunk if hasattr(model, "trunk") else model).args.vocab_size
    if tok.vocab_size > rows:
        raise ValueError(f"{tok.path}: tokenizer has {tok.vocab_size} tokens but the model's "
                         f"embedding has only {rows} rows")


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
        cfg["num_labels"] = 1
    return cfg


def hf_files(model, dtype: torch.dtype) -> dict[str, dict]:
    """Every JSON file save_model writes: config, generation defaults, tokenizer settings."""
    args = (model.trunk if hasattr(model, "trunk") else model).args
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}   # e2h/tokenizer.py
    return {"config.json": hf_config(model, dtype), GENERATION: generation,
            **hf_tokenizer_files(args.max_seq_len)}


def _is_checkpoint_file(name: str) -> bool:
    return name in (SINGLE, INDEX, "config.json", GENERATION, *TOKENIZER_FILES) or bool(
        re.fullmatch(r"model-\d+-of-\d+\.safetensors", name))


def shard_plan(params: dict[str, torch.Tensor], max_shard_bytes: int) -> list[list[str]]:
    """Keys per file, in order, each file up to ``max_shard_bytes`` (a larger tensor alone)."""
    shards, size = [[]], 0
    for key, t in params.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def save_model(model, path, max_shard_bytes: int = 5 * 2**30, tensors=None):
    """Write ``model`` (Transformer or RewardModel) to directory ``path`` in the HF layout.

    One ``model.safetensors`` up to ``max_shard_bytes``, shards plus an index above it. The files
    are written to a temporary sibling directory that then replaces ``path``, so a crash never
    leaves half a checkpoint; other files already in ``path`` (a tokenizer.json) are kept.
    ``tensors`` yields (HF key, CPU tensor) in ``hf_params`` order, each written as it comes:
    a sharded model passes one that gathers a tensor only when it is written, so the writer
    never holds more than one (sharded.export). Default: the model's own tensors.
    """
    path = Path(path)
    params = hf_params(model)
    shards = shard_plan(params, max_shard_bytes)
    if tensors is None:
        tensors = ((k, p.detach().cpu()) for k, p in params.items())
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        dtype = params["model.embed_tokens.weight"].dtype
        for name, content in hf_files(model, dtype).items():
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
        names = [SINGLE] if len(shards) == 1 else [
            f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for name, keys in zip(names, shards):
            write_safetensors(tmp / name, {k: params[k] for k in keys}, tensors)
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(t.numel() * t.element_size()
                                                    for t in params.values())},
                     "weight_map": {k: name for name, keys in zip(names, shards) for k in keys}}
            (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        for file in tmp.iterdir():   # on disk before the rename makes them visible
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, path: Path):
    """Move ``tmp`` to ``path``, first linking in the non-checkpoint files of an older ``path``."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a directory")
    if not path.exists():
        os.replace(tmp, path)
        return
    for entry in path.iterdir():
        if _is_checkpoint_file(entry.name):
            continue
        if entry.is_dir():
            shutil.copytree(entry, tmp / entry.name, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, tmp / entry.name)
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old)


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)   # shares the bytes: no copy of a large file
    except OSError:
        shutil.copy2(src, dst)
