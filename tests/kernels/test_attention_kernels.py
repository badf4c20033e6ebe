"""The decoder's attention kernels (packed causal prefill, split-KV decode) against plain torch.

Without a GPU the kernels run through the Triton interpreter on CPU tensors (the conftest sets
TRITON_INTERPRET=1), on small shapes; the GPU-only tests at the end use the real sizes (10 heads
x 128, bf16). Expected values come from float64 torch (the references run on float64 copies of
the inputs) or are made by hand, never from the kernels.
"""
from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepseek_ocr.kernels import _common, interpreting, set_enabled

if not (interpreting() or torch.cuda.is_available()):
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
if not _common.HAVE_TRITON:
    pytest.skip("triton is not installed", allow_module_level=True)

from deepseek_ocr import kernels  # noqa: E402
from deepseek_ocr.errors import KernelError  # noqa: E402


pre = importlib.import_module("deepseek_ocr.kernels.attention_prefill")
dec = importlib.import_module("deepseek_ocr.kernels.attention_decode")
_IMPLS = kernels._IMPLS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
on_gpu = pytest.mark.skipif(not torch.cuda.is_available() or interpreting(),
                            reason="needs CUDA (compiled Triton)")

# Kernel output vs the float64 reference: fp32 kernels accumulate in fp32 (IEEE dots); fp16/bf16
# round the output (half an ulp: 2**-11, 2**-8 relative) and the softmax weights fed to P @ V.
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=1.5e-2, rtol=1.5e-2)}


def _cu(lens: list[int]) -> torch.Tensor:
    return torch.tensor([0, *np.cumsum(lens).tolist()], dtype=torch.int32, device=DEVICE)


