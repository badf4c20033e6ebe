"""Float32 masters of bf16 compute weights (training/precision.py) against autocast's casts.

The reference is the plain torch recipe the class replaces: float32 parameters, bf16 autocast
(which casts each weight at every use and casts its gradient back into a float32 `.grad`), and
AdamW on the float32 parameters. Training the bf16 copies and stepping the masters must give the
same losses and the same float32 weights, bit for bit, on the CPU.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from deepseek_ocr.training.config import TrainConfig
from deepseek_ocr.training.precision import MasterWeights, Precision, matmul_weights
from deepseek_ocr.training.trainable import set_trainable


class _Net(nn.Module):
    """A conv, two linears (one used twice per forward), a norm and a bias: every kind of
    parameter the class selects or leaves alone."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 5, bias=False)

    def forward(self, x):
        h = self.conv(x).mean(dim=(2, 3))
        h = self.fc(torch.relu(self.fc(self.norm(h))))  # fc twice: its gradient has two parts
        return self.out(h).float()


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(n)]


def _loss(net, x, y):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return nn.functional.cross_entropy(net(x), y)


def test_selection_is_the_matmul_weights():
    net = _Net()
    assert [n for n, _ in matmul_weights(net)] == ["conv.weight", "conv.bias", "fc.weight", "fc.bias", "out.weight"]
    assert [n for n, _ in matmul_weights(net, exclude=(net.out,))] == ["conv.weight", "conv.bias", "fc.weight",
                                                                       "fc.bias"]
    net.fc.weight.requires_grad_(False)  # frozen weights have no master
    assert [n for n, _ in matmul_weights(net)] == ["conv.weight", "conv.bias", "fc.bias", "out.weight"]


def test_selection_on_the_model(small_model):
    model = small_model.model
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        set_trainable(model, "paper")
        names = [n for n, _ in matmul_weights(model, exclude=(model.decoder.lm_head,))]
    finally:  # the session's model is shared with other tests
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
    assert "decoder.layers.0.self_attn.q_proj.weight" in names
    assert "decoder.layers.1.mlp.experts.gate_up" in names and "decoder.layers.1.mlp.experts.down" in names
    assert "vision.clip.transformer.layers.0.mlp.fc1.weight" in names
    assert "vision.clip.embeddings.patch_embedding.weight" in names and "vision.projector.layers.weight" in names
    assert "vision.projector.layers.bias" in names and "vision.clip.transformer.layers.0.mlp.fc1.bias" in names
    # float32 where autocast computes in float32 or the code casts once: left alone
    for kept in ("decoder.lm_head.weight", "decoder.embed_tokens.weight", "decoder.layers.1.mlp.gate.weight",
                 "decoder.norm.weight", "vision.clip.embeddings.position_embedding.weight",
                 "vision.clip.transformer.layers.0.layer_norm1.bias", "vision.clip.embeddings.class_embedding"):
        assert kept not in names, kept
    assert not any(n.startswith("vision.sam.") for n in names)  # frozen by the paper preset


def test_precision_policy_defaults_and_switches(small_model):
    # The trainer's defaults: no masters for trained weights (measured slower on the H200), a
    # frozen decoder base held in bf16; each switch on its own; nothing in float32 or under DDP.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert defaults["master_weights"] is False and defaults["bf16_frozen_base"] is True
    model = small_model.model
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for n, p in model.named_parameters():  # LoRA-like: the decoder's attention trained, the rest frozen
            p.requires_grad_(n.startswith("decoder.layers.0.self_attn."))
        trained = {id(p) for _, p in matmul_weights(model, exclude=(model.decoder.lm_head,))}
        frozen = matmul_weights(model.decoder, exclude=(model.decoder.lm_head,), trainable=False)
        decoder = {id(p) for _, p in frozen if torch.equal(p, p.to(torch.bfloat16).float())}
        tower = {id(p) for _, p in matmul_weights(model.vision, trainable=False)
                 if torch.equal(p, p.to(torch.bfloat16).float())}
        exact = decoder | tower  # the frozen vision tower's too, unless its rows are cached
        assert trained and decoder and tower  # the small checkpoint is bf16: its values are bf16 values
        cpu = torch.device("cpu")

        def held(**kw):
            prec = Precision("bfloat16", cpu, model, distributed=False, **kw)
            if prec.masters is None:
                return set(), set()
            return {id(p) for p in prec.masters.params}, {id(p) for p in prec.masters.frozen}

        assert held(master_weights=False) == (set(), exact)
        assert held(master_weights=False, vision_cached=True) == (set(), decoder)
        assert held(master_weights=True) == (trained, exact)
        assert held(master_weights=True, bf16_frozen_base=False) == (trained, set())
        assert held(master_weights=False, bf16_frozen_base=False) == (set(), set())
        assert Precision("float32", cpu, model, master_weights=True, distributed=False).masters is None
        assert Precision("bfloat16", cpu, model, master_weights=True, distributed=True).masters is None
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])


