"""Attention for a few queries over a filled KV cache: two batched matmuls around a masked softmax.

A decoding step asks for 1 query per row over every cached key. At that shape the work is
reading K and V once, and with many rows PyTorch's fused CPU attention
(`scaled_dot_product_attention` with a boolean mask) spends more time than two plain batched
matmuls: the scores (B, H, Tq, Tk) are tiny, so nothing is gained by never materializing them
(bench/README.md, "Decode attention"; e2h.kernels.attend picks the faster one).

Grouped-query heads are folded into the query axis: the G = H // Hkv query heads that share a
key/value head become G * Tq rows of one matmul against that head's K, so K and V are read in
place, never repeated. The visibility rule is that of e2h/kernels/reference.py. float32 and float64
inputs are computed in their own precision; 16-bit inputs in float32 (scores and probabilities
rounded to 8 bits would double the error of the reference), the output rounded once.

Letters: B batch, H query heads, Hkv key/value heads, G = H // Hkv, Tq queries, Tk keys,
D head dim.
"""
import math

import torch

from e2h.kernels.reference import visible_keys


def attention_decode(q, k, v, causal=True, kv_start=None, kv_len=None):
    """q (B, H, Tq, D) over k, v (B, Hkv, Tk, D) -> (B, H, Tq, D) in q's dtype; differentiable."""
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    G = H // Hkv
    dtype = q.dtype
    if dtype not in (torch.float32, torch.float64):
        q, k, v = q.float(), k.float(), v.float()
    if Tq == 1 and kv_start is None and kv_len is not None:
        # one query per row sees the first kv_len[b] keys of its row (reference.py's rule at
        # Tq = 1): two small ops instead of the general mask's dozen, once per layer and step
        hidden = torch.arange(Tk, device=q.device) >= kv_len.view(-1, 1, 1, 1, 1)  # (B, 1, 1, 1, Tk)
        empty = (kv_len <= 0).view(-1, 1, 1, 1, 1)                                 # (B, 1, 1, 1, 1)
    else:
        visible = visible_keys(Tq, Tk, causal, kv_start, kv_len, q.device)[:, :, None]
        hidden, empty = ~visible, ~visible.any(-1, keepdim=True)   # (B|1, 1, 1, Tq, Tk | 1)
    # (B, Hkv, G Tq, D): the G query heads of each kv head stacked, row g Tq + i
    q = q.reshape(B, Hkv, G * Tq, D) * (1.0 / math.sqrt(D))
    scores = (q @ k.transpose(-1, -2)).view(B, Hkv, G, Tq, Tk)
    # The lowest finite value, not -inf: a row with no visible key gets a finite (uniform)
    # softmax, whose output is zeroed below, so it and its gradient are exactly 0.
    scores = scores.masked_fill_(hidden, torch.finfo(scores.dtype).min)
    o = (scores.softmax(-1).view(B, Hkv, G * Tq, Tk) @ v).view(B, Hkv, G, Tq, D)
    o = o.masked_fill(empty, 0.0)
    return o.view(B, H, Tq, D).to(dtype)
