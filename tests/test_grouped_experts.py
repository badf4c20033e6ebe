"""The training path of the routed experts (deepseek_ocr/training/grouped_experts.py) against the
reference `StackedExperts.forward` (and LoRA's `lora_experts_forward`): values and gradients."""
import copy
from types import SimpleNamespace

import pytest
import torch

from deepseek_ocr import kernels
from deepseek_ocr.decoder.moe import MoE, StackedExperts
from deepseek_ocr.training import grouped_experts as ge
from deepseek_ocr.training.lora import LoraStackedExperts

E, K, H, I = 8, 6, 24, 16


def _experts(dtype=torch.float64, seed=0, e=E, h=H, i=I):
    cfg = SimpleNamespace(n_routed_experts=e, hidden_size=h, moe_intermediate_size=i)
    mod = StackedExperts(cfg).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mod.gate_up.copy_(torch.randn(mod.gate_up.shape, generator=g, dtype=torch.float64) / h ** 0.5)
        mod.down.copy_(torch.randn(mod.down.shape, generator=g, dtype=torch.float64) / i ** 0.5)
    return mod


def _routing(n, e=E, k=K, unused=(), seed=1, dtype=torch.float64):
    """Ids drawn without replacement per token from the experts not in `unused`; every allowed
    expert used at least once for n large enough."""
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([x for x in range(e) if x not in unused])
    ids = torch.stack([allowed[torch.randperm(len(allowed), generator=g)[:k]] for _ in range(n)])
    weights = torch.rand(n, k, generator=g, dtype=torch.float64).to(torch.float32)
    x = torch.randn(n, H, generator=g, dtype=torch.float64).to(dtype)
    return x, weights, ids


def _add_lora(mod, r=4, scale=2.0, projs=("gate_proj", "up_proj", "down_proj"), seed=5):
    g = torch.Generator().manual_seed(seed)
    dt = mod.gate_up.dtype
    e, h, i = mod.down.shape
    mod.__class__ = LoraStackedExperts
    mod.lora_A, mod.lora_B = torch.nn.ParameterDict(), torch.nn.ParameterDict()
    for p in projs:
        fan_in, fan_out = (i, h) if p == "down_proj" else (h, i)
        mod.lora_A[p] = torch.nn.Parameter(torch.randn(e, r, fan_in, generator=g, dtype=torch.float64).to(dt))
        mod.lora_B[p] = torch.nn.Parameter(torch.randn(e, fan_out, r, generator=g, dtype=torch.float64).to(dt))
    mod.lora_dropout = torch.nn.Identity()
    mod.lora_scale = scale
    return mod


def _values_and_grads(fn, mod, x, weights, probe):
    mod.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    w = weights.clone().requires_grad_()
    out = fn(x, w)
    (out.double() * probe).sum().backward()
    grads = {"x": x.grad, "weights": w.grad}
    grads.update({n: p.grad for n, p in mod.named_parameters()})
    return out.detach(), grads


