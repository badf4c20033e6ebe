"""MoE kernels (routing, grouping, grouped SwiGLU experts) against plain-torch references.

On a machine without a GPU these run through the Triton interpreter on CPU tensors (small
shapes, float32/float16: bfloat16 is not trustworthy there); with CUDA the same tests run
compiled, plus full-size bfloat16 tests. References are independent: `route_reference` and
`group_pairs_reference` are plain torch, the experts are checked against a per-expert loop
evaluated in float64, and a few cases have hand-written expected values.
"""
from __future__ import annotations

import pytest
import torch

from deepseek_ocr.config import DecoderConfig
from deepseek_ocr.decoder.moe import Router, StackedExperts
from deepseek_ocr.errors import KernelError
from deepseek_ocr.kernels._common import interpreting, triton_on_cpu

pytestmark = pytest.mark.skipif(not (interpreting() or torch.cuda.is_available()),
                                reason="needs CUDA or TRITON_INTERPRET=1 (set by the conftest without a GPU)")

from deepseek_ocr.kernels import moe_grouped  # noqa: E402  (after the skip guard)
from deepseek_ocr.kernels.moe_grouped import (ExpertTiles, fused_moe, moe_experts_reference,  # noqa: E402
                                              moe_experts_triton)
from deepseek_ocr.kernels.moe_routing import (group_pairs, group_pairs_reference, max_blocks,  # noqa: E402
                                              route, route_reference)

device = "cuda" if torch.cuda.is_available() else "cpu"
on_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="full-size bfloat16 runs need CUDA")


def randn(*shape, seed, scale=1.0, dtype=torch.float32):
    """Same numbers on every device: drawn on the CPU from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)


def biased_router(e, h, seed, never=()):
    """Router weights whose experts in `never` can never win: x[:, 0] is set to 1 by `tokens`
    and those experts' weight on it is -50, so their logits sit ~50 below the others."""
    w = randn(e, h, seed=seed)
    for j in never:
        w[j, 0] = -50.0
    return w


def tokens(n, h, seed, dtype=torch.float32):
    x = randn(n, h, seed=seed)
    x[:, 0] = 1.0
    return x.to(dtype)


def random_routing(n, k, e, seed, allowed=None):
    """k distinct experts per token from `allowed` (default all) and positive float32 weights."""
    allowed = torch.arange(e) if allowed is None else torch.tensor(allowed)
    g = torch.Generator().manual_seed(seed)
    pick = torch.rand(n, allowed.numel(), generator=g).argsort(dim=1)[:, :k]  # (N, k) distinct
    ids = allowed[pick].to(device)
    weights = torch.rand(n, k, generator=g).to(device) + 0.05
    return weights, ids


# --- routing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n,h,e,k,renorm,scale,dtype", [
    (1, 64, 8, 2, False, 1.0, torch.float32),
    (7, 96, 16, 6, True, 2.5, torch.float32),
    (33, 128, 12, 3, False, 1.0, torch.float16),
    (511, 64, 16, 6, False, 1.0, torch.float32),
])
def test_route_matches_reference(n, h, e, k, renorm, scale, dtype):
    x = tokens(n, h, seed=n, dtype=dtype)
    w = biased_router(e, h, seed=100 + n, never=(1, e - 2))
    weights, ids = route(x, w, k, renorm, scale, block_t=16 if n < 100 else 64)
    ref_w, ref_ids = route_reference(x, w, k, renorm, scale)
    assert ids.dtype == torch.int64 and weights.dtype == torch.float32
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_w, rtol=1e-5, atol=1e-6)
    assert not ((ids == 1) | (ids == e - 2)).any()  # the biased experts really are empty


def test_route_ties_go_to_the_lower_expert_and_weights_are_probabilities():
    # Experts 2 and 5 have the same (largest) row, 0 and 7 the next; softmax by hand.
    h, e = 32, 8
    w = torch.zeros(e, h)
    w[2, :4] = w[5, :4] = 1.0
    w[0, :4] = w[7, :4] = 0.5
    x = torch.zeros(3, h)
    x[:, :4] = 1.0  # logits: 4 for experts 2, 5; 2 for 0, 7; 0 for the rest
    weights, ids = route(x.to(device), w.to(device), 3)
    assert ids.tolist() == [[2, 5, 0]] * 3
    z = 2 * torch.e ** 4 + 2 * torch.e ** 2 + 4
    expected = torch.tensor([torch.e ** 4 / z, torch.e ** 4 / z, torch.e ** 2 / z])
    torch.testing.assert_close(weights.cpu(), expected.expand(3, 3), rtol=1e-6, atol=0)