@pytest.mark.parametrize("accumulate", [1, 2])
def test_master_steps_equal_autocast_steps_bitwise(accumulate):
    torch.manual_seed(0)
    ref = _Net()
    net = _Net()
    net.load_state_dict(ref.state_dict())
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.01, foreach=True)
    masters = MasterWeights([p for _, p in matmul_weights(net)])
    opt = torch.optim.AdamW([masters.master_of(p) for p in net.parameters()], lr=1e-2, weight_decay=0.01,
                            foreach=True)
    masters.to_compute()
    assert net.fc.weight.dtype == torch.bfloat16 and net.fc.bias.dtype == torch.bfloat16
    assert net.norm.weight.dtype == torch.float32 and net.norm.bias.dtype == torch.float32
    data = _batches(4 * accumulate)
    for step in range(4):
        micro = data[step * accumulate:(step + 1) * accumulate]
        ref_losses, losses = [], []
        for x, y in micro:
            loss = _loss(ref, x, y) / accumulate
            loss.backward()
            ref_losses.append(loss.item())
            loss = _loss(net, x, y) / accumulate
            loss.backward()
            masters.gather_grads()
            losses.append(loss.item())
        assert losses == ref_losses, step
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        masters.refresh()
        # the compute copies are the masters rounded, as autocast would round them
        assert torch.equal(net.fc.weight, masters.master_of(net.fc.weight).to(torch.bfloat16))
    masters.to_master()
    for (name, a), b in zip(ref.named_parameters(), net.parameters()):
        assert b.dtype == torch.float32 and torch.equal(a, b), name


def test_float32_block_shows_the_masters_and_gives_the_copies_back():
    net = _Net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    masters = MasterWeights([p for _, p in matmul_weights(net)])
    masters.to_compute()
    copy = net.fc.weight.data_ptr()
    with masters.float32():
        for n, p in net.named_parameters():
            assert p.dtype == torch.float32 and torch.equal(p, before[n]), n
        assert net.state_dict()["fc.weight"].dtype == torch.float32  # what a checkpoint writes
    assert net.fc.weight.dtype == torch.bfloat16
    assert net.fc.weight.data_ptr() == copy  # the same bf16 tensor back, not a new rounding
    masters.to_master()
    assert not masters.active
    with masters.float32():  # nothing to swap once given back
        assert net.fc.weight.dtype == torch.float32


def test_a_weight_without_gradient_is_not_stepped():
    # A text-only batch leaves the vision weights without a gradient: AdamW must skip them
    # (weight decay included), as it skips a float32 parameter whose .grad is None.
    net = _Net()
    masters = MasterWeights([p for _, p in matmul_weights(net)])
    opt = torch.optim.AdamW([masters.master_of(p) for p in net.parameters()], lr=1e-2, weight_decay=0.1)
    masters.to_compute()
    conv_before = masters.master_of(net.conv.weight).clone()
    out = net.out(torch.randn(2, 8).to(torch.bfloat16)).float().sum()  # only `out` takes part
    out.backward()
    masters.gather_grads()
    assert masters.master_of(net.conv.weight).grad is None
    opt.step()
    assert torch.equal(masters.master_of(net.conv.weight), conv_before)
    assert not torch.equal(masters.master_of(net.out.weight), net.out.weight.float())  # stepped, not yet refreshed


def _tiny_paper(seed: int, bf16_values: bool = False):
    """The tiny model of tests/tiny_model.py under the `paper` preset (CLIP, projector and decoder
    trained; SAM frozen), its trained parameters by name, and a batch of an image sample and a
    text-only one. `bf16_values`: every weight rounded to a bf16 value first (as the official
    checkpoint's are)."""
    import sys
    from pathlib import Path
    from PIL import Image, ImageDraw
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_model import tiny_model

    ocr = tiny_model(seed=seed)
    if bf16_values:
        with torch.no_grad():
            for p in ocr.model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
    set_trainable(ocr.model, "paper")
    named = [(n, p) for n, p in ocr.model.named_parameters() if p.requires_grad]
    img = Image.new("RGB", (500, 300), "white")
    ImageDraw.Draw(img).text((20, 20), "total 12.50", fill="black")
    inputs = [ocr.prepare(img, "<image>\nFree OCR.", mode="512:256:crop", answer="total 12.50"),
              ocr.prepare(None, "Say hi.", answer="hi")]
    return ocr, named, inputs