def _compare(mod, x, weights, ids, impl, tol, lora=False):
    probe = torch.randn(x.shape[0], x.shape[1], generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    want, gw = _values_and_grads(lambda xx, ww: mod.forward(xx, ww, ids), mod, x, weights, probe)
    lo = ge._lora_of(mod) if lora else None
    got, gg = _values_and_grads(lambda xx, ww: ge.grouped_swiglu(xx, ww, ids, mod.gate_up, mod.down, lo, impl),
                                mod, x, weights, probe)
    scale = want.abs().max()
    assert (got - want).abs().max() <= tol * scale
    for name, g in gw.items():
        assert gg[name] is not None, name
        err = (gg[name].double() - g.double()).abs().max() / g.double().abs().max().clamp_min(1e-30)
        assert err <= tol, (name, float(err))
    return gg


def test_padded_path_equals_reference_float64():
    mod = _experts()
    x, weights, ids = _routing(40, unused=(3,))  # expert 3 receives no token
    assert set(ids.flatten().tolist()) == set(range(E)) - {3}
    grads = _compare(mod, x, weights, ids, "padded", 1e-10)
    assert not grads["gate_up"][3].any() and not grads["down"][3].any()


def test_padded_path_all_experts_and_skewed_groups():
    mod = _experts(seed=2)
    x, weights, ids = _routing(23, seed=4)
    ids[:5, 0] = 7  # a crowded expert among nearly-empty ones
    ids[:5] = torch.stack([torch.tensor([7, 0, 1, 2, 4, 5])] * 5)
    assert set(ids.flatten().tolist()) == set(range(E))
    _compare(mod, x, weights, ids, "padded", 1e-10)


def test_padded_path_with_lora_equals_lora_forward_float64():
    mod = _add_lora(_experts(seed=3))
    x, weights, ids = _routing(31, unused=(0, 6), seed=6)
    grads = _compare(mod, x, weights, ids, "padded", 1e-10, lora=True)
    for p in ("gate_proj", "up_proj", "down_proj"):
        assert not grads[f"lora_B.{p}"][0].any() and not grads[f"lora_A.{p}"][6].any()


def test_padded_path_with_some_lora_projections():
    mod = _add_lora(_experts(seed=4), projs=("down_proj",))
    x, weights, ids = _routing(12, seed=7)
    _compare(mod, x, weights, ids, "padded", 1e-10, lora=True)


def test_float32_under_cpu_autocast_runs_in_bf16():
    """Autocast with float32 master weights (the benchmarks' mode): the matmuls in bf16, the
    result in x's float32. (The reference's float32 `out[pairs] = bf16` would raise here.)"""
    mod = _experts(dtype=torch.float32, seed=8)
    x, weights, ids = _routing(20, seed=8, dtype=torch.float32)
    want = mod.double()(x.double(), weights, ids)
    mod.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ge.grouped_swiglu(x, weights, ids, mod.gate_up, mod.down, None, "padded")
    assert got.dtype == torch.float32
    assert (got.double() - want).abs().max() <= 3e-2 * want.abs().max()  # bf16 rounding, as below


def test_empty_batch_and_bad_shapes():
    mod = _experts()
    x, weights, ids = _routing(4)
    assert ge.grouped_swiglu(x[:0], weights[:0], ids[:0], mod.gate_up, mod.down).shape == (0, H)
    with pytest.raises(ge.GroupedExpertsError):
        ge.grouped_swiglu(x[:, :5], weights, ids, mod.gate_up, mod.down)
    with pytest.raises(ge.GroupedExpertsError):
        ge.grouped_swiglu(x, weights, ids, mod.gate_up, mod.down, impl="loop")


def _moe(dtype=torch.float64):
    cfg = SimpleNamespace(n_routed_experts=E, hidden_size=H, moe_intermediate_size=I, num_experts_per_tok=K,
                          norm_topk_prob=False, routed_scaling_factor=1.0, n_shared_experts=0)
    moe = MoE(cfg).to(dtype)
    moe.experts = _experts(dtype)
    with torch.no_grad():
        moe.gate.weight.copy_(torch.randn(E, H, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    return moe


def test_seam_routes_here_only_when_autograd_records(monkeypatch):
    calls = []
    real = ge.grouped_swiglu
    monkeypatch.setattr(ge, "grouped_swiglu", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    moe = _moe()
    x = torch.randn(10, H, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = moe(x)
    assert not calls  # inference: the kernels or the reference, unchanged
    with torch.inference_mode():
        moe(x)
    assert not calls
    out = moe(x)  # parameters require grad: autograd records
    assert len(calls) == 1
    assert torch.allclose(out, ref, rtol=0, atol=1e-10)
    out.sum().backward()
    assert moe.experts.gate_up.grad is not None and moe.gate.weight.grad is not None
    moe.requires_grad_(False)
    moe(x)  # nothing requires grad: nothing recorded, the path declines
    assert len(calls) == 1
    moe(x.clone().requires_grad_())
    assert len(calls) == 2
    kernels.set_enabled(False)
    try:
        moe(x.clone().requires_grad_())  # DEEPSEEK_OCR_KERNELS=off: the reference everywhere
        assert len(calls) == 2
    finally:
        kernels.set_enabled(True)


def test_seam_takes_lora_experts_and_declines_other_subclasses(monkeypatch):
    moe = _moe()
    _add_lora(moe.experts)
    x = torch.randn(9, H, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    weights, ids = moe.gate(x)
    got = ge._experts_seam(moe.experts, x, weights, ids)
    want = moe.experts.forward(x, weights, ids)
    assert got is not None and torch.allclose(got, want, rtol=0, atol=1e-10)

    class Custom(StackedExperts):
        def forward(self, x, weights, ids):
            return x

    other = _experts()
    other.__class__ = Custom
    assert ge._experts_seam(other, x, weights, ids) is None


def _grouped_mm_runs(device: str) -> bool:
    if not ge.has_grouped_mm():
        return False
    try:
        a = torch.randn(8, 16, device=device, dtype=torch.bfloat16)
        b = torch.randn(2, 16, 16, device=device, dtype=torch.bfloat16)
        torch._grouped_mm(a, b.transpose(-2, -1), offs=torch.tensor([3, 8], device=device, dtype=torch.int32))
        return True
    except RuntimeError:
        return False


def _bf16_case(device, lora: bool):
    """bf16 grouped path vs the reference run in float64 on the same (bf16-rounded) weights and inputs.

    Tolerance: every matmul output and the SwiGLU product are rounded to bf16 (relative 2^-8 =
    0.4% each, a few in a chain), so 3e-2 of the max norm leaves room for the rounding while a
    wrong grouping (rows multiplied by another expert's weights) gives errors near 100%."""
    e, h, i, n = 16, 64, 32, 200
    truth = _experts(torch.float64, seed=11, e=e, h=h, i=i)
    if lora:
        _add_lora(truth, r=8, scale=0.5)
    with torch.no_grad():
        for p in truth.parameters():
            p.copy_(p.to(torch.bfloat16).double())  # the ground truth sees the bf16 weights
    mod = copy.deepcopy(truth).to(device=device, dtype=torch.bfloat16)
    x, weights, ids = _routing(n, e=e, unused=(5,), seed=12)
    x = torch.randn(n, h, generator=torch.Generator().manual_seed(13)).to(torch.bfloat16)
    probe = torch.randn(n, h, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    want, gw = _values_and_grads(lambda xx, ww: truth.forward(xx, ww, ids), truth, x.double(), weights, probe)
    lo = ge._lora_of(mod) if lora else None
    got, gg = _values_and_grads(
        lambda xx, ww: ge.grouped_swiglu(xx, ww, ids.to(device), mod.gate_up, mod.down, lo, "grouped"),
        mod, x.to(device), weights.to(device), probe.to(device))
    assert got.dtype == torch.bfloat16
    assert (got.double().cpu() - want).abs().max() <= 3e-2 * want.abs().max()
    for name, g in gw.items():
        err = (gg[name].double().cpu() - g).abs().max() / g.abs().max()
        assert err <= 3e-2, (name, float(err))
    assert not gg["gate_up"][5].any()  # the expert without tokens gets no gradient


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch._grouped_mm path: CUDA (run on the GPU machine)")
@pytest.mark.parametrize("lora", [False, True])
def test_grouped_mm_path_bf16_cuda(lora):
    if not _grouped_mm_runs("cuda"):
        pytest.skip("torch._grouped_mm missing or unsupported on this GPU")
    _bf16_case("cuda", lora)
    x = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16)
    assert ge.grouped_mm_applies(x, torch.empty(4, 64, 64, device="cuda"), torch.bfloat16)


@pytest.mark.parametrize("lora", [False, True])
def test_grouped_mm_path_bf16_cpu_when_torch_supports_it(lora):
    """The same code on the CPU where this torch's `_grouped_mm` runs bf16 (a check of the
    grouping and offsets here; the seam itself uses it on CUDA only)."""
    if not _grouped_mm_runs("cpu"):
        pytest.skip("torch._grouped_mm does not run on the CPU in this torch")
    _bf16_case("cpu", lora)
