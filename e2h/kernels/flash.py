"""Fused attention in Triton: FlashAttention-2 forward, backward and decoding.

softmax(Q K^T / sqrt(D)) V tile by tile, never materializing the (Tq, Tk) scores: the forward
keeps a running max and sum per query row (online softmax; Dao 2023, FlashAttention-2, Alg. 1)
and saves the row log-sum-exp; the backward recomputes the probabilities from it (Alg. 2) in a
kernel that walks the queries of each key tile (dK, dV) and one that walks the keys of each
query tile (dQ), after Delta = rowsum(dO * O).

Supported
- q (B, H, Tq, D), k and v (B, Hkv, Tk, D), H % Hkv == 0: query head h reads kv head
  h // (H // Hkv) in place (K and V are never repeated). Any strides with unit stride on D.
- Key j is visible to query i iff (not causal or j <= i + Tk - Tq) and j >= kv_start[b], as in
  e2h/kernels/reference.py: Tq < Tk is a chunked prefill or (Tq == 1) a decoding step over a KV
  cache, kv_start skips each row's left padding. A row with no visible key outputs exactly 0
  and gets no gradient.
- Any Tq and Tk (tails are masked, not padded). Tiles above the causal diagonal or before
  kv_start are skipped; only tiles that straddle a boundary pay for the mask.
- float32, bfloat16, float16; D in {16, 32, 64, 128}. Differentiable in q, k and v.

Precision contract
- Scores, softmax statistics and accumulators in float32; the log-sum-exp is saved in float32.
- bfloat16/float16: P and dS are rounded to the input dtype for their matrix products (as in
  FlashAttention), outputs and gradients once at the end; the max error against a float64
  reference is at most twice that of PyTorch's attention in the same precision.
- float32: IEEE float32 products (no TF32), relative error ~1e-7.

Limits
- No dropout, bias, custom scale or sliding window; B * H <= 65535; other head dims go to the
  reference through e2h.kernels.attend. The H100 tile candidates are untimed (bench/README.md).
- A decoding step still fills a 16-row query tile, and the heads of a group read their shared
  K/V separately (mostly from L2).
- Triton 3.9's interpreter multiplies bfloat16 tiles as raw integers and truncates float32 to
  bfloat16, so under TRITON_INTERPRET=1 bfloat16 products run in float32 on operands rounded to
  nearest even by hand, the roundings the GPU applies.
"""
import math
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")
LOG2E = 1.4426950408889634  # scores are kept in base 2 so the softmax uses exp2
HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _configs(candidates):
    """(BLOCK_M query rows, BLOCK_N keys, warps, stages) to try on H100; one when interpreted."""
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in candidates]


def _prune(configs, named_args, **kwargs):
    """Drop query tiles taller than Tq needs (a decoding step keeps only 16-row tiles)."""
    rows = max(16, named_args["TQ_BUCKET"])
    return [c for c in configs if c.kwargs["BLOCK_M"] <= rows] or configs[:1]


_KEY = ["HEAD_DIM", "CAUSAL", "TQ_BUCKET"]
_FWD_CONFIGS = _configs([(16, 64, 4, 3), (16, 128, 4, 3), (64, 64, 4, 3), (64, 128, 4, 3),
                         (128, 64, 4, 3), (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2),
                         (128, 128, 8, 3)])
_DKDV_CONFIGS = _configs([(16, 64, 4, 3), (32, 64, 4, 3), (32, 128, 4, 3), (32, 128, 8, 3),
                          (64, 64, 4, 3), (64, 128, 8, 3), (32, 128, 4, 5)])
_DQ_CONFIGS = _configs([(16, 64, 4, 3), (64, 32, 4, 3), (64, 64, 4, 3), (128, 32, 4, 3),
                        (128, 32, 8, 3), (128, 64, 8, 3), (128, 32, 4, 5)])


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _round(x, dtype: tl.constexpr, UPCAST: tl.constexpr):
    """x rounded to dtype; interpreted bfloat16 is rounded by hand and kept in float32."""
    if UPCAST:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _load_rows(PTR, offs, stride, offs_d, n):
    """Rows offs of an (n, D) matrix; rows past n read as 0."""
    return tl.load(PTR + offs[:, None] * stride + offs_d[None, :], mask=offs[:, None] < n,
                   other=0.0)


