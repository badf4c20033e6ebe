"""Decode attention over a paged KV cache (block pool + block table) against plain torch.

Without a GPU the kernels run through the Triton interpreter on CPU tensors (the conftest sets
TRITON_INTERPRET=1), on small shapes. Expected values come from an independent float64
computation on a contiguous cache built by copying each row's blocks in order and cutting it
to the row's length, so it never sees a slot past the length; the reference is checked against
that too. Every table is a shuffled, non-contiguous choice of blocks, and the slots no row may
read (table entries past a row's last block, the tail of its last block) hold NaN, so a read
of any of them shows up as NaN in the output.
"""
from __future__ import annotations

import importlib
import math

import pytest
import torch

from deepseek_ocr.kernels import _common, interpreting, set_enabled, triton_on_cpu

if not (interpreting() or torch.cuda.is_available()):
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
if not _common.HAVE_TRITON:
    pytest.skip("triton is not installed", allow_module_level=True)

from deepseek_ocr import kernels  # noqa: E402
from deepseek_ocr.errors import KernelError  # noqa: E402

pg = importlib.import_module("deepseek_ocr.kernels.attention_paged")
dec = importlib.import_module("deepseek_ocr.kernels.attention_decode")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
on_gpu = pytest.mark.skipif(not torch.cuda.is_available() or interpreting(),
                            reason="needs CUDA (compiled Triton)")

# Kernel output vs float64: fp32 kernels accumulate in fp32; fp16/bf16 round the output (half an
# ulp: 2**-11, 2**-8 relative) and the softmax weights fed to P @ V. Same as the contiguous op's.
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=1.5e-2, rtol=1.5e-2)}


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(got.double(), want.double(), **TOL[dtype])


def _paged(lens: list[int], block_size: int, heads: int, head_dim: int, dtype: torch.dtype,
           seed: int, garbage: str = "poison", spare: int = 1, extra_blocks: int = 0):
    """A pool, a shuffled block table and q for rows of `lens` slots.

    The table gets `spare` more columns than the longest row needs, so every row has entries
    past its last block; `garbage` says what they hold: "poison" a block of NaN, "zero" block 0
    (which another row may own: real, finite, wrong data), "out_of_range" num_blocks + 5. The
    tail of each row's last block is NaN in every case. `extra_blocks` enlarges the pool.
    """
    g = torch.Generator().manual_seed(seed)
    need = [math.ceil(n / block_size) for n in lens]
    used = sum(need)
    num_blocks = used + 2 + extra_blocks  # the rows' blocks, a poison block, and unused ones
    shape = (num_blocks, heads, block_size, head_dim)
    k_pool, v_pool = (torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(2))
    q = torch.randn(len(lens), heads, head_dim, generator=g, dtype=torch.float64)
    perm = torch.randperm(num_blocks, generator=g).tolist()
    taken = perm[:used]
    if used >= 2 and taken == sorted(taken):
        taken.reverse()  # a draw that came out in order: make the table go backwards instead
    poison = perm[used]
    stale = {"poison": poison, "zero": 0, "out_of_range": num_blocks + 5}[garbage]
    table = torch.full((len(lens), max(need) + spare), stale, dtype=torch.int32)
    taken = iter(taken)
    for b, n in enumerate(need):
        table[b, :n] = torch.tensor([next(taken) for _ in range(n)], dtype=torch.int32)
    for pool in (k_pool, v_pool):
        pool[poison] = float("nan")
        for b, n in enumerate(lens):
            if n % block_size:
                pool[int(table[b, need[b] - 1]), :, n % block_size:] = float("nan")
    seqlens = torch.tensor(lens, dtype=torch.int32)
    return [x.to(DEVICE) for x in (q.to(dtype), k_pool.to(dtype), v_pool.to(dtype), table, seqlens)]


def _float64_contiguous(q, k_pool, v_pool, table, lens):
    """The definition written out once more: copy row b's blocks in table order into one
    contiguous [heads, n, hd] cache of exactly n = lens[b] slots, then a float64 softmax."""
    block_size = k_pool.shape[2]
    out = torch.zeros(q.shape, dtype=torch.float64)
    for b, n in enumerate(lens):
        if n == 0:
            continue  # an empty row gives zeros
        blocks = table[b, :math.ceil(n / block_size)].tolist()
        k = torch.cat([k_pool[i].cpu() for i in blocks], dim=1)[:, :n].double()  # (heads, n, hd)
        v = torch.cat([v_pool[i].cpu() for i in blocks], dim=1)[:, :n].double()
        w = torch.softmax(torch.einsum("hd,hnd->hn", q[b].cpu().double(), k) / math.sqrt(q.shape[-1]), -1)
        out[b] = torch.einsum("hn,hnd->hd", w, v)
    return out.to(q.device)


