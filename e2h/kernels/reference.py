"""Scaled-dot-product attention in plain PyTorch: the CPU path and the oracle for the Triton kernel.

softmax(Q K^T / sqrt(D) + mask) V (Vaswani et al. 2017, Eq. 1) with the visibility rule every
attention call in this project uses:

    key j is visible to query i  iff  (not causal or j <= i + E_b - Tq)
                                      and (kv_start is None or j >= kv_start[b])
                                      and (kv_len is None or j < kv_len[b])

where E_b = kv_len[b] if given, else Tk. The causal diagonal is aligned to the end of each row's
keys, so a chunk of Tq new queries attends to a cache of Tk >= Tq keys (Tq == 1 is one decoding
step); kv_start is the first real key slot of each row of a left-padded batch, kv_len the number
of filled slots of each row of a cache whose rows are filled to different lengths (slots from
kv_len[b] on are not part of row b). A query with no visible key outputs 0 and receives no
gradient.

Letters: B batch, H query heads, Hkv key/value heads (H % Hkv == 0), Tq queries, Tk keys,
D head dim.
"""

import torch
import torch.nn.functional as F


def visible_keys(Tq, Tk, causal, kv_start=None, kv_len=None, device=None):
    """Boolean visibility mask, (1, 1, Tq, Tk), or (B, 1, Tq, Tk) with kv_start or kv_len."""
    i = torch.arange(Tq, device=device)[:, None]  # (Tq, 1)
    j = torch.arange(Tk, device=device)[None, :]  # (1, Tk)
    if kv_len is None:
        visible = (j <= i + (Tk - Tq)) if causal else torch.ones(Tq, Tk, dtype=torch.bool,
                                                                 device=device)
        visible = visible[None, None]  # (1, 1, Tq, Tk)
    else:
        end = kv_len.to(device).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        visible = j < end  # (B, 1, 1, Tk)
        if causal:
            visible = j <= i + (end - Tq)  # (B, 1, Tq, Tk); implies j < end for i < Tq
    if kv_start is not None:
        visible = visible & (j >= kv_start.to(device).view(-1, 1, 1, 1))  # (B, 1, Tq, Tk)
    return visible


def attention_reference(q, k, v, causal=True, kv_start=None, kv_len=None):
    """Attention of q (B, H, Tq, D) over k, v (B, Hkv, Tk, D); returns (B, H, Tq, D) in q's dtype.

    Computed in the inputs' precision (float64 inputs give the test oracle). Grouped-query
    attention goes through SDPA's enable_gqa, so K and V are shared by H // Hkv query heads.
    """
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    visible = visible_keys(Tq, Tk, causal, kv_start, kv_len, q.device)  # (B or 1, 1, Tq, Tk)
    has_key = visible.any(-1, keepdim=True)  # (B or 1, 1, Tq, 1)
    # A row that sees nothing attends to every key instead, which keeps its softmax finite on
    # every backend; it is zeroed below, so its output and the gradient through it are exactly 0.
    mask = visible | ~has_key
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=H != Hkv)
    return o.masked_fill(~has_key, 0.0)