@triton.jit
def _store_rows(PTR, offs, stride, offs_d, n, x, UPCAST: tl.constexpr):
    x = _round(x, PTR.dtype.element_ty, UPCAST).to(PTR.dtype.element_ty)
    tl.store(PTR + offs[:, None] * stride + offs_d[None, :], x, mask=offs[:, None] < n)


@triton.jit
def _visible(i, j, Tk, diag, kv_lo, CAUSAL: tl.constexpr):
    """Which keys j each query i sees; i and j broadcast to the tile's shape."""
    visible = (j < Tk) & (j >= kv_lo)
    if CAUSAL:
        visible = visible & (j <= i + diag)
    return visible


@triton.jit
def _key_ranges(m0, kv_lo, Tk, diag, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr):
    """Key tiles of the query rows [m0, m0 + BLOCK_M) as three ranges: [lo, lo_end) and
    [hi_start, hi) straddle kv_start, the diagonal or Tk and are masked; every row sees the
    tiles of [full_lo, full_hi) whole, so they skip the mask."""
    lo = kv_lo // BLOCK_N * BLOCK_N
    full_lo = tl.cdiv(kv_lo, BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(Tk, m0 + BLOCK_M + diag)
        full_hi = tl.maximum(tl.minimum(Tk, m0 + diag + 1), 0) // BLOCK_N * BLOCK_N
    else:
        hi = Tk
        full_hi = Tk // BLOCK_N * BLOCK_N
    return lo, tl.minimum(full_lo, hi), full_lo, full_hi, tl.maximum(full_lo, full_hi), hi


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, lo, hi, K, V, stride_kt, stride_vt, offs_m, offs_d, Tk, diag,
               kv_lo, qk_scale, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
               BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = tl.multiple_of(start_n, BLOCK_N) + tl.arange(0, BLOCK_N)
        k = _load_rows(K, offs_n, stride_kt, offs_d, Tk)
        qk = _dot(q, tl.trans(k), None, PRECISION, UPCAST)  # (BLOCK_M, BLOCK_N)
        if MASKED:
            qk = tl.where(_visible(offs_m[:, None], offs_n[None, :], Tk, diag, kv_lo, CAUSAL),
                          qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        # A row that has seen no key yet keeps m = -inf; subtracting 0 keeps exp2 at 0, not NaN.
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk * qk_scale - m_sub[:, None])  # (BLOCK_M, BLOCK_N)
        alpha = tl.math.exp2(m_i - m_sub)  # rescales what was summed under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(V, offs_n, stride_vt, offs_d, Tk)
        acc = _dot(_round(p, v.dtype, UPCAST), v, acc * alpha[:, None], PRECISION, UPCAST)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=_FWD_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _attn_fwd(Q, K, V, O, LSE, KV_START, qk_scale,
              stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
              stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
              H, GROUP, Tq, Tk, TQ_BUCKET,
              HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
              UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Longest causal rows first, so short tiles fill the tail of the grid.
    start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), bh % H
    K += b * stride_kb + (h // GROUP) * stride_kh  # grouped-query: the kv head of head h
    V += b * stride_vb + (h // GROUP) * stride_vh
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, stride_qt, offs_d, Tq)
    kv_lo = tl.load(KV_START + b)
    diag = Tk - Tq
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    lo, lo_end, full_lo, full_hi, hi_start, hi = _key_ranges(start_m * BLOCK_M, kv_lo, Tk, diag,
                                                             CAUSAL, BLOCK_M, BLOCK_N)
    args = (K, V, stride_kt, stride_vt, offs_m, offs_d, Tk, diag, kv_lo, qk_scale, CAUSAL)
    consts = (BLOCK_N, PRECISION, UPCAST)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, lo, lo_end, *args, True, *consts)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, full_lo, full_hi, *args, False, *consts)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, hi_start, hi, *args, True, *consts)
    empty = l_i == 0.0  # no visible key: output 0, and lse = +inf makes every recomputed p 0
    l_i = tl.where(empty, 1.0, l_i)
    lse = tl.where(empty, float("inf"), (m_i + tl.math.log2(l_i)) / LOG2E)  # natural log
    _store_rows(O + b * stride_ob + h * stride_oh, offs_m, stride_ot, offs_d, Tq,
                acc / l_i[:, None], UPCAST)
    tl.store(LSE + bh * Tq + offs_m, lse, mask=offs_m < Tq)


