"""The trainer's `compile` setting (training/compiled.py) on CPU: the layers it names run
compiled inside the training steps and only there, the training is the same, and the settings
are checked. torch.compile's code generation (inductor) is the GPU's business and slow on two
CPU cores; here the layers go through a tracing backend that runs dynamo's captured graphs
as they are, so what is tested is the wiring (which calls are compiled, what the trainer does
around them), not the generated kernels. tests/test_training_gpu.py runs inductor with CUDA
graphs against the uncompiled trainer.
"""
from __future__ import annotations

import pytest
import torch

from deepseek_ocr.training import compiled
from deepseek_ocr.training.config import TrainConfig, TrainConfigError, resume_differences
from deepseek_ocr.training.trainer import Trainer, TrainingError

from test_trainer import _cfg, _greedy, _reset, _trained, base, ckpt, ocr, samples  # noqa: F401 (fixtures)


class CountingBackend:
    """A torch.compile backend that runs the captured graph unchanged, counting the graphs it
    was given and the calls of them."""

    def __init__(self):
        self.graphs = 0
        self.calls = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1

        def run(*args):
            self.calls += 1
            return gm.forward(*args)
        return run


@pytest.fixture
def backend(monkeypatch):
    counting = CountingBackend()
    monkeypatch.setattr(compiled, "BACKEND", counting)
    torch._dynamo.reset()
    yield counting
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", ["decoder", "lora"])
def test_compiled_decoder_layers_train_as_the_uncompiled_ones(tmp_path, ocr, base, samples, backend, kind):
    # LoRA: the adapters (attention, dense MLP, shared and routed experts) inside the compiled layers.
    extra = dict(preset="decoder") if kind == "decoder" else dict(lora_r=4, lora_alpha=8)
    common = dict(lr=2e-3, max_steps=3, batch_size=2, warmup_steps=1, weight_decay=0.01, **extra)
    runs = {}
    for scope in (None, "decoder"):
        _reset(ocr, base)
        result = Trainer(ocr, _cfg(tmp_path, f"compile-{kind}-{scope}", compile=scope, **common), samples).train()
        runs[scope] = (result.losses, _trained(ocr))
    assert backend.graphs > 0 and backend.calls >= 3 * len(ocr.model.decoder.layers)  # compiled in every step
    # The captured graphs run the same operators in the same order: the same run, bit for bit.
    assert runs["decoder"][0] == runs[None][0]
    for name, value in runs[None][1].items():
        assert torch.equal(runs["decoder"][1][name], value), name
    # Outside the steps the layers run as written: generation does not reach the compiled calls.
    calls = backend.calls
    _greedy(ocr, samples[:1])
    assert backend.calls == calls
    assert all(layer._compiled_call_impl is None for layer in ocr.model.decoder.layers)


def test_a_compile_failure_stops_with_a_typed_error(tmp_path, ocr, base, samples, monkeypatch):
    from deepseek_ocr.training.errors import CompileError

    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler found")
    monkeypatch.setattr(compiled, "BACKEND", broken)
    torch._dynamo.reset()
    _reset(ocr, base)
    before = _trained(ocr)
    cfg = _cfg(tmp_path, preset="decoder", lr=2e-3, max_steps=2, batch_size=2, compile="decoder")
    try:
        with pytest.raises(CompileError, match=r"torch.compile failed on the compiled layers \(2 layers, mode "
                                               r"'default'\) in training step 1: .*no C\+\+ compiler found.*"
                                               r"Train without compile"):
            Trainer(ocr, cfg, samples).train()
    finally:
        torch._dynamo.reset()
    after = _trained(ocr)
    assert all(torch.equal(after[n], v) for n, v in before.items())  # no update was made
    assert all(layer._compiled_call_impl is None for layer in ocr.model.decoder.layers)


def test_the_scopes_name_the_layers(ocr):
    model = ocr.model
    dec, clip = list(model.decoder.layers), list(model.vision.clip.transformer.layers)
    assert compiled.compiled_layers(model, "decoder") == dec
    assert compiled.compiled_layers(model, "clip") == clip and len(clip) == 24
    assert compiled.compiled_layers(model, "all") == dec + clip
    with pytest.raises(ValueError, match="compile scope"):
        compiled.compiled_layers(model, "sam")


def test_cuda_graphs_need_cuda_and_one_process(tmp_path, ocr, samples):
    cfg = _cfg(tmp_path, preset="decoder", max_steps=1, compile="decoder", compile_mode="reduce-overhead")
    with pytest.raises(TrainingError, match="records CUDA graphs, and the device is cpu"):
        Trainer(ocr, cfg, samples)
    with pytest.raises(TrainingError, match="not supported under torchrun"):
        compiled.layer_compiler(_cfg(tmp_path, max_steps=1, compile="all"), ocr.model, torch.device("cpu"),
                                distributed=True)
    assert compiled.layer_compiler(_cfg(tmp_path, max_steps=1), ocr.model, torch.device("cpu"),
                                   distributed=True) is None


def test_compile_settings_are_checked_and_may_change_on_resume(tmp_path):
    ok = dict(data=["x"], max_steps=1)
    for bad, needle in [(dict(compile="sam"), "compile must be one of decoder, clip, all"),
                        (dict(compile="all", compile_mode="fast"), "compile_mode must be one of"),
                        (dict(compile_mode="reduce-overhead"), "needs compile"),
                        (dict(compile="all", compile_mode="reduce-overhead", gradient_checkpointing=True),
                         "does not combine with gradient_checkpointing"),
                        (dict(compile="all", compile_mode="reduce-overhead", grad_accum=2),
                         "with grad_accum > 1 is not supported")]:
        with pytest.raises(TrainConfigError, match=needle):
            TrainConfig(**ok, **bad)
    cfg = TrainConfig(**ok, compile="all", compile_mode="reduce-overhead")
    assert resume_differences(TrainConfig(**ok).to_dict(), cfg) == []  # how it runs, not what it trains


def test_the_command_line_sets_compile(tmp_path):
    from deepseek_ocr.commands.train import build_parser, config_from_args
    args = build_parser().parse_args(["--data", "x", "--max-steps", "1", "--compile", "clip",
                                      "--compile-mode", "reduce-overhead"])
    cfg = config_from_args(args)
    assert (cfg.compile, cfg.compile_mode) == ("clip", "reduce-overhead")