def _randn(*shape: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Drawn on DEVICE (the GPU tests' caches are 10 GB: too slow to make on the host)."""
    return torch.randn(*shape, generator=g, device=DEVICE).to(dtype)


def _qkv(total: int, heads: int, head_dim: int, dtype: torch.dtype, seed: int):
    g = torch.Generator(DEVICE).manual_seed(seed)
    return [_randn(total, heads, head_dim, dtype=dtype, g=g) for _ in range(3)]


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(got.double(), want.double(), **TOL[dtype])


# ---------------------------------------------------------------- prefill


@pytest.mark.parametrize("lens", [[1], [7], [33, 1, 7], [511], [64, 130, 0, 3, 65]],
                         ids=lambda x: "-".join(map(str, x)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_prefill_matches_reference(lens, dtype):
    head_dim = 128 if sum(lens) < 200 else 64  # both supported sizes, the long ones cheaper
    q, k, v = _qkv(sum(lens), 2, head_dim, dtype, seed=sum(lens))
    cu = _cu(lens)
    got = pre.prefill_attention_triton(q, k, v, cu, max(lens), 1 / math.sqrt(head_dim))
    want = pre.prefill_attention_reference(q.double(), k.double(), v.double(), cu, max(lens))
    assert got.dtype == dtype and got.shape == q.shape
    _close(got, want, dtype)


def test_prefill_reference_matches_sdpa():
    """The reference itself, against torch's SDPA per sequence (is_causal)."""
    lens = [5, 1, 12]
    q, k, v = _qkv(sum(lens), 2, 64, torch.float64, seed=3)
    cu = _cu(lens)
    got = pre.prefill_attention_reference(q, k, v, cu, max(lens))
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        want = F.scaled_dot_product_attention(*(x[s:e].transpose(0, 1) for x in (q, k, v)), is_causal=True)
        torch.testing.assert_close(got[s:e], want.transpose(0, 1))


def test_prefill_by_hand():
    """q = 0 makes the softmax uniform: row i of a sequence is the mean of its values 0..i, and
    nothing crosses from one packed sequence to the next."""
    lens = [3, 2]
    v = torch.tensor([1.0, 2.0, 6.0, 10.0, 20.0], device=DEVICE)[:, None, None].expand(5, 1, 64).contiguous()
    q = torch.zeros_like(v)
    k = torch.randn(5, 1, 64, device=DEVICE)
    got = pre.prefill_attention_triton(q, k, v, _cu(lens), 3, 0.125)
    want = torch.tensor([1.0, 1.5, 3.0, 10.0, 15.0], device=DEVICE)[:, None, None].expand(5, 1, 64)
    torch.testing.assert_close(got, want)


def test_prefill_strided_views_and_loose_max_seqlen():
    """q, k, v as views of one fused [T, 3, heads, hd] projection (no copies), and a grid sized
    for a longer max_seqlen than any sequence: the extra programs must write nothing."""
    lens = [20, 9]
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(sum(lens), 3, 2, 64, generator=g).to(DEVICE)
    q, k, v = qkv.unbind(1)  # each (T, nh, hd) with token stride 3*nh*hd
    cu = _cu(lens)
    got = pre.prefill_attention_triton(q, k, v, cu, 200, 0.125)
    want = pre.prefill_attention_reference(q.double(), k.double(), v.double(), cu, 20, 0.125)
    _close(got, want, torch.float32)


def test_prefill_dispatcher_routes(monkeypatch):
    lens = [9, 4]
    q, k, v = _qkv(sum(lens), 2, 64, torch.float32, seed=7)
    cu = _cu(lens)
    calls = []
    launcher = pre.prefill_attention_triton
    monkeypatch.setattr(pre, "prefill_attention_triton", lambda *a: calls.append(1) or launcher(*a))
    want = pre.prefill_attention_reference(q.double(), k.double(), v.double(), cu, 9)
    _close(pre.prefill_attention(q, k, v, cu, 9), want, torch.float32)
    assert calls == [1]
    set_enabled(False)
    try:
        _close(pre.prefill_attention(q, k, v, cu, 9), want, torch.float32)
    finally:
        set_enabled(True)
    assert calls == [1]  # the off switch ran the reference
    assert pre._kernel_or_none in _IMPLS["attention_prefill"]
    meta = [x.to("meta") for x in (q, k, v, cu)]
    assert pre._kernel_or_none(*meta, 9) is None  # not launchable: the seam falls through


@pytest.mark.parametrize("bad, message", [
    (dict(k=torch.zeros(4, 2, 64)), "one shape"),
    (dict(q=torch.zeros(5, 2, 48), k=torch.zeros(5, 2, 48), v=torch.zeros(5, 2, 48)), "power of two"),
    (dict(v=torch.zeros(5, 2, 64, dtype=torch.float16)), "float16"),
    (dict(cu=torch.tensor([0, 5])), "int32"),
    (dict(q=torch.zeros(2, 5, 2, 64)), "total_tokens"),
])
def test_prefill_rejects_bad_inputs(bad, message):
    args = dict(q=torch.zeros(5, 2, 64), k=torch.zeros(5, 2, 64), v=torch.zeros(5, 2, 64),
                cu=torch.tensor([0, 5], dtype=torch.int32))
    args.update(bad)
    with pytest.raises(KernelError, match=message):
        pre.prefill_attention(args["q"], args["k"], args["v"], args["cu"], 5)


def test_prefill_custom_op_registration():
    q, k, v = _qkv(6, 2, 64, torch.float32, seed=1)
    torch.library.opcheck(torch.ops.deepseek_ocr.attention_prefill.default, (q, k, v, _cu([4, 2]), 4, 0.125),
                          test_utils=("test_schema", "test_faketensor"))


# ---------------------------------------------------------------- decode


def _cache(batch: int, heads: int, l_max: int, head_dim: int, dtype: torch.dtype, seed: int):
    g = torch.Generator(DEVICE).manual_seed(seed)
    q = _randn(batch, heads, head_dim, dtype=dtype, g=g)
    kc, vc = (_randn(batch, heads, l_max, head_dim, dtype=dtype, g=g) for _ in range(2))
    return q, kc, vc


@pytest.mark.parametrize("lens, l_max, split", [
    ([1], 1, 0),
    ([511], 515, 0),            # 64-slot splits: 9 of them, the last one 3 slots
    ([7, 33, 1], 40, 16),       # 3 splits per row, L_max not a multiple of 16
    ([1, 7, 33, 300, 130], 520, 0),  # 64-slot splits: 9, L_max 520 = 8 x 64 + 8
], ids=["b1-len1", "b1-len511", "b3-split16", "b5-mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_matches_reference(lens, l_max, split, dtype):
    head_dim = 128 if l_max < 100 else 64
    q, kc, vc = _cache(len(lens), 2, l_max, head_dim, dtype, seed=l_max)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    got = dec.decode_attention_triton(q, kc, vc, seqlens, 1 / math.sqrt(head_dim), split)
    want = dec.decode_attention_reference(q.double(), kc.double(), vc.double(), seqlens)
    assert got.dtype == dtype and got.shape == q.shape
    _close(got, want, dtype)


def test_decode_reference_matches_sdpa():
    q, kc, vc = _cache(3, 2, 30, 64, torch.float64, seed=2)
    lens = [30, 1, 17]
    got = dec.decode_attention_reference(q, kc, vc, torch.tensor(lens, dtype=torch.int32, device=DEVICE))
    for b, n in enumerate(lens):
        want = F.scaled_dot_product_attention(q[b, :, None], kc[b, :, :n], vc[b, :, :n])[:, 0]
        torch.testing.assert_close(got[b], want)


def test_decode_by_hand_ignores_slots_past_length():
    """q = 0: the output is the plain mean of each row's first seqlens[b] values; the slots after
    them hold huge values that must not leak in. A length past L_max is clamped, 0 gives zeros."""
    lens, l_max = [5, 40, 1, 0, 60], 40
    _, kc, vc = _cache(len(lens), 2, l_max, 64, torch.float32, seed=4)
    want = torch.zeros(len(lens), 2, 64, dtype=torch.float64, device=DEVICE)
    for b, n in enumerate(lens):
        n = min(n, l_max)
        if n:
            want[b] = vc[b, :, :n].double().mean(dim=1)
        vc[b, :, n:] = 1e6
    q = torch.zeros(len(lens), 2, 64, device=DEVICE)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    got = dec.decode_attention_triton(q, kc, vc, seqlens, 0.125, 16)
    _close(got, want, torch.float32)


def test_decode_strided_cache():
    """Caches stored [B, L, heads, hd] and seen through a transpose, with spare slots beyond L_max."""
    lens, l_max = [21, 3], 24
    g = torch.Generator().manual_seed(6)
    q = torch.randn(2, 2, 64, generator=g).to(DEVICE)
    kc, vc = (torch.randn(2, l_max + 8, 2, 64, generator=g).to(DEVICE)[:, :l_max].transpose(1, 2)
              for _ in range(2))  # (B, nh, L_max, hd), slot stride nh*hd
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    got = dec.decode_attention_triton(q, kc, vc, seqlens, 0.125, 16)
    want = dec.decode_attention_reference(q.double(), kc.double(), vc.double(), seqlens, 0.125)
    _close(got, want, torch.float32)


def test_decode_split_size_is_a_host_function():
    assert [dec.decode_split_size(b, 10, 8192) for b in (1, 64, 256)] == [64, 256, 512]
    assert dec.decode_split_size(1, 2, 5) == 16 and dec.decode_split_size(1, 2, 40) == 64
    for b in (1, 7, 300):
        s = dec.decode_split_size(b, 10, 3000)
        assert s & (s - 1) == 0 and 16 <= s <= 512


def test_decode_dispatcher_routes(monkeypatch):
    q, kc, vc = _cache(3, 2, 20, 64, torch.float32, seed=8)
    seqlens = torch.tensor([20, 4, 11], dtype=torch.int32, device=DEVICE)
    calls = []
    launcher = dec.decode_attention_triton
    monkeypatch.setattr(dec, "decode_attention_triton", lambda *a: calls.append(1) or launcher(*a))
    want = dec.decode_attention_reference(q.double(), kc.double(), vc.double(), seqlens)
    _close(dec.decode_attention(q, kc, vc, seqlens), want, torch.float32)
    assert calls == [1]
    set_enabled(False)
    try:
        _close(dec.decode_attention(q, kc, vc, seqlens), want, torch.float32)
    finally:
        set_enabled(True)
    assert calls == [1]
    assert dec._kernel_or_none(*(x.to("meta") for x in (q, kc, vc, seqlens))) is None


@pytest.mark.parametrize("bad, message", [
    (dict(kc=torch.zeros(2, 2, 9, 32)), "do not match"),
    (dict(seqlens=torch.tensor([3, 3])), "int32"),
    (dict(seqlens=torch.tensor([3], dtype=torch.int32)), r"int32 \[2\]"),
    (dict(q=torch.zeros(2, 2, 48), kc=torch.zeros(2, 2, 9, 48), vc=torch.zeros(2, 2, 9, 48)), "power of two"),
    (dict(q=torch.zeros(2, 2, 64, dtype=torch.float16)), "float16"),
])
def test_decode_rejects_bad_inputs(bad, message):
    args = dict(q=torch.zeros(2, 2, 64), kc=torch.zeros(2, 2, 9, 64), vc=torch.zeros(2, 2, 9, 64),
                seqlens=torch.tensor([3, 9], dtype=torch.int32))
    args.update(bad)
    with pytest.raises(KernelError, match=message):
        dec.decode_attention(args["q"], args["kc"], args["vc"], args["seqlens"])


def test_decode_custom_op_registration():
    q, kc, vc = _cache(2, 2, 20, 64, torch.float32, seed=9)
    seqlens = torch.tensor([20, 5], dtype=torch.int32, device=DEVICE)
    torch.library.opcheck(torch.ops.deepseek_ocr.attention_decode.default, (q, kc, vc, seqlens, 0.125, 16),
                          test_utils=("test_schema", "test_faketensor"))


def test_dispatchers_trace_whole_under_torch_compile():
    """fullgraph=True: the dispatchers' checks and the custom ops trace without a graph break
    ("aot_eager" runs the traced graph on the fake-registered ops; no C++ compiler needed)."""
    q, kc, vc = _cache(2, 2, 20, 64, torch.float32, seed=10)
    seqlens = torch.tensor([20, 5], dtype=torch.int32, device=DEVICE)
    decode = torch.compile(dec.decode_attention, backend="aot_eager", fullgraph=True)
    want = dec.decode_attention_reference(q.double(), kc.double(), vc.double(), seqlens)
    _close(decode(q, kc, vc, seqlens), want, torch.float32)
    q, k, v = _qkv(9, 2, 64, torch.float32, seed=10)
    cu = _cu([4, 5])
    prefill = torch.compile(pre.prefill_attention, backend="aot_eager", fullgraph=True)
    want = pre.prefill_attention_reference(q.double(), k.double(), v.double(), cu, 5)
    _close(prefill(q, k, v, cu, 5), want, torch.float32)


# ---------------------------------------------------------------- GPU only, real sizes


@on_gpu
@pytest.mark.parametrize("lens", [[913], [913, 273, 1200, 421, 913, 17]], ids=["one-page", "pack"])
def test_gpu_prefill_real_sizes(lens):
    q, k, v = _qkv(sum(lens), 10, 128, torch.bfloat16, seed=11)
    cu = _cu(lens)
    got = pre.prefill_attention(q, k, v, cu, max(lens))
    want = pre.prefill_attention_reference(q.double(), k.double(), v.double(), cu, max(lens))
    _close(got, want, torch.bfloat16)


@on_gpu
@pytest.mark.parametrize("batch", [1, 64, 256])
def test_gpu_decode_real_sizes(batch):
    q, kc, vc = _cache(batch, 10, 8192, 128, torch.bfloat16, seed=batch)
    g = torch.Generator().manual_seed(batch)
    lens = [1000] if batch == 1 else torch.randint(1000, 1401, (batch,), generator=g).tolist()
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    got = dec.decode_attention(q, kc, vc, seqlens)
    want = torch.stack([dec.decode_attention_reference(q[b:b + 1].double(), kc[b:b + 1, :, :n].double(),
                                                       vc[b:b + 1, :, :n].double(), seqlens[b:b + 1])[0]
                        for b, n in enumerate(lens)])  # float64 on each row's own slots
    _close(got, want, torch.bfloat16)


@on_gpu
def test_gpu_decode_cuda_graph_and_compile():
    """Captured once, replayed after the lengths change in place: the graph reads them on device."""
    q, kc, vc = _cache(4, 10, 2048, 128, torch.bfloat16, seed=12)
    seqlens = torch.tensor([100, 1, 2048, 700], dtype=torch.int32, device=DEVICE)
    dec.decode_attention(q, kc, vc, seqlens)  # compile the kernels before capturing
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = dec.decode_attention(q, kc, vc, seqlens)
    seqlens.copy_(torch.tensor([1500, 33, 9, 2000], dtype=torch.int32))
    graph.replay()
    want = dec.decode_attention_reference(q.double(), kc.double(), vc.double(), seqlens)
    _close(out, want, torch.bfloat16)
    compiled = torch.compile(dec.decode_attention, fullgraph=True)
    _close(compiled(q, kc, vc, seqlens), want, torch.bfloat16)
