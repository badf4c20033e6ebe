"""`torch.compile` for the training step, layer by layer (the trainer's `compile` setting).

Why: a `paper` step on the H200 is bound by the host, which launches ~6,000 operators per step
(benchmarks/op_census.py); the GPU's kernels are ~120-150 ms of a 170-290 ms step, and how long
the host takes varies by up to 2x from one process to the next on the same machine
(benchmarks/RESULTS.md, thirteenth round). Compiling a layer fuses its elementwise glue (and
under autocast the casts of its float32 weights); with `mode="reduce-overhead"` each compiled
layer's forward and backward are also replayed as CUDA graphs, one launch where there were
dozens, which is what keeps the step near the GPU's time when the host is slow.

What is compiled: the decoder's layers, CLIP's (the trained half of the vision tower), or both.
Each layer keeps its own module and parameters (`nn.Module.compile` only sets the module's call
to a compiled one), so checkpoints, state dicts, LoRA and DDP see the same model. The compiled
call is on only inside `active()` (the trainer's forward and backward); evaluation (generation,
with its own kernels and cache arguments) and anything else run the layers as written.

With `reduce-overhead` a graph is recorded per input shape. After the first change of batch
length torch compiles the layer once more with the length symbolic (torch's automatic dynamic
shapes: no further compilations), and CUDA graphs are then recorded for each new length on its
first use (time and memory once per length). So it pays most when batches have one length (one
mode, fixed-size pages); with many lengths, `compile_mode="default"` avoids the recordings. It
needs CUDA, one process, no gradient checkpointing and no accumulation over micro-batches
(config.py checks).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .config import COMPILE_MODES, COMPILE_SCOPES, TrainConfig
from .errors import CompileError, TrainingError

# torch.compile's backend for the trainer's layers (tests set a tracing-only one).
BACKEND = "inductor"


def compiled_layers(model: nn.Module, scope: str) -> list[nn.Module]:
    """The layers `scope` names: the decoder's, CLIP's, or both ("all")."""
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"compile scope must be one of {', '.join(COMPILE_SCOPES)}, got {scope!r}")
    layers: list[nn.Module] = []
    if scope in ("decoder", "all"):
        layers += list(model.decoder.layers)
    if scope in ("clip", "all"):
        layers += list(model.vision.clip.transformer.layers)
    return layers


class LayerCompiler:
    """Compiled calls for `layers`, switched on inside `active()`.

    `backend` is torch.compile's: "inductor" (code generation; the only one that takes `mode`),
    or another, such as a tracing-only one in tests."""

    def __init__(self, layers: list[nn.Module], mode: str = "default", backend=BACKEND):
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
        self.layers = list(layers)
        self.mode = mode
        self.graphs = mode == "reduce-overhead"
        kw = {"mode": None if mode == "default" else mode} if backend == "inductor" else {}
        # One compiled callable per layer; torch.compile caches its graphs by code and guards, so
        # layers of one class share their compiled code.
        self._calls = [torch.compile(layer._call_impl, backend=backend, **kw) for layer in self.layers]

    def _error(self, exc: BaseException, step: int | None) -> CompileError:
        """The typed error for torch.compile's failure `exc` (tracing or code generation)."""
        cause = getattr(exc, "inner_exception", None) or exc  # a backend's failure, as the backend raised it
        first = (str(cause).strip().splitlines() or [""])[0]
        where = f" in training step {step}" if step is not None else ""
        return CompileError(f"torch.compile failed on the compiled layers ({len(self.layers)} layers, mode "
                            f"{self.mode!r}){where}: {type(cause).__name__}: {first}. The weights were not "
                            "updated by that step. Train without compile (the same training, uncompiled), or "
                            "with compile_mode 'default' if CUDA graphs were the problem.")

    @contextlib.contextmanager
    def active(self, step: int | None = None) -> Iterator[None]:
        """The layers run compiled inside the block: a forward and its backward (the backward
        compiles and runs the graphs recorded in the forward). torch.compile's failures in the
        block come out as `CompileError` naming `step`."""
        if self.graphs:
            # A new step: the graphs' outputs of the last one may be overwritten now.
            torch.compiler.cudagraph_mark_step_begin()
        for layer, call in zip(self.layers, self._calls):
            layer._compiled_call_impl = call
        try:
            yield
        except RuntimeError as exc:  # torch.compile's failures are RuntimeErrors
            import torch._dynamo.exc  # only when something failed: importing dynamo takes a while

            if not isinstance(exc, torch._dynamo.exc.TorchDynamoException):
                raise
            raise self._error(exc, step) from exc
        finally:
            for layer in self.layers:
                layer._compiled_call_impl = None


def layer_compiler(cfg: TrainConfig, model: nn.Module, device: torch.device, *,
                   distributed: bool) -> LayerCompiler | None:
    """The trainer's compiled layers from its `compile` and `compile_mode` settings, or None."""
    if cfg.compile is None:
        return None
    if distributed:
        raise TrainingError("compile is not supported under torchrun yet (measured in one process only): "
                            "unset compile for distributed runs")
    if cfg.compile_mode == "reduce-overhead" and torch.device(device).type != "cuda":
        raise TrainingError(f"compile_mode 'reduce-overhead' records CUDA graphs, and the device is {device}: "
                            "use compile_mode 'default', or train on CUDA")
    return LayerCompiler(compiled_layers(model, cfg.compile), cfg.compile_mode, backend=BACKEND)
