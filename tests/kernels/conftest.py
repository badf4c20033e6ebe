"""Kernel tests drive the Triton kernels on CPU tensors through the interpreter (no GPU here)."""
import pytest

from deepseek_ocr.kernels import triton_on_cpu


@pytest.fixture(autouse=True)
def _triton_on_cpu():
    with triton_on_cpu():
        yield
