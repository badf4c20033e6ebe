"""What every kernel module needs: is Triton here, is it interpreting, may these tensors use it.

Triton decides at `@triton.jit` time whether a kernel is compiled or interpreted
(`TRITON_INTERPRET=1`), so that variable must be set before `deepseek_ocr` is imported; the
test suite's conftest does so when no GPU is present. The library itself only sends CUDA
tensors to Triton; the interpreter on CPU tensors is for tests (see `launchable`).
"""
from __future__ import annotations

import contextlib
import os

import torch

try:
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401
    HAVE_TRITON = True
except ImportError:  # macOS, Windows, or a CPU install without triton: the reference path runs
    HAVE_TRITON = False


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_cpu_interpreter = False  # see `triton_on_cpu`


@contextlib.contextmanager
def triton_on_cpu(flag: bool = True):
    """Let CPU tensors take the Triton path (through the interpreter) inside this block.

    Off by default: interpreted kernels are orders of magnitude slower than the reference, so
    the library never chooses them on its own; the kernel tests opt in.
    """
    global _cpu_interpreter
    old, _cpu_interpreter = _cpu_interpreter, flag
    try:
        yield
    finally:
        _cpu_interpreter = old


def launchable(*tensors: torch.Tensor) -> bool:
    """True when a Triton kernel can run on these tensors: all on CUDA (compiled), or all on
    the CPU inside `triton_on_cpu()` with `TRITON_INTERPRET=1`."""
    if not HAVE_TRITON:
        return False
    if all(t.is_cuda for t in tensors):
        return not interpreting()
    return _cpu_interpreter and interpreting() and all(t.device.type == "cpu" for t in tensors)
