"""Hugging Face Llama checkpoints: load (Llemma, or what e2h wrote) and save (docs/paper.md, "Models").

Layout: ``config.json`` plus ``model.safetensors``, or shards ``model-0000i-of-0000N.safetensors``
listed in ``model.safetensors.index.json``. A tensor's key is ``"model." + parameter name``,
except ``lm_head.weight``; with tied embeddings there is no ``lm_head.weight``. A reward model is
saved as HF's ``LlamaForTokenClassification`` with one label: the trunk as above, no LM head,
plus ``score.weight`` (1, C) and ``score.bias`` (1,). A two-label token classifier (TRL's PRMs:
``score.weight`` (2, C), ``score.bias`` (2,), label 1 = correct) loads as a reward model whose
logit is z_1 - z_0; ``python -m e2h.hf.checkpoint --two-labels SRC DST`` writes an e2h reward model
in that layout (``RewardModel.two_labels``). A one-label
``LlamaForSequenceClassification`` (the reward models TRL and OpenRLHF train: ``score.weight``,
no bias, read at the last token) loads as a reward model with a zero bias: its logit at a
position is what the sequence classifier gives for the text ending there.

config.json and the JSON files beside the weights are e2h/hf/hf_config.py: RoPE in both key sets
(transformers 4.x ``rope_theta`` / ``rope_scaling``, 5.x ``rope_parameters``), generation and
tokenizer settings that let ``AutoTokenizer`` open the folder.

Loading holds one copy of the weights: the model is built on the meta device, allocated once in
the target dtype (``to_empty``), then filled tensor by tensor from each shard; a sharded model
reads only the rows of its own shards (e2h/hf/sharded.py). Everything that can be checked without
reading tensor data is checked first (config, shard files, headers, file sizes, the key set,
every shape and dtype), so a bad checkpoint raises one error naming the file and tensor before
any weight is read, and no model is returned. Saving writes one tensor at a time
(e2h/hf/safetensors_file.py).

Deliberate leniency: the ``rotary_emb.inv_freq`` buffers older transformers versions saved are
ignored; RoPE is recomputed from the config.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from e2h.infra.errors import guard
from e2h.infra.files import write_text
from e2h.hf.hf_config import GENERATION, LM_ARCH, SEQ_ARCH, hf_files, read_config
from e2h.model import RewardModel, Transformer
from e2h.hf.safetensors_file import DTYPES, read_header, write_safetensors
from e2h.tokenizer import HF_FILES as TOKENIZER_FILES

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
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
    """The model ``path``'s config.json describes (a Transformer, or a RewardModel of one or
    two labels for LlamaForTokenClassification and LlamaForSequenceClassification), on the meta device, and {HF key: (file,
    dtype, shape)} of its tensors, after every check that reads no tensor data. Whoever fills
    the model reads the tensors (``read_rows``): all of them (``load_model``) or only the rows
    of one rank's shards (e2h/hf/sharded.py)."""
    path = Path(path)
    args, arch, labels = read_config(path)
    found = weight_files(path)
    with torch.device("meta"):
        model = Transformer(args)
        if arch != LM_ARCH:
            model = RewardModel(model, labels)
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


def export_two_labels(src, dst) -> RewardModel:
    """Write the reward model in ``src`` to ``dst`` with TRL's two-label PRM head, and its
    tokenizer.json beside it: ``AutoModelForTokenClassification`` then gives logits whose
    softmax, label 1, is e2h's step probability."""
    src = Path(src)
    model = load_model(src)
    if not isinstance(model, RewardModel):
        raise ValueError(f"{src / 'config.json'}: a policy ({LM_ARCH}); --two-labels takes a "
                         f"reward model")
    save_model(model.two_labels(), dst)
    if (src / "tokenizer.json").is_file():
        write_text(Path(dst) / "tokenizer.json", (src / "tokenizer.json").read_text())
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description="Re-save an e2h reward model in another Hugging "
                                "Face layout.")
    p.add_argument("--two-labels", nargs=2, metavar=("SRC", "DST"), required=True,
                   help="the reward model in SRC as a two-label token classifier (TRL's PRM "
                        "layout: label 1 = correct) in DST")
    args = p.parse_args(argv)
    export_two_labels(*args.two_labels)


if __name__ == "__main__":
    sys.exit(guard(main))