# --- grouping ----------------------------------------------------------------------------------

def test_group_pairs_by_hand():
    # pairs 0..3 = experts 2, 0, 2, 1; expert 3 gets none; runs padded to 16 rows.
    ids = torch.tensor([[2, 0], [2, 1]], device=device)
    g = group_pairs(ids, 4, 16)
    expected = torch.full((64,), 4, dtype=torch.int32)
    expected[0], expected[16], expected[32], expected[33] = 1, 3, 0, 2
    assert torch.equal(g.sorted_pairs.cpu(), expected)
    assert g.block_expert.tolist() == [0, 1, 2, -1]
    assert g.counts.tolist() == [1, 1, 2, 0]
    assert g.padded_offsets.tolist() == [0, 16, 32, 48, 48]


@pytest.mark.parametrize("n,k,e,block_m,allowed", [
    (1, 2, 8, 16, None),
    (7, 6, 16, 16, list(range(0, 16, 2))),  # odd experts empty
    (33, 3, 12, 32, [0, 3, 4, 5, 11]),
    (511, 6, 16, 64, list(range(1, 15))),   # first and last expert empty; > 1 chunk of pairs
])
def test_group_pairs_matches_reference(n, k, e, block_m, allowed):
    _, ids = random_routing(n, k, e, seed=7 * n, allowed=allowed)
    g = group_pairs(ids, e, block_m)
    ref = group_pairs_reference(ids, e, block_m)
    assert g.sorted_pairs.numel() == max_blocks(n * k, e, block_m) * block_m
    for name in ("sorted_pairs", "block_expert", "counts", "padded_offsets"):
        assert torch.equal(getattr(g, name), getattr(ref, name)), name


# --- grouped experts ---------------------------------------------------------------------------

def _f64_reference(x, weights, ids, gate_up, down):
    return moe_experts_reference(x.double(), weights.double(), ids, gate_up.double(), down.double())


@pytest.mark.parametrize("n,h,inter,e,k,dtype,tiles,allowed", [
    (1, 64, 32, 8, 2, torch.float32, None, None),
    (7, 96, 48, 16, 6, torch.float32, ExpertTiles(16, (32, 64, 4, 2), (32, 64, 4, 2)), [0, 2, 3, 5, 8, 9, 13]),
    (7, 64, 32, 8, 4, torch.float16, None, None),
    (33, 128, 96, 12, 3, torch.float16, ExpertTiles(32, (64, 32, 4, 2), (64, 32, 4, 2)), [1, 2, 4, 7, 10]),
    (33, 64, 48, 8, 6, torch.float32, ExpertTiles(64, (16, 64, 4, 2), (64, 16, 4, 2)), None),
    (511, 64, 32, 16, 6, torch.float32, None, list(range(2, 16))),
])
def test_experts_match_float64_reference(n, h, inter, e, k, dtype, tiles, allowed):
    x = randn(n, h, seed=n + h, dtype=dtype)
    gate_up = randn(e, 2 * inter, h, seed=1, scale=h ** -0.5, dtype=dtype)
    down = randn(e, h, inter, seed=2, scale=inter ** -0.5, dtype=dtype)
    weights, ids = random_routing(n, k, e, seed=3, allowed=allowed)
    y = moe_experts_triton(x, weights, ids, gate_up, down, tiles)
    assert y.dtype == dtype and y.shape == (n, h)
    tol = 1e-4 if dtype == torch.float32 else 1e-2  # float16: h and each weighted row rounded once
    torch.testing.assert_close(y.double(), _f64_reference(x, weights, ids, gate_up, down), rtol=tol, atol=tol)


def test_experts_round_like_the_reference_before_weighting():
    """A case built so the order of rounding shows: the product 1 + 2^-11 rounds (to even) to 1.0
    in float16, and weighted by 3 it is 3.0; weighting first gives 3 + 3*2^-11, which float16 rounds
    to 3 + 2^-9. The reference (`StackedExperts`: unweighted product in x's dtype, weights and sum
    in float32) and the kernel must both give exactly 3.0."""
    h = inter = 16
    x = torch.zeros(1, h)
    x[0, 0] = 1.0
    gate_up = torch.zeros(1, 2 * inter, h)
    gate_up[0, :2, 0] = 16.0  # gate 16: silu(16) = 16 in float16
    gate_up[0, inter:inter + 2, 0] = 0.0625  # up 1/16: h = [1, 1, 0, ...]
    down = torch.zeros(1, h, inter)
    down[0, :, 0] = 1.0
    down[0, :, 1] = 2.0 ** -11  # each output: 1 * 1 + 1 * 2^-11
    weights, ids = torch.tensor([[3.0]]), torch.tensor([[0]])
    args = [t.to(device) for t in (x.half(), weights, ids, gate_up.half(), down.half())]
    assert moe_experts_reference(*args).float().unique().tolist() == [3.0]
    assert moe_experts_triton(*args).float().unique().tolist() == [3.0]