@triton.jit
def _attn_bwd_delta(O, DO, DELTA, stride_ob, stride_oh, stride_ot, stride_dob, stride_doh,
                    stride_dot, H, Tq, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """Delta = rowsum(dO * O) (FlashAttention-2, Alg. 2 line 4): one float32 per query row."""
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    o = _load_rows(O + b * stride_ob + h * stride_oh, offs_m, stride_ot, offs_d, Tq)
    do = _load_rows(DO + b * stride_dob + h * stride_doh, offs_m, stride_dot, offs_d, Tq)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,)
    tl.store(DELTA + bh * Tq + offs_m, delta, mask=offs_m < Tq)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, lo, hi, Q, DO, LSE, DELTA, stride_qt, stride_dot, offs_n, offs_d,
                Tq, Tk, diag, kv_lo, qk_scale, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
                BLOCK_M: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # Scores are kept transposed, (BLOCK_N keys, BLOCK_M queries), so dK and dV accumulate
    # without transposing the tile. Keys past Tk need no mask: their rows are never stored.
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = tl.multiple_of(start_m, BLOCK_M) + tl.arange(0, BLOCK_M)
        q = _load_rows(Q, offs_m, stride_qt, offs_d, Tq)
        do = _load_rows(DO, offs_m, stride_dot, offs_d, Tq)
        lse = tl.load(LSE + offs_m, mask=offs_m < Tq, other=float("inf")) * LOG2E
        delta = tl.load(DELTA + offs_m, mask=offs_m < Tq, other=0.0)
        p_t = tl.math.exp2(_dot(k, tl.trans(q), None, PRECISION, UPCAST) * qk_scale
                           - lse[None, :])  # (BLOCK_N, BLOCK_M)
        if MASKED:
            p_t = tl.where(_visible(offs_m[None, :], offs_n[:, None], Tk, diag, kv_lo, CAUSAL),
                           p_t, 0.0)
        dv = _dot(_round(p_t, do.dtype, UPCAST), do, dv, PRECISION, UPCAST)  # dV += P^T dO
        dp_t = _dot(v, tl.trans(do), None, PRECISION, UPCAST)  # (dO V^T)^T
        ds_t = p_t * (dp_t - delta[None, :])  # dS = P * (dP - Delta)
        dk = _dot(_round(ds_t, q.dtype, UPCAST), q, dk, PRECISION, UPCAST)  # dK += dS^T Q
    return dk, dv


