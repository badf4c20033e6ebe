"""LoRA (training/lora.py), PEFT adapter files (training/adapter.py) and trainable presets, on the
3-layer parity checkpoint (float32, CPU).

The session's `small_model` is shared with other tests, and memory is tight (a copy is 3 GB),
so the tests use it in place: LoRA is unloaded, `requires_grad` and train/eval flags restored
after every test, and the only weights a test changes (a bias) are put back from a copy.
The one test that loads models of its own (merge through `from_pretrained(adapter=)`, save and
reload) loads the tiny model of tests/tiny_model.py from a folder instead: two more copies of
the parity checkpoint beside the session's were the suite's peak, and what it checks (the
adapter's logits survive merging, saving and reloading) does not depend on the model's size.
"""
from __future__ import annotations

import copy
import json
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from deepseek_ocr import DeepseekOCR
from deepseek_ocr.decoder.moe import StackedExperts
from deepseek_ocr.modeling import DeepseekOCRModel
from deepseek_ocr.training.adapter import CONFIG_NAME, WEIGHTS_NAME, load_adapter, save_adapter
from deepseek_ocr.training.lora import (CLIP_ATTENTION_TARGETS, DECODER_TARGETS, PROJECTOR_TARGETS,
                                        SAM_ATTENTION_TARGETS, AdapterError, LoraConfig,
                                        LoraStackedExperts, apply_lora, has_lora, lora_parameters,
                                        lora_state_dict,
                                        merge_lora, unload)
from deepseek_ocr.training.trainable import PresetError, set_trainable
from deepseek_ocr.weights.random import random_config

from tiny_model import save_tiny_checkpoint

ALL_TARGETS = DECODER_TARGETS + CLIP_ATTENTION_TARGETS + SAM_ATTENTION_TARGETS + PROJECTOR_TARGETS
P = "base_model.model."


@pytest.fixture(scope="module")
def ocr(small_model):
    return small_model


@pytest.fixture(autouse=True)
def _leave_small_model_as_found(ocr):
    flags = {n: p.requires_grad for n, p in ocr.model.named_parameters()}
    modes = {n: m.training for n, m in ocr.model.named_modules()}
    yield
    unload(ocr.model)
    for n, p in ocr.model.named_parameters():
        p.requires_grad_(flags[n])
    for n, m in ocr.model.named_modules():
        m.training = modes[n]


def make_inputs(ocr):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (96, 160, 3), dtype=np.uint8))
    return [ocr.prepare(None, "Text only: the quick brown fox jumps over the lazy dog."),
            ocr.prepare(img, "<image>\nFree OCR.", mode="tiny")]


@pytest.fixture(scope="module")
def inputs(ocr):
    return make_inputs(ocr)


@pytest.fixture(scope="module")
def base_logits(ocr, inputs):
    assert not has_lora(ocr.model)
    return [ocr.logits(x) for x in inputs]