def test_fused_moe_with_empty_experts_and_renormalisation():
    n, h, inter, e, k = 33, 64, 32, 16, 4
    x = tokens(n, h, seed=5)
    router = biased_router(e, h, seed=6, never=(0, 9, 15))
    gate_up = randn(e, 2 * inter, h, seed=7, scale=h ** -0.5)
    down = randn(e, h, inter, seed=8, scale=inter ** -0.5)
    with triton_on_cpu():
        y, weights, ids = fused_moe(x, router, gate_up, down, k, norm_topk_prob=True, scaling=1.5)
    ref_w, ref_ids = route_reference(x, router, k, True, 1.5)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights.sum(dim=1), torch.full((n,), 1.5, device=device), rtol=1e-5, atol=0)
    torch.testing.assert_close(y.double(), _f64_reference(x, ref_w, ref_ids, gate_up, down), rtol=1e-4, atol=1e-4)


def test_seams_follow_the_modules():
    """The experts seam runs the kernel for `StackedExperts`; routing is not a kernel seam any
    more (one rule at every batch size: the Router's own torch path)."""
    cfg = DecoderConfig(hidden_size=64, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=3,
                        norm_topk_prob=True, routed_scaling_factor=2.0)
    router, experts = Router(cfg).to(device), StackedExperts(cfg).to(device)
    with torch.no_grad():
        router.weight.copy_(randn(8, 64, seed=11))
        experts.gate_up.copy_(randn(8, 64, 64, seed=12, scale=0.125))
        experts.down.copy_(randn(8, 64, 32, seed=13, scale=0.18))
    from deepseek_ocr import kernels
    assert "moe_route" not in kernels._IMPLS
    x = randn(131, 64, seed=14)
    with torch.no_grad(), triton_on_cpu():
        weights, ids = kernels.moe_route(router, x)
        y = moe_grouped._experts_seam(experts, x, weights, ids)
        ref_w, ref_ids = route_reference(x, router.weight, 3, True, 2.0)
        ref_y = experts(x, ref_w, ref_ids)
    assert torch.equal(ids, ref_ids) and torch.equal(weights, ref_w)
    torch.testing.assert_close(y, ref_y, rtol=1e-4, atol=1e-4)
    with triton_on_cpu():  # with autograd recording (parameters need grad), the reference runs
        assert moe_grouped._experts_seam(experts, x, weights, ids) is None
    if device == "cpu":  # without the opt-in, CPU tensors keep the reference path
        with triton_on_cpu(False), torch.no_grad():
            assert moe_grouped._experts_seam(experts, x, weights, ids) is None


def test_custom_ops_pass_opcheck():
    x = randn(7, 64, seed=21)
    router = randn(8, 64, seed=22)
    gate_up, down = randn(8, 64, 64, seed=23, scale=0.125), randn(8, 64, 32, seed=24, scale=0.18)
    weights, ids = route_reference(x, router, 2)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.deepseek_ocr.moe_route.default, (x, router, 2, False, 1.0), test_utils=utils)
    torch.library.opcheck(torch.ops.deepseek_ocr.moe_experts.default, (x, weights, ids, gate_up, down),
                          test_utils=utils)


def test_bad_inputs_raise_kernel_errors():
    x = torch.zeros(4, 64, device=device)
    gate_up, down = torch.zeros(8, 64, 64, device=device), torch.zeros(8, 64, 32, device=device)
    weights, ids = torch.zeros(4, 2, device=device), torch.zeros(4, 2, dtype=torch.int64, device=device)
    bad_experts = [
        ((x[None], weights, ids, gate_up, down), "x must be"),
        ((x, weights, ids, gate_up[:, :, :32], down), "gate_up must be"),
        ((x, weights, ids, gate_up, down[:, :, :16]), "down must be"),
        ((x, weights.half(), ids, gate_up, down), "weights must be float32"),
        ((x, weights, ids.float(), gate_up, down), "ids must be"),
        ((x.half(), weights, ids, gate_up, down), "must share one of"),
        ((x, weights, ids, gate_up.transpose(1, 2).contiguous().transpose(1, 2), down), "contiguous"),
    ]
    for args, msg in bad_experts:
        with pytest.raises(KernelError, match=msg):
            moe_experts_triton(*args)
    with pytest.raises(KernelError, match="top_k"):
        route(x, torch.zeros(8, 64, device=device), 9)
    with pytest.raises(KernelError, match="router_weight"):
        route(x, torch.zeros(8, 32, device=device), 2)
    with pytest.raises(KernelError, match="block_m"):
        group_pairs(ids, 8, 24)