@triton.autotune(configs=_DKDV_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, KV_START, qk_scale, sm_scale,
                   stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                   stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
                   stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
                   H, GROUP, Tq, Tk, TQ_BUCKET,
                   HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
                   UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bhk = tl.program_id(1)
    b = (bhk // (H // GROUP)).to(tl.int64)
    hk = bhk % (H // GROUP)
    n0 = tl.program_id(0) * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k = _load_rows(K + b * stride_kb + hk * stride_kh, offs_n, stride_kt, offs_d, Tk)
    v = _load_rows(V + b * stride_vb + hk * stride_vh, offs_n, stride_vt, offs_d, Tk)
    kv_lo = tl.load(KV_START + b)
    diag = Tk - Tq
    # Query tiles that see this key tile: [lo, Tq); those from `full` on see all of it.
    lo, full = 0, 0
    if CAUSAL:
        lo = tl.maximum(n0 - diag, 0) // BLOCK_M * BLOCK_M
        full = tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - diag, 0), BLOCK_M) * BLOCK_M
    full = tl.where(n0 < kv_lo, Tq, full)  # a tile holding padding is masked for every query
    lo = tl.where(n0 + BLOCK_N <= kv_lo, Tq, lo)  # only padding: dK = dV = 0
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    consts = (BLOCK_M, PRECISION, UPCAST)
    for g in range(GROUP):  # the query heads that share this kv head
        h = hk * GROUP + g
        args = (Q + b * stride_qb + h * stride_qh, DO + b * stride_dob + h * stride_doh,
                LSE + (b * H + h) * Tq, DELTA + (b * H + h) * Tq, stride_qt, stride_dot, offs_n,
                offs_d, Tq, Tk, diag, kv_lo, qk_scale, CAUSAL)
        dk, dv = _dkdv_tiles(dk, dv, k, v, lo, tl.minimum(full, Tq), *args, True, *consts)
        dk, dv = _dkdv_tiles(dk, dv, k, v, tl.maximum(full, lo), Tq, *args, False, *consts)
    dk *= sm_scale  # dS was taken with respect to the scaled scores
    _store_rows(DK + b * stride_dkb + hk * stride_dkh, offs_n, stride_dkt, offs_d, Tk, dk, UPCAST)
    _store_rows(DV + b * stride_dvb + hk * stride_dvh, offs_n, stride_dvt, offs_d, Tk, dv, UPCAST)


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, lo, hi, K, V, stride_kt, stride_vt, offs_m, offs_d, Tk, diag,
              kv_lo, qk_scale, CAUSAL: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
              PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = tl.multiple_of(start_n, BLOCK_N) + tl.arange(0, BLOCK_N)
        k = _load_rows(K, offs_n, stride_kt, offs_d, Tk)
        v = _load_rows(V, offs_n, stride_vt, offs_d, Tk)
        p = tl.math.exp2(_dot(q, tl.trans(k), None, PRECISION, UPCAST) * qk_scale
                         - lse[:, None])  # (BLOCK_M, BLOCK_N)
        if MASKED:
            p = tl.where(_visible(offs_m[:, None], offs_n[None, :], Tk, diag, kv_lo, CAUSAL),
                         p, 0.0)
        dp = _dot(do, tl.trans(v), None, PRECISION, UPCAST)  # dP = dO V^T
        ds = p * (dp - delta[:, None])  # dS = P * (dP - Delta)
        dq = _dot(_round(ds, k.dtype, UPCAST), k, dq, PRECISION, UPCAST)  # dQ += dS K
    return dq


@triton.autotune(configs=_DQ_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, KV_START, qk_scale, sm_scale,
                 stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                 stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
                 stride_dqb, stride_dqh, stride_dqt, H, GROUP, Tq, Tk, TQ_BUCKET,
                 HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
                 UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b, h = (bh // H).to(tl.int64), bh % H
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, stride_qt, offs_d, Tq)
    do = _load_rows(DO + b * stride_dob + h * stride_doh, offs_m, stride_dot, offs_d, Tq)
    lse = tl.load(LSE + bh * Tq + offs_m, mask=offs_m < Tq, other=float("inf")) * LOG2E
    delta = tl.load(DELTA + bh * Tq + offs_m, mask=offs_m < Tq, other=0.0)
    kv_lo = tl.load(KV_START + b)
    diag = Tk - Tq
    lo, lo_end, full_lo, full_hi, hi_start, hi = _key_ranges(start_m * BLOCK_M, kv_lo, Tk, diag,
                                                             CAUSAL, BLOCK_M, BLOCK_N)
    K += b * stride_kb + (h // GROUP) * stride_kh
    V += b * stride_vb + (h // GROUP) * stride_vh
    args = (K, V, stride_kt, stride_vt, offs_m, offs_d, Tk, diag, kv_lo, qk_scale, CAUSAL)
    consts = (BLOCK_N, PRECISION, UPCAST)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    dq = _dq_tiles(dq, q, do, lse, delta, lo, lo_end, *args, True, *consts)
    dq = _dq_tiles(dq, q, do, lse, delta, full_lo, full_hi, *args, False, *consts)
    dq = _dq_tiles(dq, q, do, lse, delta, hi_start, hi, *args, True, *consts)
    _store_rows(DQ + b * stride_dqb + h * stride_dqh, offs_m, stride_dqt, offs_d, Tq,
                dq * sm_scale, UPCAST)


def _strides(x):
    return x.stride(0), x.stride(1), x.stride(2)  # batch, head, time; D has stride 1


def _unit_last(x):
    return x if x.stride(-1) == 1 else x.contiguous()  # rows load as contiguous vectors


def _meta(q):  # compile-time arguments of every launch
    upcast = INTERPRET and q.dtype == torch.bfloat16
    precision = "ieee" if q.dtype == torch.float32 or upcast else "tf32"  # tf32: unused for 16-bit
    return {"HEAD_DIM": q.shape[-1], "PRECISION": precision, "UPCAST": upcast}


class _Attention(torch.autograd.Function):
    """Every buffer a kernel writes comes from torch.empty/empty_like and is written whole."""

    @staticmethod
    def forward(ctx, q, k, v, causal, kv_start):
        (B, H, Tq, D), (Hkv, Tk) = q.shape, k.shape[1:3]
        o = torch.empty_like(q)
        lse = torch.empty(B, H, Tq, device=q.device, dtype=torch.float32)  # natural log
        grid = lambda meta: (triton.cdiv(Tq, meta["BLOCK_M"]), B * H)  # noqa: E731
        _attn_fwd[grid](q, k, v, o, lse, kv_start, LOG2E / math.sqrt(D), *_strides(q),
                        *_strides(k), *_strides(v), *_strides(o), H, H // Hkv, Tq, Tk,
                        triton.next_power_of_2(Tq), CAUSAL=causal, **_meta(q))
        ctx.save_for_backward(q, k, v, o, lse, kv_start)
        ctx.causal = causal
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, kv_start = ctx.saved_tensors
        do = _unit_last(do)
        (B, H, Tq, D), (Hkv, Tk) = q.shape, k.shape[1:3]
        delta = torch.empty_like(lse)  # (B, H, Tq)
        _attn_bwd_delta[(triton.cdiv(Tq, 64), B * H)](o, do, delta, *_strides(o), *_strides(do),
                                                      H, Tq, HEAD_DIM=D, BLOCK_M=64)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        common = (LOG2E / math.sqrt(D), 1.0 / math.sqrt(D), *_strides(q), *_strides(k),
                  *_strides(v), *_strides(do))
        shape = (H, H // Hkv, Tq, Tk, triton.next_power_of_2(Tq))
        grid = lambda meta: (triton.cdiv(Tk, meta["BLOCK_N"]), B * Hkv)  # noqa: E731
        _attn_bwd_dkdv[grid](q, k, v, do, dk, dv, lse, delta, kv_start, *common, *_strides(dk),
                             *_strides(dv), *shape, CAUSAL=ctx.causal, **_meta(q))
        grid = lambda meta: (triton.cdiv(Tq, meta["BLOCK_M"]), B * H)  # noqa: E731
        _attn_bwd_dq[grid](q, k, v, do, dq, lse, delta, kv_start, *common, *_strides(dq), *shape,
                           CAUSAL=ctx.causal, **_meta(q))
        return dq, dk, dv, None, None


def _problem(q, k, v, kv_start):
    """Why the Triton path cannot take these inputs, or None."""
    if (q.dim() != 4 or k.dim() != 4 or v.shape != k.shape or k.shape[0] != q.shape[0]
            or k.shape[3] != q.shape[3] or q.shape[1] % k.shape[1] != 0):
        return f"shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)} are not q " \
               "(B, H, Tq, D), k and v (B, Hkv, Tk, D) with H % Hkv == 0"
    if q.shape[3] not in HEAD_DIMS:
        return f"head dim {q.shape[3]} unsupported; expected one of {HEAD_DIMS}"
    if not q.dtype == k.dtype == v.dtype or q.dtype not in DTYPES:
        return f"dtypes {q.dtype}, {k.dtype}, {v.dtype}; expected one of {DTYPES}"
    if not q.is_cuda and not INTERPRET:
        return f"{q.device} tensors need TRITON_INTERPRET=1 set before the first Triton call"
    if q.shape[0] * q.shape[1] > 65535:
        return f"B * H = {q.shape[0] * q.shape[1]} exceeds the grid limit 65535"
    if kv_start is not None and tuple(kv_start.shape) != (q.shape[0],):
        return f"kv_start has shape {tuple(kv_start.shape)}; expected ({q.shape[0]},)"
    return None


def attention(q, k, v, causal=True, kv_start=None):
    """q (B, H, Tq, D), k and v (B, Hkv, Tk, D), kv_start None or (B,) ints -> (B, H, Tq, D) in
    q's dtype; differentiable in q, k and v; the semantics of e2h/kernels/reference.py."""
    problem = _problem(q, k, v, kv_start)
    if problem:
        raise ValueError(f"e2h/kernels/flash.py: {problem}")
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    kv_start = (torch.zeros(q.shape[0], dtype=torch.int32, device=q.device) if kv_start is None
                else kv_start.to(device=q.device, dtype=torch.int32).clamp(min=0).contiguous())
    return _Attention.apply(q, k, v, causal, kv_start)
