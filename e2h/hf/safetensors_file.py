"""The safetensors file format, as e2h reads and writes it (huggingface/safetensors):

    8 bytes        little-endian length N of the header
    N bytes        JSON {key: {"dtype", "shape", "data_offsets": [start, end]}, "__metadata__"},
                   padded with spaces to a multiple of 8 bytes
    the data       each tensor's bytes, row-major, back to back, offsets from the data's start

Reading the header checks, without reading tensor data, that every tensor lies inside the file
and spans the bytes its dtype and shape need. Writing streams: the header first (dtypes and
shapes are known up front), then each tensor's bytes as it arrives, so a writer that gathers
tensors one at a time never holds more than one. Tensors themselves are read with safetensors'
``safe_open`` (e2h/hf/checkpoint.py), which maps the file and reads only the slices asked for.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_header(file: Path) -> dict[str, tuple[str, list[int]]]:
    """{key: (dtype, shape)} from a safetensors header; checks the file holds all the data."""
    size = file.stat().st_size
    if size < 8:
        raise ValueError(f"{file}: truncated safetensors file ({size} bytes, no header)")
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            raise ValueError(f"{file}: truncated or corrupt safetensors file: header of {n} bytes, "
                             f"file of {size}")
        try:
            header = json.loads(f.read(n))
            header.pop("__metadata__", None)
            entries = {k: _header_entry(v) for k, v in header.items()}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError,
                ValueError):
            raise ValueError(f"{file}: corrupt safetensors header "
                             f"(not a JSON table of tensors)") from None
    for key, (dtype, shape, start, end) in sorted(entries.items(), key=lambda kv: kv[1][3]):
        if 8 + n + end > size:
            raise ValueError(f"{file}: truncated: tensor {key} ends at byte {8 + n + end}, "
                             f"the file has {size}")
        if dtype in DTYPES and end - start != math.prod(shape) * DTYPES[dtype].itemsize:
            raise ValueError(f"{file}: corrupt safetensors header: tensor {key} spans "
                             f"{end - start} bytes, not those of {dtype} {tuple(shape)}")
    return {k: (dtype, shape) for k, (dtype, shape, _, _) in entries.items()}


def _header_entry(v: dict):
    """(dtype, shape, start, end) of one header entry; raises on any malformed field."""
    start, end = (int(o) for o in v["data_offsets"])
    return v["dtype"], [int(n) for n in v["shape"]], start, end


def write_safetensors(file: Path, specs: dict[str, torch.Tensor], tensors):
    """One safetensors file: the header from ``specs`` (dtype and shape of each key), then each
    tensor's bytes as ``tensors`` yields it (key, CPU tensor), in the order of ``specs``.

    The format: an 8-byte little-endian header length, the JSON header (padded with spaces to
    a multiple of 8 bytes, as safetensors writes it), then the data back to back."""
    names = {v: k for k, v in DTYPES.items()}
    header, offset = {}, 0
    for key, t in specs.items():
        end = offset + t.numel() * t.element_size()
        header[key] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, end]}
        offset = end
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(file, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for key, spec in specs.items():
            got, t = next(tensors)
            if got != key or t.shape != spec.shape or t.dtype != spec.dtype:
                raise RuntimeError(f"{file}: expected tensor {key} {spec.dtype} "
                                   f"{tuple(spec.shape)}, got {got} {t.dtype} {tuple(t.shape)}")
            f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