# --- full size, bfloat16, CUDA only ------------------------------------------------------------

FULL = dict(h=1280, inter=896, e=64, k=6)


@pytest.fixture(scope="module")
def full_weights():
    """Router, gate_up, down at the model's sizes in bf16, scaled so every stage is O(1)."""
    h, inter, e = FULL["h"], FULL["inter"], FULL["e"]
    return (randn(e, h, seed=1, scale=h ** -0.5, dtype=torch.bfloat16),
            randn(e, 2 * inter, h, seed=2, scale=h ** -0.5, dtype=torch.bfloat16),
            randn(e, h, inter, seed=3, scale=inter ** -0.5, dtype=torch.bfloat16))


@on_gpu
@pytest.mark.parametrize("n", [1, 64, 256, 4096])
def test_full_size_bf16(n, full_weights):
    router, gate_up, down = full_weights
    x = randn(n, FULL["h"], seed=n, dtype=torch.bfloat16)
    y, weights, ids = fused_moe(x, router, gate_up, down, FULL["k"])
    # Routing: a valid top-k of the float32 scores (a near-tie may legitimately order differently
    # than torch.topk after a different summation order, so no id-for-id comparison here).
    scores = (x.float() @ router.float().t()).softmax(dim=-1)  # (N, E)
    torch.testing.assert_close(weights, scores.gather(1, ids), rtol=1e-5, atol=1e-7)
    assert (ids.sort(dim=1).values.diff(dim=1) > 0).all()
    unpicked = scores.scatter(1, ids, -1.0).max(dim=1).values
    assert (weights.min(dim=1).values >= unpicked - 1e-6).all()
    ref = moe_experts_reference(x.float(), weights, ids, gate_up.float(), down.float())
    err = (y.float() - ref).norm() / ref.norm()
    assert err < 1e-2, f"relative error {err:.2e}"  # bf16 rounds h, each weighted row, and y
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


@on_gpu
def test_cuda_graph_replay_matches_eager(full_weights):
    router, gate_up, down = full_weights
    n, k = 64, FULL["k"]
    static_x = randn(n, FULL["h"], seed=4, dtype=torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fused_moe(static_x, router, gate_up, down, k)  # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y, _, static_ids = fused_moe(static_x, router, gate_up, down, k)
    new_x = randn(n, FULL["h"], seed=5, dtype=torch.bfloat16)
    static_x.copy_(new_x)
    graph.replay()
    y, _, ids = fused_moe(new_x, router, gate_up, down, k)
    assert torch.equal(static_ids, ids)
    assert torch.equal(static_y, y)  # deterministic kernels: bit-identical


@on_gpu
def test_batch_counts_compile_one_variant():
    """Token and pair counts are not specialised on (== 1, divisible by 16): a server admitting
    pages of every length compiled a new variant of the grouping kernels for minutes. Counts
    of 258..768 pairs all take CHUNK 256, so each kernel must have compiled exactly once."""
    from deepseek_ocr.kernels import moe_routing
    dev = torch.device("cuda")
    kernels = (moe_routing._chunk_count_kernel, moe_routing._scatter_kernel)

    def variants(fn) -> int:
        cache = fn.device_caches[torch.cuda.current_device()][0]  # Triton's per-device kernel cache
        return len(cache)

    before = [variants(k) for k in kernels]
    g = torch.Generator(device="cpu").manual_seed(0)
    for n in (43, 48, 49, 64, 80, 96, 100, 128):  # n*6 pairs: 258..768, every divisibility by 16
        ids = torch.randint(0, 64, (n, 6), generator=g).to(dev)
        got = group_pairs(ids, 64, 16)
        ref = group_pairs_reference(ids, 64, 16)
        assert torch.equal(got.counts.cpu(), ref.counts.cpu())
    torch.cuda.synchronize()
    assert [variants(k) - b for k, b in zip(kernels, before)] in ([1, 1], [0, 0])