def _reference64(q, k_pool, v_pool, table, seqlens):
    return pg.paged_decode_attention_reference(q.double(), k_pool.double(), v_pool.double(), table, seqlens)


# ---------------------------------------------------------------- kernels (interpreted on CPU)


@pytest.mark.parametrize("lens, block_size, heads, head_dim, split_blocks, garbage", [
    ([0, 1, 15, 16, 17], 16, 2, 32, 1, "poison"),   # every edge of a block, one block per split
    ([150, 16, 0], 16, 3, 64, 4, "poison"),         # long: 10 of 11 blocks, 4 per split (3rd ragged)
    ([65, 0, 1, 63, 64], 64, 2, 32, 1, "poison"),
    ([300, 2], 64, 3, 64, 0, "poison"),             # automatic split size
    ([130, 64, 1], 64, 2, 32, 2, "poison"),         # 128-slot tiles spanning two blocks
    ([300, 5, 256], 256, 2, 32, 1, "poison"),       # two 128-slot tiles within each block
    ([33, 40, 7], 16, 2, 32, 2, "zero"),            # stale entries point at another row's block
], ids=["b16-edges", "b16-long", "b64-edges", "b64-long-auto", "b64-tile-2-blocks", "b256-tile-half-block",
        "b16-stale-zero"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_paged_kernel_matches_reference_and_float64(lens, block_size, heads, head_dim, split_blocks,
                                                    garbage, dtype):
    q, kp, vp, table, seqlens = _paged(lens, block_size, heads, head_dim, dtype, seed=sum(lens),
                                       garbage=garbage)
    got = pg.paged_decode_attention_triton(q, kp, vp, table, seqlens, 1 / math.sqrt(head_dim), split_blocks)
    assert got.dtype == dtype and got.shape == q.shape
    assert torch.isfinite(got).all(), "a hidden (NaN) slot was read"
    _close(got, _float64_contiguous(q, kp, vp, table, lens), dtype)
    # The reference in the inputs' own dtype (float32 accumulation) agrees as closely.
    _close(got, pg.paged_decode_attention_reference(q, kp, vp, table, seqlens), dtype)


def test_paged_kernel_clamps_length_to_table_capacity():
    """A length past max_blocks * block_size reads only the table's blocks, like the reference."""
    q, kp, vp, table, _ = _paged([40, 9], 16, 2, 32, torch.float32, seed=21, spare=0)  # capacity 48
    seqlens = torch.tensor([48, 9], dtype=torch.int32, device=DEVICE)
    kp[int(table[0, 2]), :, 8:] = 0.5  # the first row now fills its third block
    vp[int(table[0, 2]), :, 8:] = -1.0
    too_long = seqlens + torch.tensor([1000, 0], dtype=torch.int32, device=DEVICE)
    got = pg.paged_decode_attention_triton(q, kp, vp, table, too_long, 32 ** -0.5, 1)
    _close(got, _float64_contiguous(q, kp, vp, table, [48, 9]), torch.float32)


def test_paged_kernel_strided_pool():
    """Pools seen through a view of a bigger [num_blocks, block_size, heads(+1), hd] buffer, and a
    table that is a column slice of a wider one: any strides with the last dim contiguous."""
    lens, block_size = [20, 5], 16
    q, kp, vp, table, seqlens = _paged(lens, block_size, 2, 32, torch.float32, seed=8)
    kv = [torch.full((kp.shape[0], block_size, 3, 32), float("nan"), device=DEVICE) for _ in range(2)]
    for buf, pool in zip(kv, (kp, vp)):
        buf[:, :, :2] = pool.transpose(1, 2)
    k_view, v_view = (buf[:, :, :2].transpose(1, 2) for buf in kv)  # (n, heads, bs, hd), slot stride 3*hd
    wide = torch.zeros(2, table.shape[1] + 4, dtype=torch.int32, device=DEVICE)
    wide[:, 2:2 + table.shape[1]] = table
    table_view = wide[:, 2:2 + table.shape[1]]
    got = pg.paged_decode_attention_triton(q, k_view, v_view, table_view, seqlens, 32 ** -0.5, 1)
    _close(got, _float64_contiguous(q, kp, vp, table, lens), torch.float32)


def test_paged_split_blocks_is_a_host_function():
    for batch, heads, max_blocks, bs in [(1, 10, 512, 16), (64, 10, 512, 16), (256, 10, 32, 256),
                                         (3, 2, 1, 64)]:
        n = pg.paged_split_blocks(batch, heads, max_blocks, bs)
        assert isinstance(n, int) and n >= 1
        slots = dec.decode_split_size(batch, heads, max_blocks * bs)
        assert n * bs == max(slots, bs)  # the contiguous op's split, in whole blocks


# ---------------------------------------------------------------- reference and seam


def test_paged_reference_matches_contiguous_float64():
    """Float64 inputs stay float64; stale entries out of the pool's range are never used as an
    index; and the reference equals the contiguous op's reference on the copied-out cache."""
    lens = [0, 1, 15, 16, 17, 70]
    q, kp, vp, table, seqlens = _paged(lens, 16, 3, 32, torch.float64, seed=5, garbage="out_of_range")
    got = pg.paged_decode_attention_reference(q, kp, vp, table, seqlens)
    assert got.dtype == torch.float64
    want = _float64_contiguous(q, kp, vp, table, lens)
    torch.testing.assert_close(got, want)
    # The same rows as a contiguous [B, heads, L, hd] cache (hidden slots zero) for the other op.
    l_max = table.shape[1] * 16
    kc, vc = (torch.zeros(len(lens), 3, l_max, 32, dtype=torch.float64, device=DEVICE) for _ in range(2))
    for b, n in enumerate(lens):
        for j in range(math.ceil(n / 16)):
            kc[b, :, 16 * j:16 * (j + 1)] = kp[int(table[b, j])]
            vc[b, :, 16 * j:16 * (j + 1)] = vp[int(table[b, j])]
        kc[b, :, n:] = 0
        vc[b, :, n:] = 0
    torch.testing.assert_close(got, dec.decode_attention_reference(q, kc, vc, seqlens))


def test_paged_seam_dispatch(monkeypatch):
    """CPU tensors outside triton_on_cpu() take the reference (the kernel declines), as in the
    library; inside it (the kernel tests' default, see conftest) the seam runs the kernel; the
    off switch forces the reference again."""
    lens = [17, 0, 40]
    q, kp, vp, table, seqlens = _paged(lens, 16, 2, 32, torch.float32, seed=13, garbage="poison")
    want = _float64_contiguous(q, kp, vp, table, lens)
    calls = []
    launcher = pg.paged_decode_attention_triton
    monkeypatch.setattr(pg, "paged_decode_attention_triton", lambda *a: calls.append(1) or launcher(*a))
    assert "attention_paged" in kernels._KERNEL_MODULES
    assert pg._kernel_or_none in kernels._IMPLS["attention_paged_decode"]
    if DEVICE == "cpu":
        with triton_on_cpu(False):
            got = kernels.paged_decode_attention(q, kp, vp, table, seqlens)
        _close(got, want, torch.float32)
        assert calls == []  # not launchable: the reference answered
    with triton_on_cpu():
        _close(kernels.paged_decode_attention(q, kp, vp, table, seqlens), want, torch.float32)
    assert calls == [1]
    set_enabled(False)
    try:
        with triton_on_cpu():
            _close(kernels.paged_decode_attention(q, kp, vp, table, seqlens), want, torch.float32)
    finally:
        set_enabled(True)
    assert calls == [1]
    assert pg._kernel_or_none(*(x.to("meta") for x in (q, kp, vp, table, seqlens))) is None


@pytest.mark.parametrize("use_kernel", [False, True], ids=["reference", "kernel"])
def test_paged_seam_ignores_out_of_range_stale_entries(use_kernel):
    """Stale table entries num_blocks + 5 past each row's end: never used as an index."""
    lens = [3, 33, 0, 16, 1]
    q, kp, vp, table, seqlens = _paged(lens, 16, 2, 64, torch.float32, seed=17, garbage="out_of_range")
    with triton_on_cpu(use_kernel):
        got = kernels.paged_decode_attention(q, kp, vp, table, seqlens)
    _close(got, _float64_contiguous(q, kp, vp, table, lens), torch.float32)


def _args(**bad):
    args = dict(q=torch.zeros(2, 2, 32), kp=torch.zeros(4, 2, 16, 32), vp=torch.zeros(4, 2, 16, 32),
                table=torch.zeros(2, 3, dtype=torch.int32), seqlens=torch.tensor([3, 9], dtype=torch.int32))
    args.update(bad)
    return args["q"], args["kp"], args["vp"], args["table"], args["seqlens"]


@pytest.mark.parametrize("bad, message", [
    (dict(q=torch.zeros(2, 2, 1, 32)), r"q must be \[B, heads, head_dim\]"),
    (dict(kp=torch.zeros(4, 3, 16, 32)), "do not match"),
    (dict(vp=torch.zeros(4, 2, 32, 32)), "do not match"),
    (dict(kp=torch.zeros(4, 2, 24, 32), vp=torch.zeros(4, 2, 24, 32)), "block_size .* two .* got 24"),
    (dict(kp=torch.zeros(4, 2, 8, 32), vp=torch.zeros(4, 2, 8, 32)), "block_size .* got 8"),
    (dict(q=torch.zeros(2, 2, 48), kp=torch.zeros(4, 2, 16, 48), vp=torch.zeros(4, 2, 16, 48)),
     "head_dim .* 48"),
    (dict(vp=torch.zeros(4, 2, 16, 32, dtype=torch.float16)), "float16"),
    (dict(table=torch.zeros(2, 3, dtype=torch.int64)), "block_table must be int32"),
    (dict(table=torch.zeros(3, 3, dtype=torch.int32)), r"block_table must be int32 \[2, max_blocks\]"),
    (dict(seqlens=torch.tensor([3, 9])), r"seqlens must be int32 \[2\]"),
    (dict(seqlens=torch.tensor([3], dtype=torch.int32)), r"seqlens must be int32 \[2\]"),
    (dict(seqlens=torch.tensor([3, 9], dtype=torch.int32, device="meta")), "one device"),
    (dict(kp=torch.zeros(0, 2, 16, 32), vp=torch.zeros(0, 2, 16, 32)), "no blocks"),
])
def test_paged_rejects_bad_inputs(bad, message):
    with pytest.raises(KernelError, match=message):
        kernels.paged_decode_attention(*_args(**bad))


def test_paged_kernel_rejects_split_blocks_not_a_power_of_two():
    q, kp, vp, table, seqlens = _paged([20, 5], 16, 2, 32, torch.float32, seed=10)
    with pytest.raises(KernelError, match="split_blocks must be 0 .* power of two, got 3"):
        pg._kernel_or_none(q, kp, vp, table, seqlens, None, 3)


def test_paged_kernel_path_rejects_float64():
    args = [x.double() if x.is_floating_point() else x for x in _args()]
    with pytest.raises(KernelError, match="float16/bfloat16/float32"):
        pg._check(*args)
    pg.paged_decode_attention_reference(*args)  # the reference takes float64 (the tests' oracle)


def test_paged_custom_op_registration():
    q, kp, vp, table, seqlens = _paged([20, 5], 16, 2, 32, torch.float32, seed=9)
    torch.library.opcheck(torch.ops.deepseek_ocr.attention_paged_decode.default,
                          (q, kp, vp, table, seqlens, 32 ** -0.5, 1),
                          test_utils=("test_schema", "test_faketensor"))


# ---------------------------------------------------------------- GPU only, real sizes


@on_gpu
@pytest.mark.parametrize("block_size", [16, 256])
def test_gpu_paged_bf16_matches_reference(block_size):
    lens = [1, 913, 0, 1400, 255, 256, 257, 3000]
    q, kp, vp, table, seqlens = _paged(lens, block_size, 10, 128, torch.bfloat16, seed=block_size)
    got = kernels.paged_decode_attention(q, kp, vp, table, seqlens)
    assert torch.isfinite(got).all()
    _close(got, _reference64(q, kp, vp, table, seqlens), torch.bfloat16)
    _close(got, _float64_contiguous(q, kp, vp, table, lens), torch.bfloat16)


@on_gpu
def test_gpu_paged_cuda_graph_capture_and_replay():
    """Captured once; then the lengths and the table change in place (rows grow into new blocks,
    one row becomes padding) and the replay reads them on the device."""
    block_size = 64
    q, kp, vp, table, seqlens = _paged([100, 1, 700, 0], block_size, 10, 128, torch.bfloat16, seed=3,
                                       spare=20, extra_blocks=40)
    kernels.paged_decode_attention(q, kp, vp, table, seqlens)  # compile the kernels before capturing
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernels.paged_decode_attention(q, kp, vp, table, seqlens)
    # New state: a fresh pool of the same shape is copied in, with a new shuffled table.
    lens = [1500, 33, 0, 1000]
    q2, kp2, vp2, table2, seqlens2 = _paged(lens, block_size, 10, 128, torch.bfloat16, seed=4)
    assert kp2.shape[0] <= kp.shape[0] and table2.shape[1] <= table.shape[1]
    for dst, src in ((q, q2), (kp[:kp2.shape[0]], kp2), (vp[:vp2.shape[0]], vp2), (seqlens, seqlens2)):
        dst.copy_(src)
    table.fill_(kp.shape[0] - 1)  # stale entries: a block no row owns
    table[:, :table2.shape[1]] = table2
    kp[-1] = float("nan")
    vp[-1] = float("nan")
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    _close(out, _float64_contiguous(q, kp, vp, table, lens), torch.bfloat16)
    _close(out, _reference64(q, kp, vp, table, seqlens), torch.bfloat16)
