"""add + RMSNorm and rotary + paged KV store (kernels/norm_rope.py) against plain torch.

Without a GPU the kernels run through the Triton interpreter on CPU tensors (float32 and
float16; the interpreter has no bfloat16), on small shapes; the bfloat16 and CUDA-graph tests at
the end run on the device. The references are checked against the model's own modules
(`RMSNorm`, `rotate_half`, the cache's old write), the kernels against the references (the
rotary and every store bit for bit; the norm to a rounding, its sum runs in another order) and
against float64. `FastDecoder.step` with the kernels gives the logits of the reference path.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from deepseek_ocr.kernels import _common, interpreting, set_enabled, triton_on_cpu

if not (interpreting() or torch.cuda.is_available()):
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
if not _common.HAVE_TRITON:
    pytest.skip("triton is not installed", allow_module_level=True)

from deepseek_ocr import kernels  # noqa: E402
from deepseek_ocr.decoder.attention import rope_cos_sin, rotate_half  # noqa: E402
from deepseek_ocr.decoder.model import RMSNorm  # noqa: E402
from deepseek_ocr.errors import KernelError  # noqa: E402

nr = importlib.import_module("deepseek_ocr.kernels.norm_rope")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
on_gpu = pytest.mark.skipif(not torch.cuda.is_available() or interpreting(),
                            reason="needs CUDA (compiled Triton)")
DTYPES = [torch.float32, torch.float16]
EPS = 1e-6
# The norm against the reference: the same math up to the order of the sum of squares (and
# rsqrt's last bit), so a normalised value may round to the neighbouring one, twice (the cast,
# then the product with the weight). Against float64: those two roundings plus the residual's.
ULP = {torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


def _close_ulps(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, ulps: float) -> None:
    tol = ulps * ULP[dtype]
    torch.testing.assert_close(got.double(), want.double(), atol=tol, rtol=tol)


# ---------------------------------------------------------------------------- the references


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_norm_reference_is_the_model_rmsnorm(dtype):
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(40, EPS)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(40, generator=g))
    norm = norm.to(dtype)
    x, r = (torch.randn(3, 5, 40, generator=g).to(dtype) for _ in range(2))
    with torch.no_grad():
        h, res = nr.add_rms_norm_reference(x, r, norm.weight, EPS)
        assert torch.equal(res, x + r) and torch.equal(h, norm(r + x))
        h, res = nr.add_rms_norm_reference(x, None, norm.weight, EPS)
        assert res is x and torch.equal(h, norm(x))


def test_rope_reference_is_the_decoders_rotary_and_the_caches_write():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 24, generator=g)
    assert torch.equal(nr._rotate_half(x), rotate_half(x))
    b, heads, hd, bs = 3, 2, 16, 16
    qkv = torch.randn(b, 3 * heads * hd, generator=g)
    seqlens = torch.tensor([0, 17, 5], dtype=torch.int32)
    cos, sin = rope_cos_sin(seqlens.long()[:, None], hd, 10000.0, torch.float32)  # (B, 1, hd)
    table = torch.tensor([[1, 2], [3, 4], [5, 6]], dtype=torch.int32)
    k_pool, v_pool = torch.zeros(7, heads, bs, hd), torch.zeros(7, heads, bs, hd)
    q = nr.rope_and_store_reference(qkv, cos, sin, k_pool, v_pool, table, seqlens)
    q0, k0, v0 = qkv.view(b, 3, heads, hd).unbind(1)
    assert torch.equal(q, q0 * cos + rotate_half(q0) * sin)
    k0 = k0 * cos + rotate_half(k0) * sin
    for r, (block, off) in enumerate([(1, 0), (4, 1), (5, 5)]):
        assert torch.equal(k_pool[block, :, off], k0[r]) and torch.equal(v_pool[block, :, off], v0[r])
    assert int((k_pool != 0).any(-1).sum()) == b * heads  # nothing else written


# ---------------------------------------------------------------------------- add + RMSNorm


def _norm_inputs(shape, dtype, seed, row_stride_pad: int = 0):
    """x (rows `row_stride_pad` wider in memory than their length when padded), residual, weight."""
    g = torch.Generator().manual_seed(seed)
    cols = shape[-1]
    x = (3 * torch.randn(*shape[:-1], cols + row_stride_pad, generator=g, dtype=torch.float64)).to(dtype)
    r = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    w = (1 + 0.2 * torch.randn(cols, generator=g, dtype=torch.float64)).to(dtype)
    return x[..., :cols].to(DEVICE), r.to(DEVICE), w.to(DEVICE)


def _norm64(res: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    xf = res.double()
    return w.double() * xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)


@pytest.mark.parametrize("shape, pad", [((1, 1280), 0), ((5, 77), 0), ((2, 3, 33), 0), ((4, 1), 0),
                                        ((3, 3000), 0), ((6, 100), 28)],
                         ids=["decode-row", "odd", "3d", "one-col", "wide-8-warps", "strided-rows"])
@pytest.mark.parametrize("with_residual", [True, False], ids=["add", "plain"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_kernel(shape, pad, with_residual, dtype):
    x, r, w = _norm_inputs(shape, dtype, seed=shape[-1] + pad, row_stride_pad=pad)
    residual = r if with_residual else None
    h, res = nr.add_rms_norm_triton(x, residual, w, EPS)
    h_ref, res_ref = nr.add_rms_norm_reference(x, residual, w, EPS)
    assert h.shape == x.shape and h.dtype == dtype and res.shape == x.shape
    assert torch.equal(res, res_ref)  # the sum is rounded exactly as torch's add
    if not with_residual:
        assert res is x
    _close_ulps(h, h_ref, dtype, 3)
    _close_ulps(h, _norm64(res_ref, w), dtype, 4)


def test_add_rms_norm_seam_dispatch(monkeypatch):
    """The seam runs the kernel on launchable float16/32 tensors, the reference otherwise (off
    switch, float64, mixed dtypes, CPU tensors outside triton_on_cpu); bad shapes raise."""
    x, r, w = _norm_inputs((3, 50), torch.float32, seed=5)
    calls = []
    launcher = nr.add_rms_norm_triton
    monkeypatch.setattr(nr, "add_rms_norm_triton", lambda *a: calls.append(1) or launcher(*a))
    assert nr._norm_or_none in kernels._IMPLS["add_rms_norm"]
    h_ref, res_ref = nr.add_rms_norm_reference(x, r, w, EPS)
    h, res = kernels.add_rms_norm(x, r, w, EPS)
    assert calls == [1] and torch.equal(res, res_ref)
    _close_ulps(h, h_ref, torch.float32, 3)
    _close_ulps(kernels.rms_norm(x, w, EPS), nr.add_rms_norm_reference(x, None, w, EPS)[0], torch.float32, 3)
    assert calls == [1, 1]
    set_enabled(False)
    try:
        assert all(torch.equal(a, b) for a, b in zip(kernels.add_rms_norm(x, r, w, EPS), (h_ref, res_ref)))
    finally:
        set_enabled(True)
    kernels.add_rms_norm(x.double(), r.double(), w.double(), EPS)  # float64: the reference
    kernels.add_rms_norm(x, r, w.double(), EPS)  # mixed dtypes: the reference (it promotes)
    if DEVICE == "cpu":
        with triton_on_cpu(False):
            kernels.add_rms_norm(x, r, w, EPS)
    assert calls == [1, 1]
    with pytest.raises(KernelError, match="weight"):
        kernels.add_rms_norm(x, r, w[:-1], EPS)


# ---------------------------------------------------------------------------- rotary + store


def _rope_case(seqlens, heads, head_dim, block_size, dtype, seed, padding_rows=0, spare_cols=1):
    """qkv, cos/sin at each row's position, random pools and a shuffled table: the real rows
    own distinct blocks (never 0), `padding_rows` more rows have length 0 and a table of zeros
    (the engine's bucket padding: their writes land in scratch block 0)."""
    g = torch.Generator().manual_seed(seed)
    lens = list(seqlens) + [0] * padding_rows
    b = len(lens)
    need = [s // block_size + 1 for s in seqlens]
    cols = max(need) + spare_cols
    num_blocks = 1 + sum(need) + 3
    ids = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    table = torch.zeros(b, cols, dtype=torch.int32)
    for r, n in enumerate(need):
        table[r, :n] = torch.tensor([ids.pop() for _ in range(n)], dtype=torch.int32)
        table[r, n:] = ids[-1]  # stale entries past the row's end (another row's block, or a free one)
    seq = torch.tensor(lens, dtype=torch.int32)
    qkv = torch.randn(b, 3 * heads * head_dim, generator=g, dtype=torch.float64).to(dtype)
    cos, sin = rope_cos_sin(seq.long()[:, None], head_dim, 10000.0, dtype)  # (B, 1, hd) as the decoder's
    shape = (num_blocks, heads, block_size, head_dim)
    k_pool, v_pool = (torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
    return [t.to(DEVICE) for t in (qkv, cos, sin, k_pool, v_pool, table, seq)]


def _rope64(qkv, cos, sin, heads, head_dim):
    """Rotated q and k in float64 from the same (rounded) inputs."""
    b = qkv.shape[0]
    q, k, _ = qkv.double().view(b, 3, heads, head_dim).unbind(1)
    c, s = cos.double().reshape(b, 1, head_dim), sin.double().reshape(b, 1, head_dim)
    return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s


@pytest.mark.parametrize("seqlens, heads, head_dim, block_size, padding_rows", [
    ([0, 15, 16, 17, 31, 40], 2, 16, 16, 0),   # both sides of block boundaries, slot 0
    ([63, 64, 1, 200], 3, 24, 64, 2),           # head_dim 24 (half 12: a masked tile), padding rows
    ([5, 129], 2, 128, 128, 1),                 # the decoder's head_dim
    ([7], 1, 2, 16, 0),                         # the smallest rotation
], ids=["b16-edges", "hd24-padding", "hd128", "hd2"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_and_store_kernel(seqlens, heads, head_dim, block_size, padding_rows, dtype):
    qkv, cos, sin, k_pool, v_pool, table, seq = _rope_case(seqlens, heads, head_dim, block_size, dtype,
                                                           seed=sum(seqlens) + head_dim, padding_rows=padding_rows)
    k_ref, v_ref = k_pool.clone(), v_pool.clone()
    q = nr.rope_and_store_triton(qkv, cos, sin, k_pool, v_pool, table, seq)
    q_ref = nr.rope_and_store_reference(qkv, cos, sin, k_ref, v_ref, table, seq)
    assert q.shape == (len(seq), heads, head_dim) and q.dtype == dtype and q.is_contiguous()
    assert torch.equal(q, q_ref)  # torch's rounding, step for step
    # Every block but the scratch one equals the reference's pools: the right slots written
    # with the same bits, nothing else touched.
    assert torch.equal(k_pool[1:], k_ref[1:]) and torch.equal(v_pool[1:], v_ref[1:])
    q64, k64 = _rope64(qkv, cos, sin, heads, head_dim)
    _close_ulps(q, q64, dtype, 2)  # two products and a sum, each rounded once
    real = len(seqlens)
    for r, s in enumerate(seqlens):
        block = int(table[r, s // block_size])
        _close_ulps(k_pool[block, :, s % block_size], k64[r], dtype, 2)
        assert torch.equal(v_pool[block, :, s % block_size], qkv.view(-1, 3, heads, head_dim)[r, 2])
    if padding_rows:
        # Padding rows all write slot 0 of block 0, concurrently: on a GPU each element holds
        # some padding row's value (which row wins can differ element by element; nobody reads
        # the scratch block), and nothing else in the block is touched.
        _, k, _ = qkv.view(len(seq), 3, heads, head_dim).unbind(1)
        c, sn = cos.reshape(-1, 1, head_dim), sin.reshape(-1, 1, head_dim)
        k_rot = (k * c + rotate_half(k) * sn)[real:]
        assert (k_pool[0, :, 0][None] == k_rot).any(dim=0).all()
        assert torch.equal(k_pool[0, :, 1:], k_ref[0, :, 1:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_and_store_through_a_narrowed_table_and_strided_qkv(dtype):
    """The eager step's table is a column slice of the cache's (`PagedBatch(..., blocks)`), and
    qkv may come with a row stride; a slot past the table's columns writes nothing."""
    qkv, cos, sin, k_pool, v_pool, table, seq = _rope_case([3, 20, 47], 2, 16, 16, dtype, seed=9, spare_cols=3)
    narrow = table[:, :4]  # (B, 4) of (B, 6): row stride 6
    wide = torch.zeros(qkv.shape[0], qkv.shape[1] + 10, dtype=dtype, device=DEVICE)
    wide[:, :qkv.shape[1]] = qkv
    k_ref, v_ref = k_pool.clone(), v_pool.clone()
    q = nr.rope_and_store_triton(wide[:, :qkv.shape[1]], cos, sin, k_pool, v_pool, narrow, seq)
    q_ref = nr.rope_and_store_reference(qkv, cos, sin, k_ref, v_ref, narrow, seq)
    assert torch.equal(q, q_ref) and torch.equal(k_pool, k_ref) and torch.equal(v_pool, v_ref)
    before = k_pool.clone(), v_pool.clone()
    past = torch.tensor([64, 70, 3], dtype=torch.int32, device=DEVICE)  # rows 0, 1: column 4 of 4
    nr.rope_and_store_triton(qkv, cos, sin, k_pool, v_pool, narrow, past)
    row2 = int(narrow[2, 0])
    changed = (k_pool != before[0]).any(-1).nonzero().tolist()
    assert changed and all(c[0] == row2 and c[2] == 3 for c in changed)
    assert torch.equal(torch.cat([v_pool[:row2], v_pool[row2 + 1:]]),
                       torch.cat([before[1][:row2], before[1][row2 + 1:]]))


def test_rope_and_store_seam_dispatch(monkeypatch):
    case = _rope_case([4, 33], 2, 16, 16, torch.float32, seed=3)
    calls = []
    launcher = nr.rope_and_store_triton
    monkeypatch.setattr(nr, "rope_and_store_triton", lambda *a: calls.append(1) or launcher(*a))
    ref = [t.clone() for t in case]
    q = kernels.rope_and_store(*case)
    assert calls == [1]
    assert torch.equal(q, nr.rope_and_store_reference(*ref)) and torch.equal(case[3], ref[3])
    set_enabled(False)
    try:
        kernels.rope_and_store(*case)
    finally:
        set_enabled(True)
    mixed = list(case)
    mixed[1], mixed[2] = case[1].double(), case[2].double()
    assert nr._rope_or_none(*mixed) is None  # mixed dtypes: the reference's promotion rules
    assert calls == [1]
    bad = list(case)
    bad[0] = case[0][:, :-2]
    with pytest.raises(KernelError, match="qkv"):
        kernels.rope_and_store(*bad)
    bad = list(case)
    bad[6] = case[6].long()
    with pytest.raises(KernelError, match="seqlens"):
        kernels.rope_and_store(*bad)


# ---------------------------------------------------------------------------- the decoder step


@pytest.fixture(scope="module")
def tiny():
    from tiny_model import tiny_model
    return tiny_model(seed=5)


def _run_decoder(model, only: tuple[str, ...] | None, enabled: bool, steps: int = 3):
    """Prefill two prompts and take `steps` decode steps (three rows: one padding row) on a
    fresh paged cache; the kernels of `only` (None: all) active, or none with `enabled=False`."""
    from deepseek_ocr.decoder.fast import FastDecoder
    from deepseek_ocr.engine.paged_cache import PagedBatch, PagedKVCache
    # On the CPU through the interpreter; on a GPU machine (compiled Triton) on the GPU, where
    # the kernels take CUDA tensors only.
    dec = model.model.decoder.to(DEVICE)
    cfg = dec.cfg
    fast = FastDecoder(dec)
    cache = PagedKVCache(cfg.num_layers, 3, cfg.num_heads, cfg.head_dim, num_blocks=12, block_size=16,
                         context=128, dtype=torch.float32, device=DEVICE)
    lengths = [14, 5]
    for slot, n in enumerate(lengths):
        cache.reserve(slot, n + steps)
    g = torch.Generator().manual_seed(11)
    embeds = (0.5 * torch.randn(sum(lengths), cfg.hidden_size, generator=g)).to(DEVICE)
    cu = torch.tensor([0, lengths[0], sum(lengths)], dtype=torch.int32, device=DEVICE)
    impls = {k: v for k, v in kernels._IMPLS.items() if only is None or k in only}
    saved = dict(kernels._IMPLS)
    kernels._IMPLS.clear()
    kernels._IMPLS.update(impls)
    set_enabled(enabled)
    try:
        logits = [fast.prefill(embeds, cu, max(lengths), cache, torch.tensor([0, 1], device=DEVICE))]
        cache.active[:2] = 1  # row 2 stays a padding row (length 0, table of zeros)
        with torch.inference_mode():
            for i in range(steps):  # fixed tokens: an argmax near a tie could part the two runs
                out = fast.step(torch.tensor([17 + i, 4242 - i, 0], device=DEVICE), PagedBatch(cache, 3))
                logits.append(out[:2])
    finally:
        set_enabled(True)
        kernels._IMPLS.clear()
        kernels._IMPLS.update(saved)
    return logits, cache


def test_fast_decoder_with_these_kernels_gives_the_reference_logits(tiny, monkeypatch):
    """Only add_rms_norm and rope_and_store on: the same logits as all kernels off, to float32
    rounding (the norm's sum order: 1.5e-6 of logits up to 5 here), and the same cached keys;
    the seqlens advance alike. The launches are counted: none may have declined."""
    want, cache_ref = _run_decoder(tiny, None, enabled=False)
    calls = {"norm": 0, "rope": 0}
    norm, rope = nr.add_rms_norm_triton, nr.rope_and_store_triton

    def counted(key, fn):
        return lambda *a: calls.__setitem__(key, calls[key] + 1) or fn(*a)
    monkeypatch.setattr(nr, "add_rms_norm_triton", counted("norm", norm))
    monkeypatch.setattr(nr, "rope_and_store_triton", counted("rope", rope))
    got, cache = _run_decoder(tiny, ("add_rms_norm", "rope_and_store"), enabled=True)
    layers = len(cache.k)
    # Two norms per layer and the final one, in the prefill and each of 3 steps; one rope per
    # layer and step (the prefill's rotary stays torch).
    assert calls == {"norm": 4 * (2 * layers + 1), "rope": 3 * layers}
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(cache.seqlens, cache_ref.seqlens)
    for layer in range(layers):
        torch.testing.assert_close(cache.k[layer][1:], cache_ref.k[layer][1:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.v[layer][1:], cache_ref.v[layer][1:], atol=1e-5, rtol=1e-5)


def test_fast_decoder_with_all_kernels_gives_the_reference_logits(tiny):
    """Every kernel on (paged attention, MoE experts too): the reference logits within float32
    rounding (2e-6 here)."""
    want, _ = _run_decoder(tiny, None, enabled=False)
    got, _ = _run_decoder(tiny, None, enabled=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- on the device


@on_gpu
def test_bfloat16_on_gpu():
    """bfloat16 (the serving dtype): rotary and stores bit for bit, the sum of the norm bit for
    bit, the norm within its two roundings."""
    x, r, w = _norm_inputs((7, 1280), torch.bfloat16, seed=1)
    h, res = nr.add_rms_norm_triton(x, r, w, EPS)
    h_ref, res_ref = nr.add_rms_norm_reference(x, r, w, EPS)
    assert torch.equal(res, res_ref)
    _close_ulps(h, h_ref, torch.bfloat16, 3)
    _close_ulps(h, _norm64(res_ref, w), torch.bfloat16, 4)
    case = _rope_case([0, 63, 64, 1000], 10, 128, 64, torch.bfloat16, seed=2, padding_rows=3)
    ref = [t.clone() for t in case]
    q = nr.rope_and_store_triton(*case)
    q_ref = nr.rope_and_store_reference(*ref)
    assert torch.equal(q, q_ref) and torch.equal(case[3][1:], ref[3][1:]) and torch.equal(case[4][1:], ref[4][1:])


@on_gpu
def test_graph_replay_and_int64_pool_offsets_on_gpu():
    """Captured in a CUDA graph, the ops follow the lengths on each replay; a pool of more than
    2**31 elements is addressed past that bound."""
    heads, hd, bs = 10, 128, 64
    num_blocks = 2 ** 31 // (heads * bs * hd) + 2  # the last block starts past 2**31 elements
    k_pool = torch.zeros(num_blocks, heads, bs, hd, dtype=torch.bfloat16, device="cuda")
    v_pool = torch.zeros_like(k_pool)
    table = torch.tensor([[num_blocks - 1, 1]], dtype=torch.int32, device="cuda")
    seq = torch.tensor([0], dtype=torch.int32, device="cuda")
    qkv = torch.randn(1, 3 * heads * hd, device="cuda").to(torch.bfloat16)
    cos, sin = (torch.randn(1, hd, device="cuda").to(torch.bfloat16) for _ in range(2))
    x, r, w = _norm_inputs((1, 1280), torch.bfloat16, seed=3)
    for _ in range(2):  # warm-up: compilation off the capture
        nr.rope_and_store_triton(qkv, cos, sin, k_pool, v_pool, table, seq)
        kernels.add_rms_norm(x, r, w, EPS)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q = kernels.rope_and_store(qkv, cos, sin, k_pool, v_pool, table, seq)
        h, _ = kernels.add_rms_norm(x, r, w, EPS)
    k_pool.zero_()
    v_pool.zero_()
    for s in (5, 70):  # slot 5 of the last block, then slot 6 of block 1
        seq.fill_(s)
        graph.replay()
        torch.cuda.synchronize()
        block = int(table[0, s // bs])
        assert torch.equal(v_pool[block, :, s % bs], qkv.view(3, heads, hd)[2])
        assert k_pool[block, :, s % bs].abs().sum() > 0
    assert torch.equal(q, nr.rope_and_store_reference(qkv, cos, sin, k_pool.clone(), v_pool.clone(), table, seq))
    _close_ulps(h, nr.add_rms_norm_reference(x, r, w, EPS)[0], torch.bfloat16, 3)