def logits(ocr, inputs):
    return [ocr.logits(x) for x in inputs]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def randomize(model, seed: int = 0, std: float = 0.02) -> None:
    """Nonzero B (and fresh A) so that the adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * std)


# ------------------------------------------------------------------------------ the forward
def test_fresh_adapter_leaves_logits_identical(ocr, inputs, base_logits):
    targets = apply_lora(ocr.model, LoraConfig(r=4, alpha=8, target_modules=ALL_TARGETS))
    assert any(t.official.startswith("model.sam_model.") for t in targets)
    assert any(t.official.startswith("model.vision_model.") for t in targets)
    assert any(t.official == "model.projector.layers" for t in targets)
    for got, want in zip(logits(ocr, inputs), base_logits):
        assert torch.equal(got, want)


def test_linear_lora_equals_float64_reference(ocr):
    cfg = LoraConfig(r=8, alpha=16, target_modules=ALL_TARGETS)
    apply_lora(ocr.model, cfg)
    randomize(ocr.model, std=0.05)
    g = torch.Generator().manual_seed(1)
    for name in ("decoder.layers.1.self_attn.q_proj", "decoder.layers.0.mlp.down_proj",
                 "decoder.layers.2.mlp.shared_experts.up_proj", "vision.sam.blocks.3.attn.qkv",
                 "vision.clip.transformer.layers.5.self_attn.out_proj", "vision.projector.layers"):
        mod = ocr.model.get_submodule(name)
        x = torch.randn(5, mod.in_features, generator=g)
        w = mod.weight.double() + mod.lora_B.weight.double() @ mod.lora_A.weight.double() * cfg.scale
        ref = F.linear(x.double(), w, None if mod.bias is None else mod.bias.double())
        with torch.no_grad():
            got = mod(x)
        assert rel(got, ref) < 1e-5, name
        assert rel(got, F.linear(x, mod.weight, mod.bias)) > 1e-3, f"{name}: the adapter had no effect"


def _expert_reference(x, weights, ids, gate_up, down, factors, scale):
    """Per token, sum_j w_j * down_e(silu(gate_e x) * up_e x) with W + B @ A * scale, one expert
    at a time (no grouping, no stacking: independent of both implementations).

    Each expert's merged matrices are built once and reused by its tokens: built per (token,
    slot), autograd kept 42 float64 copies of three 896 x 1280 matrices (1.2 GB)."""
    inter = down.shape[-1]
    merged = {}

    def expert(e):
        if e not in merged:
            wg, wu, wd = gate_up[e, :inter], gate_up[e, inter:], down[e]
            merged[e] = (wg + factors["gate_proj"][1][e] @ factors["gate_proj"][0][e] * scale,
                         wu + factors["up_proj"][1][e] @ factors["up_proj"][0][e] * scale,
                         wd + factors["down_proj"][1][e] @ factors["down_proj"][0][e] * scale)
        return merged[e]

    out = []
    for t in range(x.shape[0]):
        acc = 0
        for j in range(ids.shape[1]):
            wg, wu, wd = expert(int(ids[t, j]))
            h = F.silu(wg @ x[t]) * (wu @ x[t])
            acc = acc + weights[t, j] * (wd @ h)
        out.append(acc)
    return torch.stack(out)


def test_expert_lora_forward_and_gradients_equal_float64_reference(ocr):
    cfg = LoraConfig(r=4, alpha=8, target_modules=("gate_proj", "up_proj", "down_proj"))
    apply_lora(ocr.model, cfg)
    randomize(ocr.model, std=0.05)
    mod = ocr.model.get_submodule("decoder.layers.1.mlp.experts")
    assert isinstance(mod, LoraStackedExperts)
    n_exp, k, n = mod.gate_up.shape[0], 6, 7
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, mod.gate_up.shape[-1], generator=g)
    # experts 0..6 only: expert 7 receives no token
    ids = torch.stack([torch.randperm(n_exp - 1, generator=g)[:k] for _ in range(n)])
    weights = torch.rand(n, k, generator=g)
    out = mod(x, weights, ids)
    probe = torch.randn(out.shape, generator=g)
    (out * probe).sum().backward()

    factors = {p: (mod.lora_A[p].detach().double().requires_grad_(),
                   mod.lora_B[p].detach().double().requires_grad_()) for p in mod.lora_A}
    ref = _expert_reference(x.double(), weights.double(), ids, mod.gate_up.detach().double(),
                            mod.down.detach().double(), factors, cfg.scale)
    (ref * probe.double()).sum().backward()
    assert rel(out.detach(), ref.detach()) < 1e-5
    for p, (a, b) in factors.items():
        assert rel(mod.lora_A[p].grad, a.grad) < 1e-5, p
        assert rel(mod.lora_B[p].grad, b.grad) < 1e-5, p
        unused = sorted(set(range(n_exp)) - set(ids.flatten().tolist()))
        for e in unused:  # experts without tokens get exactly zero gradient
            assert not mod.lora_B[p].grad[e].any()
    mod.zero_grad(set_to_none=True)


def test_expert_lora_with_zero_b_is_bitwise_the_reference(ocr):
    apply_lora(ocr.model, LoraConfig(r=4, alpha=8, target_modules=("down_proj",)))
    mod = ocr.model.get_submodule("decoder.layers.2.mlp.experts")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, mod.gate_up.shape[-1], generator=g)
    ids = torch.stack([torch.randperm(mod.gate_up.shape[0], generator=g)[:6] for _ in range(9)])
    weights = torch.rand(9, 6, generator=g)
    with torch.no_grad():
        assert torch.equal(mod(x, weights, ids), StackedExperts.forward(mod, x, weights, ids))
        empty = mod(x[:0], weights[:0], ids[:0])
    assert empty.shape == (0, x.shape[1])


def test_expert_kernel_declines_lora_experts(ocr):
    moe_grouped = pytest.importorskip("deepseek_ocr.kernels.moe_grouped")
    from deepseek_ocr.kernels import triton_on_cpu
    apply_lora(ocr.model, LoraConfig(r=2, target_modules=("up_proj",)))
    mod = ocr.model.get_submodule("decoder.layers.1.mlp.experts")
    x = torch.randn(4, mod.gate_up.shape[-1])
    ids = torch.stack([torch.randperm(mod.gate_up.shape[0])[:6] for _ in range(4)])
    with triton_on_cpu():
        assert moe_grouped._experts_seam(mod, x, torch.rand(4, 6), ids) is None


def test_rslora_scaling(ocr):
    assert LoraConfig(r=16, alpha=8).scale == 0.5
    assert LoraConfig(r=16, alpha=8, use_rslora=True).scale == 2.0
    cfg = LoraConfig(r=16, alpha=8, use_rslora=True, target_modules=("q_proj",))
    apply_lora(ocr.model, cfg)
    randomize(ocr.model)
    mod = ocr.model.get_submodule("decoder.layers.0.self_attn.q_proj")
    assert mod.lora_scale == 8 / math.sqrt(16)
    x = torch.randn(3, mod.in_features)
    with torch.no_grad():
        delta = mod(x) - F.linear(x, mod.weight)
        want = F.linear(F.linear(x, mod.lora_A.weight), mod.lora_B.weight) * 2.0
    assert rel(delta, want) < 1e-5


def test_dropout_only_in_training(ocr, inputs):
    apply_lora(ocr.model, LoraConfig(r=4, alpha=8, dropout=0.5, target_modules=("q_proj", "down_proj")))
    randomize(ocr.model, std=0.05)
    ocr.model.eval()
    first = ocr.logits(inputs[0])
    assert torch.equal(first, ocr.logits(inputs[0]))
    for _name, m in ocr.model.named_modules():  # the same factors without dropout: same logits
        if getattr(m, "carries_lora", False):
            m.lora_dropout = torch.nn.Identity()
    assert torch.equal(first, ocr.logits(inputs[0]))
    unload(ocr.model)
    apply_lora(ocr.model, LoraConfig(r=4, alpha=8, dropout=0.5, target_modules=("q_proj",)))
    randomize(ocr.model, std=0.05)
    mod = ocr.model.get_submodule("decoder.layers.0.self_attn.q_proj").train()
    x = torch.randn(4, mod.in_features)
    with torch.no_grad():
        assert not torch.equal(mod(x), mod(x))
        mod.eval()
        assert torch.equal(mod(x), mod(x))


# ------------------------------------------------------------------------------ adapter files
def test_adapter_keys_and_config_follow_peft_format(ocr, tmp_path):
    cfg = LoraConfig(r=16, alpha=16)  # the Unsloth recipe
    apply_lora(ocr.model, cfg)
    save_adapter(ocr.model, tmp_path, base_model_name_or_path="deepseek-ai/DeepSeek-OCR")
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    want = {"peft_type": "LORA", "r": 16, "lora_alpha": 16, "lora_dropout": 0.0,
            "target_modules": list(DECODER_TARGETS), "bias": "none", "task_type": "CAUSAL_LM",
            "base_model_name_or_path": "deepseek-ai/DeepSeek-OCR", "modules_to_save": None,
            "use_rslora": False, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {}}
    assert {k: config[k] for k in want} == want

    with safe_open(str(tmp_path / WEIGHTS_NAME), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        assert {f.get_tensor(k).dtype for k in list(f.keys())[:4]} == {torch.float32}
    attn = [f"{P}model.layers.1.self_attn.{p}_proj.lora_{ab}.weight" for p in "qkvo" for ab in "AB"]
    shared = [f"{P}model.layers.1.mlp.shared_experts.{p}_proj.lora_{ab}.weight"
              for p in ("gate", "up", "down") for ab in "AB"]
    experts = [f"{P}model.layers.1.mlp.experts.{e}.{p}_proj.lora_{ab}.weight"
               for e in range(8) for p in ("gate", "up", "down") for ab in "AB"]
    layer1 = {k for k in shapes if k.startswith(f"{P}model.layers.1.")}
    assert layer1 == set(attn + shared + experts)
    dense = {k for k in shapes if k.startswith(f"{P}model.layers.0.mlp.")}
    assert dense == {f"{P}model.layers.0.mlp.{p}_proj.lora_{ab}.weight" for p in ("gate", "up", "down") for ab in "AB"}
    assert len(shapes) == 14 + 2 * 62  # nothing else: no vision, no lm_head, no router
    assert shapes[f"{P}model.layers.2.self_attn.q_proj.lora_A.weight"] == (16, 1280)
    assert shapes[f"{P}model.layers.1.self_attn.o_proj.lora_B.weight"] == (1280, 16)
    assert shapes[f"{P}model.layers.1.mlp.experts.7.gate_proj.lora_B.weight"] == (896, 16)
    assert shapes[f"{P}model.layers.1.mlp.experts.7.down_proj.lora_A.weight"] == (16, 896)
    assert shapes[f"{P}model.layers.1.mlp.experts.7.down_proj.lora_B.weight"] == (1280, 16)
    assert shapes[f"{P}model.layers.2.mlp.shared_experts.up_proj.lora_B.weight"] == (1792, 16)
    assert shapes[f"{P}model.layers.0.mlp.gate_proj.lora_B.weight"] == (6848, 16)


def test_unsloth_targets_on_the_full_size_model_count_77_5m():
    """TRAINING.md §3: r=16 on q,k,v,o,gate,up,down, experts included, is 77.5M parameters (2.27%)."""
    with torch.device("meta"):
        model = DeepseekOCRModel(random_config())
    apply_lora(model, LoraConfig(r=16, alpha=16))
    n_lora = sum(p.numel() for _n, p in lora_parameters(model))
    assert n_lora == 77_509_632
    assert round(100 * n_lora / sum(p.numel() for p in model.parameters()), 2) == 2.27


def test_save_load_gives_identical_logits(ocr, inputs, tmp_path):
    apply_lora(ocr.model, LoraConfig(r=4, alpha=8, use_rslora=True, target_modules=ALL_TARGETS))
    randomize(ocr.model)
    want = ocr.logits(inputs[0])  # text only (the image path is covered by the merge test)
    factors = lora_state_dict(ocr.model)
    save_adapter(ocr.model, tmp_path)
    unload(ocr.model)
    cfg = load_adapter(ocr.model, tmp_path)
    assert cfg.use_rslora and cfg.r == 4 and tuple(cfg.target_modules) == ALL_TARGETS
    loaded = lora_state_dict(ocr.model)  # every factor, vision ones included, bit for bit
    assert loaded.keys() == factors.keys() and all(torch.equal(loaded[k], factors[k]) for k in factors)
    assert torch.equal(ocr.logits(inputs[0]), want)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


def test_merge_save_pretrained_from_pretrained(tiny_folder, tmp_path):
    """On the tiny model (see the module docstring): LoRA on every target kind, the adapter
    merged by `from_pretrained(adapter=)`, then saved and reloaded."""
    tiny = DeepseekOCR.from_pretrained(tiny_folder, device="cpu", dtype=torch.float32)
    inputs = make_inputs(tiny)
    base_logits = logits(tiny, inputs)
    original = {n: type(m) for n, m in tiny.model.named_modules()}
    keys = list(tiny.model.state_dict())
    apply_lora(tiny.model, LoraConfig(r=8, alpha=16, target_modules=ALL_TARGETS))
    randomize(tiny.model)
    want = logits(tiny, inputs)
    save_adapter(tiny.model, tmp_path / "adapter")
    with pytest.raises(AdapterError, match="merge_lora"):
        tiny.save_pretrained(tmp_path / "refused")
    unload(tiny.model)

    # from_pretrained(adapter=...) merges by default, through merge_lora
    merged = DeepseekOCR.from_pretrained(tiny_folder, device="cpu", dtype=torch.float32,
                                         adapter=tmp_path / "adapter")
    assert not has_lora(merged.model) and not hasattr(merged.model, "lora_config")
    assert {n: type(m) for n, m in merged.model.named_modules()} == original
    assert list(merged.model.state_dict()) == keys
    merged_logits = logits(merged, inputs)
    for got, w, b in zip(merged_logits, want, base_logits):
        assert rel(got, w) < 1e-5 and rel(got, b) > 1e-3
    merged.save_pretrained(tmp_path / "merged", dtype=torch.float32)
    reloaded = DeepseekOCR.from_pretrained(tmp_path / "merged", device="cpu", dtype=torch.float32)
    for got, m, w in zip(logits(reloaded, inputs), merged_logits, want):
        assert torch.equal(got, m) and rel(got, w) < 1e-5


def test_merge_lora_in_place(ocr, inputs):
    """merge_lora on the live model gives the LoRA logits (1e-5); the merged weights are then
    put back from copies, so the shared model comes back exactly."""
    apply_lora(ocr.model, LoraConfig(r=4, alpha=8, target_modules=("o_proj", "down_proj")))
    randomize(ocr.model)
    want = ocr.logits(inputs[0])
    mods = {n: m for n, m in ocr.model.named_modules() if getattr(m, "carries_lora", False)}
    backup = {n: (m.weight if hasattr(m, "weight") else m.down).detach().clone() for n, m in mods.items()}
    try:
        assert merge_lora(ocr.model) == len(mods) == 8  # o_proj x3; down_proj: dense, 2 shared, 2 experts
        assert rel(ocr.logits(inputs[0]), want) < 1e-5
    finally:
        with torch.no_grad():
            for n, w in backup.items():
                m = ocr.model.get_submodule(n)
                (m.weight if hasattr(m, "weight") else m.down).copy_(w)


def test_modules_to_save_round_trip(ocr, tmp_path):
    cfg = LoraConfig(r=2, target_modules=("q_proj",), modules_to_save=("projector.layers",))
    apply_lora(ocr.model, cfg)
    summary = set_trainable(ocr.model, "lora")
    assert summary.parts["projector"][0] == summary.parts["projector"][1] > 0
    proj = ocr.model.vision.projector.layers
    bias = proj.bias.detach().clone()
    try:
        with torch.no_grad():
            proj.bias.add_(1.0)
        save_adapter(ocr.model, tmp_path)
        saved = load_file(str(tmp_path / WEIGHTS_NAME))
        assert f"{P}model.projector.layers.weight" in saved and f"{P}model.projector.layers.bias" in saved
        unload(ocr.model)
        with torch.no_grad():
            proj.bias.copy_(bias)
        load_adapter(ocr.model, tmp_path)
        assert torch.equal(proj.bias, saved[f"{P}model.projector.layers.bias"])
        assert not torch.equal(proj.bias, bias)
    finally:
        with torch.no_grad():
            proj.bias.copy_(bias)


# ------------------------------------------------------------------------------ errors
def _saved(ocr, folder, **kw):
    apply_lora(ocr.model, LoraConfig(r=2, target_modules=("q_proj", "down_proj"), **kw))
    save_adapter(ocr.model, folder)
    unload(ocr.model)
    return load_file(str(folder / WEIGHTS_NAME))


def test_load_with_wrong_shape_or_keys_is_a_typed_error(ocr, tmp_path):
    tensors = _saved(ocr, tmp_path)
    q_a = f"{P}model.layers.0.self_attn.q_proj.lora_A.weight"
    e_b = f"{P}model.layers.2.mlp.experts.5.down_proj.lora_B.weight"
    tensors[q_a] = torch.zeros(3, 1280)
    del tensors[e_b]
    tensors[f"{P}model.layers.9.self_attn.q_proj.lora_A.weight"] = torch.zeros(2, 1280)
    save_file(tensors, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(AdapterError) as info:
        load_adapter(ocr.model, tmp_path)
    problems = "\n".join(info.value.problems)
    assert len(info.value.problems) == 3
    assert q_a in problems and "[3, 1280]" in problems and "[2, 1280]" in problems
    assert f"missing {e_b}" in problems and "unexpected" in problems and "layers.9" in problems
    assert not has_lora(ocr.model)  # left as it was


@pytest.mark.parametrize("field,value", [("use_dora", True), ("rank_pattern", {"q_proj": 8}),
                                         ("alpha_pattern", {"q_proj": 8}), ("bias", "all"),
                                         ("peft_type", "IA3"), ("layers_to_transform", [0])])
def test_config_it_cannot_honour_is_refused(ocr, tmp_path, field, value):
    _saved(ocr, tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config[field] = value
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(AdapterError, match=field):
        load_adapter(ocr.model, tmp_path)
    assert not has_lora(ocr.model)


def test_bad_targets_are_typed_errors(ocr, tmp_path):
    with pytest.raises(AdapterError, match="match no"):
        apply_lora(ocr.model, LoraConfig(target_modules=("no_such_proj",)))
    with pytest.raises(AdapterError, match="all together"):  # a regex picking some experts only
        apply_lora(ocr.model, LoraConfig(target_modules=r"model\.layers\.1\.mlp\.experts\.[0-3]\.up_proj"))
    with pytest.raises(AdapterError, match="r must be"):
        LoraConfig(r=0)
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        load_adapter(ocr.model, tmp_path)
    apply_lora(ocr.model, LoraConfig(r=2, target_modules=("q_proj",)))
    with pytest.raises(AdapterError, match="already"):
        apply_lora(ocr.model, LoraConfig(r=2, target_modules=("k_proj",)))


# ------------------------------------------------------------------------------ presets
def test_presets(ocr):
    model = ocr.model
    try:
        summary = set_trainable(model, "paper")
        for name, p in model.named_parameters():
            assert p.requires_grad == (not name.startswith("vision.sam.")), name
        assert "vision.sam.net_2.weight" in dict(model.named_parameters())  # the compressor is in SAM
        assert summary.parts["sam"][0] == 0 and summary.parts["clip"][0] == summary.parts["clip"][1]
        assert summary.parts["vision_tokens"] == (2560, 2560)  # image_newline + view_seperator

        set_trainable(model, "decoder")
        assert all(p.requires_grad == n.startswith("decoder.") for n, p in model.named_parameters())
        assert set_trainable(model, "all").trainable == sum(p.numel() for p in model.parameters())
        with pytest.raises(PresetError, match="apply_lora"):
            set_trainable(model, "lora")
        with pytest.raises(PresetError, match="unknown"):
            set_trainable(model, "everything")

        apply_lora(model, LoraConfig(r=4, target_modules=DECODER_TARGETS + CLIP_ATTENTION_TARGETS))
        summary = set_trainable(ocr, "lora")  # a DeepseekOCR works too
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {n for n, _p in lora_parameters(model)}
        assert all(".lora_A" in n or ".lora_B" in n for n in trainable)
        assert summary.parts["sam"][0] == 0 and summary.parts["clip"][0] > 0
        assert summary.trainable == sum(p.numel() for _n, p in lora_parameters(model))
        assert "lora" in str(summary)
    finally:
        unload(model)


def test_lora_module_tree_is_transparent_to_deepcopy(ocr, inputs):
    """A deep copy of a LoRA'd model carries its own factors (no hook closures on the original)."""
    apply_lora(ocr.model, LoraConfig(r=2, target_modules=("o_proj",)))
    randomize(ocr.model)
    clone = types.SimpleNamespace(model=copy.deepcopy(ocr.model.decoder.layers[0].self_attn.o_proj))
    with torch.no_grad():
        clone.model.lora_B.weight.zero_()
    x = torch.randn(2, clone.model.in_features)
    orig = ocr.model.decoder.layers[0].self_attn.o_proj
    with torch.no_grad():
        assert torch.equal(clone.model(x), F.linear(x, orig.weight))
        assert not torch.equal(orig(x), F.linear(x, orig.weight))
