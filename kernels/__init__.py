"""Attention for every layer of the model: a fused Triton kernel and its PyTorch reference.

- attention(q, k, v, causal=True, kv_start=None): the Triton kernels of kernels/flash.py
  (CUDA tensors, or any tensors with TRITON_INTERPRET=1 set before the first call).
- attention_reference(q, k, v, causal=True, kv_start=None): plain PyTorch (kernels/reference.py).
- attend(q, k, v, causal=True, kv_start=None): what the model calls. Triton on CUDA tensors whose
  dtype and head dim the kernel supports, the reference otherwise. The environment variable
  E2H_ATTENTION=triton or E2H_ATTENTION=reference forces one path (read at every call).

Shapes: q (B, H, Tq, D), k and v (B, Hkv, Tk, D) with H % Hkv == 0; key j is visible to query
i iff (not causal or j <= i + Tk - Tq) and (kv_start is None or j >= kv_start[b]); a query with no
visible key outputs 0.

kernels/flash.py is imported on the first Triton call, not with the package: `import kernels`
must work where triton is missing, and triton reads TRITON_INTERPRET when a kernel is defined.
"""

import importlib
import importlib.util
import os

import torch

from kernels.reference import attention_reference

_TRITON_HEAD_DIMS = (16, 32, 64, 128)
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def attention(q, k, v, causal=True, kv_start=None):
    """Fused Triton attention, differentiable in q, k and v; see kernels/flash.py."""
    return _triton_attention()(q, k, v, causal, kv_start)


def _triton_attention():
    return importlib.import_module("kernels.flash").attention


def attend(q, k, v, causal=True, kv_start=None):
    """Dispatch to the Triton kernel or the PyTorch reference (see the module docstring)."""
    choice = os.environ.get("E2H_ATTENTION", "")
    if choice not in ("", "triton", "reference"):
        raise ValueError(f"E2H_ATTENTION={choice!r}: expected 'triton' or 'reference'")
    use_triton = choice == "triton" or (
        choice == "" and q.is_cuda and q.shape[-1] in _TRITON_HEAD_DIMS
        and q.dtype in _TRITON_DTYPES and importlib.util.find_spec("triton") is not None)
    if use_triton:
        return _triton_attention()(q, k, v, causal, kv_start)
    return attention_reference(q, k, v, causal, kv_start)
