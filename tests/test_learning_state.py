"""benchmarks/learning_state.py: a learning run stopped after one device call and resumed in the
next continues exactly where it stopped (weights and AdamW moments), and refuses a state saved
with other settings."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from learning_state import StateMismatch, load_state, save_state  # noqa: E402


def build(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model[0].bias.requires_grad_(False)  # a frozen parameter: rebuilt from the seed, not saved
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    return model, opt


def steps(model, opt, xs):
    losses = []
    for x in xs:
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_resumed_training_equals_uninterrupted(tmp_path):
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(4, 6, generator=g) for _ in range(6)]
    config = {"lr": 1e-2, "seed": 0, "out": "a", "stop_after": 1.0}
    whole, whole_opt = build()
    expected = steps(whole, whole_opt, xs)

    first, first_opt = build()
    head = steps(first, first_opt, xs[:3])
    save_state(tmp_path, first, first_opt, {"step": 3}, {"loss_curve": head}, config)
    assert not list(tmp_path.glob("*.tmp"))
    second, second_opt = build()  # a new call: the same command line builds the same model
    counters, log = load_state(tmp_path, second, second_opt, {**config, "out": "b", "stop_after": None},
                               ignore=("out", "stop_after"))
    assert counters == {"step": 3} and log == {"loss_curve": head}
    tail = steps(second, second_opt, xs[3:])
    assert head + tail == expected
    for a, b in zip(whole.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_a_state_of_other_settings_is_refused(tmp_path):
    model, opt = build()
    steps(model, opt, [torch.ones(2, 6)])
    save_state(tmp_path, model, opt, {"step": 1}, {}, {"lr": 1e-2, "seed": 0})
    with pytest.raises(StateMismatch, match=r"lr=0.01 \(now 0.001\)"):
        load_state(tmp_path, *build(), {"lr": 1e-3, "seed": 0})
    other = torch.nn.Linear(6, 3)  # not the same trainable parameters
    with pytest.raises(StateMismatch, match="trainable"):
        load_state(tmp_path, other, torch.optim.AdamW(other.parameters()), {"lr": 1e-2, "seed": 0})