def test_the_whole_model_trains_alike_with_masters():
    # The paper preset (CLIP, projector and decoder trained; SAM frozen) on the tiny model of
    # tests/tiny_model.py: the vision path's weights and biases become bf16 copies too, and its
    # loss and float32 weights after two AdamW steps must be those of plain autocast, bit for bit.
    runs = []
    for use_masters in (False, True):
        ocr, named, inputs = _tiny_paper(seed=3)
        masters = None
        if use_masters:
            masters = MasterWeights([p for _, p in matmul_weights(ocr.model, exclude=(ocr.model.decoder.lm_head,))])
        opt = torch.optim.AdamW([masters.master_of(p) if masters else p for _, p in named], lr=1e-3, foreach=True)
        if masters:
            masters.to_compute()
            assert ocr.model.vision.clip.transformer.layers[0].mlp.fc1.bias.dtype == torch.bfloat16
        losses = []
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = ocr.loss(inputs)
            out.loss.backward()
            losses.append(out.loss.item())
            if masters:
                masters.gather_grads()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if masters:
                masters.refresh()
        if masters:
            masters.to_master()
        runs.append((losses, {n: p.detach().clone() for n, p in named}))
    assert runs[1][0] == runs[0][0]
    for name, value in runs[0][1].items():
        assert runs[1][1][name].dtype == torch.float32 and torch.equal(runs[1][1][name], value), name


def test_frozen_weights_that_bf16_holds_are_stored_in_bf16():
    # A LoRA run's base: frozen, no master. A weight whose float32 values are bf16 values is held
    # in bf16 while training (what autocast computes from it) and widened back exactly; one that
    # bf16 cannot hold stays float32.
    torch.manual_seed(0)
    ref, net = _Net(), _Net()
    with torch.no_grad():
        ref.fc.weight.copy_(ref.fc.weight.to(torch.bfloat16).float())  # bf16-exact
    net.load_state_dict(ref.state_dict())
    for m in (ref, net):
        m.fc.weight.requires_grad_(False)
        m.conv.weight.requires_grad_(False)  # random float32: not bf16-exact
    frozen_fc = net.fc.weight.detach().clone()
    trained = [p for p in net.parameters() if p.requires_grad]
    masters = MasterWeights([p for _, p in matmul_weights(net)], frozen=[net.fc.weight, net.conv.weight])
    assert masters.frozen == [net.fc.weight]
    opt = torch.optim.AdamW([masters.master_of(p) for p in trained], lr=1e-2)
    ref_opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=1e-2)
    masters.to_compute()
    assert net.fc.weight.dtype == torch.bfloat16 and net.conv.weight.dtype == torch.float32
    for x, y in _batches(3, seed=1):
        for model, o in ((ref, ref_opt), (net, opt)):
            loss = _loss(model, x, y)
            loss.backward()
            if model is net:
                masters.gather_grads()
            o.step()
            o.zero_grad(set_to_none=True)
        masters.refresh()
    with masters.float32():
        assert net.fc.weight.dtype == torch.float32 and torch.equal(net.fc.weight, frozen_fc)
    assert net.fc.weight.dtype == torch.bfloat16
    with masters.float32(frozen=False):  # a checkpoint's block: trained tensors only
        assert net.fc.weight.dtype == torch.bfloat16 and net.out.weight.dtype == torch.float32
    assert torch.equal(net.fc.weight.float(), frozen_fc)
    masters.to_master()
    for (name, a), b in zip(ref.named_parameters(), net.parameters()):
        assert b.dtype == torch.float32 and torch.equal(a, b), name


def test_the_frozen_sam_held_in_bf16_trains_as_autocast_casts_do():
    # The trainer's default precision on the `paper` preset (no masters, bf16 frozen base): SAM,
    # frozen, is held in bf16 while training (its values are bf16 values, as the official
    # checkpoint's) instead of being cast at every forward; two AdamW steps of CLIP, projector and
    # decoder must equal plain autocast over float32 weights bit for bit, and SAM is float32 after.
    runs = []
    for hold in (False, True):
        ocr, named, inputs = _tiny_paper(seed=4, bf16_values=True)
        prec = Precision("bfloat16", torch.device("cpu"), ocr.model, master_weights=False, distributed=False,
                         bf16_frozen_base=hold)
        opt = torch.optim.AdamW([p for _, p in named], lr=1e-3, foreach=True)
        prec.start()
        sam_weight = ocr.model.vision.sam.blocks[0].attn.qkv.weight
        assert sam_weight.dtype == (torch.bfloat16 if hold else torch.float32)
        losses = []
        for _ in range(2):
            with prec.autocast():
                out = ocr.loss(inputs)
            out.loss.backward()
            prec.after_backward()
            losses.append(out.loss.item())
            opt.step()
            opt.zero_grad(set_to_none=True)
            prec.after_step()
        prec.finish()
        assert all(p.dtype == torch.float32 for p in ocr.model.parameters())
        runs.append((losses, {n: p.detach().clone() for n, p in named}))
    assert runs[1][0] == runs[0][0]
    for name, value in runs[0][1].items():
        assert torch.equal(runs[1][1][name], value), name
