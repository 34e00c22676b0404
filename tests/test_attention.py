"""Tests for e2h/kernels/: Triton attention, the decode path, the PyTorch reference, the dispatcher.

The Triton kernels run on CPU tensors through Triton's interpreter. Every check draws fresh
random inputs in the tested dtype and compares against float64 attention on the same values,
so only arithmetic error is measured:
- float32: ||kernel - float64|| / ||float64|| <= 1e-6 for the output and dq, dk, dv;
- bfloat16/float16: max |kernel - float64| <= 2 * max |reference - float64|, the reference
  being attention_reference run in the same dtype (PyTorch's own attention on CPU).
Every buffer the kernels allocate is filled with NaN first (see `poisoned`), so an element a
kernel fails to write shows up as NaN.

Letters: B batch, H query heads, Hkv kv heads, Tq queries, Tk keys, D head dim.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # read by triton when the kernels are defined (first call)

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from e2h import kernels

ROOT = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton not installed")

# (B, H, Hkv, Tq, Tk, D, causal, kv_start). The interpreted kernels use 16 x 16 tiles; the
# causal offsets Tk - Tq = 0, 17, 30, -17 are 0, 1, 14, 15 mod 16, and kv_start 15, 17 sit one
# short of and one past a tile edge: where an off-by-one in the tile ranges would show.
CASES = {
    "causal, lengths off the tile grid": (2, 2, 2, 37, 37, 32, True, None),
    "grouped-query, not causal": (1, 4, 2, 33, 33, 64, False, None),
    "decoding step, 4 heads on 1 kv head": (1, 4, 1, 1, 45, 16, True, None),
    "chunked prefill": (1, 2, 2, 20, 37, 16, True, None),
    "chunked prefill over a left-padded cache": (2, 2, 1, 13, 43, 32, True, [0, 17]),
    "left-padded prompts, padded queries see nothing": (2, 2, 2, 29, 29, 16, True, [0, 15]),
    "more queries than keys, a row all padding": (2, 1, 1, 26, 9, 16, True, [3, 9]),
    "not causal, left-padded": (2, 2, 1, 24, 33, 16, False, [5, 20]),
}
# (B, H, Hkv, Tq, Tk, D, causal, kv_start, kv_len): rows of a cache filled to different lengths
# kv_len (continuous batching), the shapes of the decode path. kv_len 0 leaves a row no key.
RAGGED_CASES = {
    "decoding step over rows of different lengths, 4 heads on 2": (3, 4, 2, 1, 23, 16, True,
                                                                   None, [23, 5, 11]),
    "decoding step, a row with nothing filled": (2, 2, 1, 1, 9, 32, True, None, [0, 9]),
    "three queries over ragged rows": (2, 4, 1, 3, 19, 32, True, None, [19, 7]),
    "a row of one key": (2, 2, 2, 1, 6, 16, True, None, [1, 4]),
    "not causal, left-padded and ragged": (2, 2, 2, 1, 17, 16, False, [4, 0], [12, 17]),
}
ALL_CASES = {**{name: (*case, None) for name, case in CASES.items()}, **RAGGED_CASES}


def as_tensor(ints):
    return None if ints is None else torch.tensor(ints)


def draw(seed, dtype, B, H, Hkv, Tq, Tk, D, transposed):
    """Fresh q, do (B, H, Tq, D) and k, v (B, Hkv, Tk, D); transposed: the model's
    (B, T, H, D).transpose(1, 2) views, which the kernel must read through their strides."""
    g = torch.Generator().manual_seed(seed)

    def one(heads, T):
        if transposed:
            return torch.randn(B, T, heads, D, generator=g).to(dtype).transpose(1, 2)
        return torch.randn(B, heads, T, D, generator=g).to(dtype)

    return one(H, Tq), one(Hkv, Tk), one(Hkv, Tk), one(H, Tq)


def forward_backward(fn, q, k, v, do, causal, kv_start, dtype, **kv_len):
    """[o, dq, dk, dv] of fn on the inputs converted to dtype."""
    x = [t.to(dtype).detach().requires_grad_() for t in (q, k, v)]
    o = fn(*x, causal=causal, kv_start=kv_start, **kv_len)
    return [o, *torch.autograd.grad(o, x, do.to(dtype))]


@pytest.fixture
def poisoned(monkeypatch):
    """torch.empty/empty_like return NaN-filled floating tensors; yields their storages."""
    storages = set()
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
            storages.add(t.untyped_storage().data_ptr())
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(empty_like(*a, **kw)))
    yield storages


def check_kernel(case, dtype, seed, poisoned, transposed=False):
    B, H, Hkv, Tq, Tk, D, causal, kv_start = case
    q, k, v, do = draw(seed, dtype, B, H, Hkv, Tq, Tk, D, transposed)
    kv_start = None if kv_start is None else torch.tensor(kv_start)
    run = lambda fn, dt: forward_backward(fn, q, k, v, do, causal, kv_start, dt)  # noqa: E731
    truth = run(kernels.attention_reference, torch.float64)
    reference = run(kernels.attention_reference, dtype)
    poisoned.clear()
    ours = run(kernels.attention, dtype)
    for name, x, r, t in zip(["o", "dq", "dk", "dv"], ours, reference, truth):
        assert x.dtype == dtype and x.shape == t.shape, name
        assert x.untyped_storage().data_ptr() in poisoned, f"{name} was not allocated poisoned"
        assert not x.isnan().any(), f"{name}: unwritten (NaN) elements"
        err = (x.double() - t).abs()
        if dtype == torch.float32:
            rel = err.norm() / t.norm()
            assert rel <= 1e-6, f"{name}: relative error {rel:.2e}"
        else:
            budget = 2 * (r.double() - t).abs().max()
            assert err.max() <= budget, f"{name}: {err.max():.2e} > 2 x {budget / 2:.2e}"


@needs_triton
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_float32(name, poisoned):
    check_kernel(CASES[name], torch.float32, seed=list(CASES).index(name), poisoned=poisoned)


@needs_triton
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_bfloat16(name, poisoned):
    check_kernel(CASES[name], torch.bfloat16, seed=100 + list(CASES).index(name),
                 poisoned=poisoned)


@needs_triton
@pytest.mark.parametrize("name", ["causal, lengths off the tile grid",
                                  "chunked prefill over a left-padded cache"])
def test_kernel_float16(name, poisoned):
    check_kernel(CASES[name], torch.float16, seed=200 + list(CASES).index(name),
                 poisoned=poisoned)


@needs_triton
def test_kernel_reads_transposed_views(poisoned):
    case = CASES["left-padded prompts, padded queries see nothing"]
    check_kernel(case, torch.bfloat16, seed=300, poisoned=poisoned, transposed=True)


def explicit_attention(q, k, v, causal, kv_start, kv_len=None):
    """softmax(q k^T / sqrt(D)) v with the mask written out element by element."""
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    group = H // Hkv
    o = torch.zeros_like(q)
    for b in range(B):
        end = Tk if kv_len is None else kv_len[b]  # row b's keys are slots [0, end)
        for h in range(H):
            for i in range(Tq):
                keys = [j for j in range(end) if (not causal or j <= i + end - Tq)
                        and (kv_start is None or j >= kv_start[b])]
                if not keys:
                    continue  # nothing visible: the row stays 0
                kk, vv = k[b, h // group, keys], v[b, h // group, keys]  # (n, D)
                p = torch.softmax(kk @ q[b, h, i] / math.sqrt(D), dim=0)  # (n,)
                o[b, h, i] = p @ vv
    return o


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_reference_matches_explicit_softmax(name):
    B, H, Hkv, Tq, Tk, D, causal, kv_start, kv_len = ALL_CASES[name]
    q, k, v, do = draw(400 + list(ALL_CASES).index(name), torch.float64, B, H, Hkv, Tq, Tk, D,
                       False)
    ref = forward_backward(kernels.attention_reference, q, k, v, do, causal, as_tensor(kv_start),
                           torch.float64, kv_len=as_tensor(kv_len))
    exp = forward_backward(explicit_attention, q, k, v, do, causal, kv_start, torch.float64,
                           kv_len=kv_len)
    for name, r, e in zip(["o", "dq", "dk", "dv"], ref, exp):
        torch.testing.assert_close(r, e, rtol=1e-12, atol=1e-12, msg=name)


def check_decode(case, dtype, seed, transposed=False):
    """The decode path against float64 attention, with the budget of `check_kernel`."""
    B, H, Hkv, Tq, Tk, D, causal, kv_start, kv_len = case
    q, k, v, do = draw(seed, dtype, B, H, Hkv, Tq, Tk, D, transposed)
    kw = dict(kv_len=as_tensor(kv_len))
    run = lambda fn, dt: forward_backward(fn, q, k, v, do, causal, as_tensor(kv_start), dt, **kw)  # noqa: E731
    truth = run(kernels.attention_reference, torch.float64)
    reference = run(kernels.attention_reference, dtype)
    ours = run(kernels.attention_decode, dtype)
    for name, x, r, t in zip(["o", "dq", "dk", "dv"], ours, reference, truth):
        assert x.dtype == dtype and x.shape == t.shape, name
        err = (x.double() - t).abs()
        if dtype == torch.float32:
            rel = err.norm() / t.norm()
            assert rel <= 1e-6, f"{name}: relative error {rel:.2e}"
        else:
            budget = 2 * (r.double() - t).abs().max()
            assert err.max() <= budget, f"{name}: {err.max():.2e} > 2 x {budget / 2:.2e}"
    if kv_len is not None and 0 in kv_len:  # a row that sees nothing: exactly 0, no gradient
        empty = kv_len.index(0)
        assert not ours[0][empty].any() and not ours[1][empty].any()


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_decode_float32(name):
    check_decode(ALL_CASES[name], torch.float32, seed=600 + list(ALL_CASES).index(name))


@pytest.mark.parametrize("name", list(RAGGED_CASES) + ["decoding step, 4 heads on 1 kv head"])
def test_decode_bfloat16(name):
    check_decode(ALL_CASES[name], torch.bfloat16, seed=700 + list(ALL_CASES).index(name),
                 transposed=True)


def test_reference_hand_computed():
    # D = 4, scale 1/2. q . k0 = 0 and q . k1 = 2 ln 3, so the scores are 0 and ln 3 and the
    # weights 1/4, 3/4: o = (v0 + 3 v1) / 4 = (1 + 3 * 5) / 4 = 4 in every component.
    q = torch.tensor([2 * math.log(3), 0.0, 0.0, 0.0], dtype=torch.float64).view(1, 1, 1, 4)
    k = torch.tensor([[0.0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.float64).view(1, 1, 2, 4)
    v = torch.tensor([[1.0] * 4, [5.0] * 4], dtype=torch.float64).view(1, 1, 2, 4)
    o = kernels.attention_reference(q, k, v, causal=True)
    torch.testing.assert_close(o, torch.full((1, 1, 1, 4), 4.0, dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)
    # kv_start = 1 hides key 0: o = v1 = 5. kv_start = 2 hides both: o = 0.
    o = kernels.attention_reference(q, k, v, causal=True, kv_start=torch.tensor([1]))
    assert o.flatten().tolist() == pytest.approx([5.0] * 4, abs=1e-12)
    o = kernels.attention_reference(q, k, v, causal=True, kv_start=torch.tensor([2]))
    assert o.flatten().tolist() == [0.0] * 4
    # Two queries over two keys, causal: query 0 sees key 0 only, so o[0] = v0 = 1.
    o = kernels.attention_reference(q.expand(1, 1, 2, 4), k, v, causal=True)
    assert o[0, 0, 0].tolist() == pytest.approx([1.0] * 4, abs=1e-12)
    # kv_len = 1: the row holds key 0 only, so o = v0 = 1; the decode path agrees.
    for fn in (kernels.attention_reference, kernels.attention_decode):
        o = fn(q, k, v, causal=True, kv_len=torch.tensor([1]))
        assert o.flatten().tolist() == pytest.approx([1.0] * 4, abs=1e-12)
    o = kernels.attention_decode(q, k, v, causal=True)
    assert o.flatten().tolist() == pytest.approx([4.0] * 4, abs=1e-12)


@needs_triton
def test_attend_dispatch(monkeypatch):
    q, k, v, _ = draw(500, torch.float32, 1, 2, 1, 5, 7, 16, False)
    kv_start, kv_len = torch.tensor([2]), torch.tensor([6])
    monkeypatch.delenv("E2H_ATTENTION", raising=False)
    assert torch.equal(kernels.attend(q, k, v, True, kv_start),
                       kernels.attention_reference(q, k, v, True, kv_start))  # CPU: reference
    one = q[:, :, -1:]  # CPU, one query: the decode path from DECODE_MIN_ROWS (row, head) pairs
    many = one.expand(kernels.DECODE_MIN_ROWS // 2, 2, 1, 16)
    big_k, big_v = k.expand(len(many), 1, 7, 16), v.expand(len(many), 1, 7, 16)
    kv_len_many = kv_len.expand(len(many))
    assert torch.equal(kernels.attend(many, big_k, big_v, True, None, kv_len_many),
                       kernels.attention_decode(many, big_k, big_v, True, None, kv_len_many))
    assert torch.equal(kernels.attend(one, k, v, True, kv_start, kv_len),
                       kernels.attention_reference(one, k, v, True, kv_start, kv_len))
    monkeypatch.setenv("E2H_ATTENTION", "triton")
    assert torch.equal(kernels.attend(q, k, v, True, kv_start),
                       kernels.attention(q, k, v, True, kv_start))
    with pytest.raises(ValueError, match="takes no kv_len"):
        kernels.attend(q, k, v, True, kv_start, kv_len)
    monkeypatch.setenv("E2H_ATTENTION", "decode")
    assert torch.equal(kernels.attend(q, k, v, True, kv_start, kv_len),
                       kernels.attention_decode(q, k, v, True, kv_start, kv_len))
    monkeypatch.setenv("E2H_ATTENTION", "reference")
    assert torch.equal(kernels.attend(one, k, v, True, kv_start, kv_len),
                       kernels.attention_reference(one, k, v, True, kv_start, kv_len))
    monkeypatch.setenv("E2H_ATTENTION", "fast")
    with pytest.raises(ValueError, match="E2H_ATTENTION"):
        kernels.attend(q, k, v)


@needs_triton
def test_kernel_rejects_unsupported_head_dim():
    q = torch.randn(1, 1, 4, 24)
    with pytest.raises(ValueError, match="e2h/kernels/flash.py: head dim 24"):
        kernels.attention(q, q, q)


def test_import_and_cpu_path_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"  # makes `import triton` fail
            "import torch\nfrom e2h import kernels\n"
            "q = torch.randn(1, 2, 3, 16)\n"
            "assert kernels.attend(q, q, q).shape == (1, 2, 3, 16)\n"
            "try:\n    kernels.attention(q, q, q)\nexcept ImportError:\n    print('ok')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "E2H_ATTENTION": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_kernels_on_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "attention.py"), "--check-only"],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
