"""Attention for every layer of the model: a fused Triton kernel, a decode path and a reference.

- attention(q, k, v, causal=True, kv_start=None): the Triton kernels of e2h/kernels/flash.py
  (CUDA tensors, or any tensors with TRITON_INTERPRET=1 set before the first call).
- attention_decode(q, k, v, causal=True, kv_start=None, kv_len=None): a few queries over a
  filled cache as matmul, masked softmax, matmul (e2h/kernels/decode.py).
- attention_reference(q, k, v, causal=True, kv_start=None, kv_len=None): PyTorch's fused
  attention with a boolean mask (e2h/kernels/reference.py).
- attend(q, k, v, causal=True, kv_start=None, kv_len=None): what the model calls. Triton on
  CUDA tensors whose dtype and head dim the kernel supports (kv_len is None); on CPU the decode
  path for one query per row when batch x heads >= DECODE_MIN_ROWS; the reference otherwise.
  The environment variable E2H_ATTENTION=triton, decode or reference forces one path (read at
  every call).

Shapes: q (B, H, Tq, D), k and v (B, Hkv, Tk, D) with H % Hkv == 0; key j is visible to query
i iff (not causal or j <= i + E_b - Tq) and (kv_start is None or j >= kv_start[b]) and (kv_len is
None or j < kv_len[b]), with E_b = kv_len[b] if given, else Tk; a query with no visible key
outputs 0.

e2h/kernels/flash.py is imported on the first Triton call, not with the package:
`import e2h.kernels` must work where triton is missing, and triton reads TRITON_INTERPRET when a
kernel is defined.

The package lives inside e2h, not at the top level: the Hugging Face `kernels` package, which
transformers >= 5.25 installs, owns the import name `kernels`, and Python keeps one module per name.
"""

import importlib
import importlib.util
import os

import torch

from e2h.kernels.decode import attention_decode
from e2h.kernels.reference import attention_reference

_TRITON_HEAD_DIMS = (16, 32, 64, 128)
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# From this many (row, head) pairs on, one query each, the decode path beats PyTorch's fused CPU
# attention; below, both cost about their operator count and the fused one has fewer
# (bench/README.md, "Decode attention").
DECODE_MIN_ROWS = 256


def attention(q, k, v, causal=True, kv_start=None):
    """Fused Triton attention, differentiable in q, k and v; see e2h/kernels/flash.py."""
    return _triton_attention()(q, k, v, causal, kv_start)


def _triton_attention():
    return importlib.import_module("e2h.kernels.flash").attention


def attend(q, k, v, causal=True, kv_start=None, kv_len=None):
    """Dispatch to the Triton kernel, the decode path or the reference (module docstring)."""
    choice = os.environ.get("E2H_ATTENTION", "")
    if choice not in ("", "triton", "decode", "reference"):
        raise ValueError(f"E2H_ATTENTION={choice!r}: expected 'triton', 'decode' or 'reference'")
    if choice == "":
        if (q.is_cuda and kv_len is None and q.shape[-1] in _TRITON_HEAD_DIMS
                and q.dtype in _TRITON_DTYPES and importlib.util.find_spec("triton") is not None):
            choice = "triton"
        elif not q.is_cuda and q.shape[2] == 1 and q.shape[0] * q.shape[1] >= DECODE_MIN_ROWS:
            choice = "decode"
    if choice == "triton":
        if kv_len is not None:
            raise ValueError("E2H_ATTENTION=triton: e2h/kernels/flash.py takes no kv_len")
        return _triton_attention()(q, k, v, causal, kv_start)
    if choice == "decode":
        return attention_decode(q, k, v, causal, kv_start, kv_len)
    return attention_reference(q, k, v, causal, kv_start, kv_len)
