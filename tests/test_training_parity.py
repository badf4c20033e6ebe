"""The training surface against the official code's recorded loss and gradients.

`../shared/parity/train_golden_small.safetensors` holds, for the 3-layer 8-expert parity
checkpoint in float32 on the CPU, the official cross entropy and the gradients of chosen
decoder tensors for two single cases (MoE balance loss on) and one right-padded batch of both
(balance loss off); `parity/README.md` describes it. Thresholds are the README's: the loss
within 1e-5 relative, each gradient within 1e-4 relative L2 (we measure ~1e-7 and ~1e-6).

The official forward gives the vision tower no gradient, so these cases run with the tower
frozen and its rows computed once (shared with the inference parity tests); the vision
gradients are checked against finite differences in `test_training_vision_grads.py`.
"""
from __future__ import annotations

import json

import pytest
import torch

LOSS_TOL = 1e-5
GRAD_TOL = 1e-4
SINGLE = ["t_tiny_receipt", "t_gundam_page"]


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.detach().cpu().double(), ref.cpu().double()
    return float((ours - ref).norm() / ref.norm())


@pytest.fixture(scope="module")
def train_golden(shared_dir):
    from safetensors import safe_open
    f = safe_open(str(shared_dir / "parity" / "train_golden_small.safetensors"), "pt")
    return f, json.loads(f.metadata()["cases"])


@pytest.fixture(scope="module")
def frozen_vision(small_model):
    """The session model with its vision tower frozen for this module, restored afterwards."""
    vision = small_model.model.vision
    before = {n: p.requires_grad for n, p in vision.named_parameters()}
    vision.requires_grad_(False)
    yield small_model
    for n, p in vision.named_parameters():
        p.requires_grad_(before[n])
    small_model.zero_grad()


@pytest.fixture(scope="module")
def train_inputs(frozen_vision, train_golden, encoded_views, shared_dir):
    _, cases = train_golden
    out = {}
    for name in SINGLE:
        c = cases[name]
        inp = frozen_vision.prepare(shared_dir / c["image"], c["prompt"], mode=c["mode"], answer=c["answer"])
        inp.vision_rows = encoded_views(c["image"], c["mode"])[0]
        out[name] = inp
    return out


def test_recorded_cases_are_the_expected_ones(train_golden):
    _, cases = train_golden
    assert sorted(cases) == ["t_batch", "t_gundam_page", "t_tiny_receipt"]
    assert cases["t_batch"]["batch"] == SINGLE


@pytest.mark.parametrize("name", SINGLE)
def test_training_sequence_exact(name, train_inputs, train_golden):
    f, _ = train_golden
    inp = train_inputs[name]
    assert torch.equal(inp.input_ids, f.get_tensor(f"{name}.full_ids"))
    assert torch.equal(inp.labels, f.get_tensor(f"{name}.labels"))
    assert torch.equal(inp.images_seq_mask, f.get_tensor(f"{name}.images_seq_mask").bool())
    # Only the answer and its EOS are targets.
    first = inp.num_prompt_tokens
    assert (inp.labels[:first] == -100).all() and inp.labels[-1].item() == 1
    assert torch.equal(inp.labels[first:], inp.input_ids[first:])


@pytest.mark.parametrize("name", SINGLE + ["t_batch"])
def test_loss_and_gradients_match_official(name, frozen_vision, train_inputs, train_golden):
    f, cases = train_golden
    c = cases[name]
    batch = [train_inputs[n] for n in c.get("batch", [name])]
    model = frozen_vision
    model.zero_grad()
    # The Gundam page and the two-sample batch (1.7 GB of saved activations without it, which
    # made them the suite's memory peak) run with per-layer gradient checkpointing, which the
    # recorded gradients then check too; the tiny receipt runs without.
    out = model.loss(batch, aux_loss=c["aux_loss"], gradient_checkpointing=name != "t_tiny_receipt")
    out.loss.backward()
    ref_loss = f.get_tensor(f"{name}.loss").item()
    assert out.ce.item() == pytest.approx(ref_loss, rel=LOSS_TOL)
    assert out.ce.item() == pytest.approx(c["loss"], rel=LOSS_TOL)
    if c["aux_loss"]:
        assert out.aux.item() > 0 and out.loss.item() == pytest.approx(out.ce.item() + out.aux.item(), rel=1e-6)
    else:
        assert out.loss.item() == out.ce.item()
    grads = model.official_grads()
    recorded = [k for k in f.keys() if k.startswith(f"{name}.grad.")]
    assert len(recorded) >= 15
    # Every recorded tensor of the case, including both recorded routed experts per expert.
    for e in c["experts_recorded"]:
        assert f"{name}.grad.model.layers.1.mlp.experts.{e}.down_proj.weight" in recorded
    errors = {}
    for key in recorded:
        official = key[len(name) + len(".grad."):]
        ref = f.get_tensor(key)
        ours = grads[official]
        if official == "lm_head.weight":
            ours = ours[f.get_tensor(f"{name}.rows.lm_head")]
        elif official == "model.embed_tokens.weight":
            ours = ours[f.get_tensor(f"{name}.rows.embed")]
        else:
            ours = ours[:ref.shape[0]]
        errors[official] = rel_err(ours, ref)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= GRAD_TOL, f"{worst}: relative L2 {errors[worst]:.2e}"
    model.zero_grad()


def test_frozen_vision_gets_no_gradient_and_decoder_does(frozen_vision, train_inputs):
    model = frozen_vision
    model.zero_grad()
    model.loss([train_inputs["t_tiny_receipt"]]).loss.backward()
    names = set(model.official_grads())
    assert not any(n.startswith(("model.sam_model", "model.vision_model", "model.projector")) for n in names)
    assert "model.layers.0.self_attn.q_proj.weight" in names and "lm_head.weight" in names
    assert "model.layers.1.mlp.experts.7.gate_proj.weight" in names  # stacked experts split per expert
    model.zero_grad()


def test_loss_refuses_samples_without_labels(frozen_vision, train_inputs):
    from deepseek_ocr.training.objective import TrainingInputError
    bare = frozen_vision.prepare(None, "Hello")
    with pytest.raises(TrainingInputError, match="answer"):
        frozen_vision.loss([bare])
    with pytest.raises(TrainingInputError):
        frozen_vision.loss([])
