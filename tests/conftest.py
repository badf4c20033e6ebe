"""Shared fixtures: the golden parity data and the 3-layer random checkpoint it was made on.

`../shared` (beside the repository) holds the recorded official outputs. Outside this
project's CI it may be absent: then the tests that need it skip, saying why. In CI (`CI` set)
its absence is an error, never a skip.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Triton picks compiled or interpreted kernels when `@triton.jit` runs, i.e. when deepseek_ocr is
# first imported: without a GPU the kernel tests run through the interpreter on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DEEPSEEK_OCR_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "parity"
SMALL_ARGS = ["--layers", "3", "--experts", "8", "--topk", "6"]


def need_shared() -> Path:
    if not (PARITY / "golden_small.safetensors").is_file():
        msg = f"the shared parity data is not at {SHARED} (set DEEPSEEK_OCR_SHARED to its folder)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI must run with ../shared present")
        pytest.skip(msg)
    return SHARED


def verify_checksums(folder: Path, reference: Path) -> None:
    """Every tensor's float64 sum and abs-sum must equal the recorded ones.

    Equal to 1e-12 relative: the same tensors summed on another CPU may differ in the last bit
    of a float64 (summation order), while a different random draw changes them by far more.
    """
    from safetensors import safe_open
    expected = json.loads(reference.read_text())
    with safe_open(str(folder / "model-00001-of-000001.safetensors"), "pt") as f:
        names = set(f.keys())
        assert names == set(expected), "the checkpoint's tensor names differ from the recorded ones"
        for name in sorted(names):
            t = f.get_tensor(name).double()
            got = [float(t.sum()), float(t.abs().sum())]
            assert got == pytest.approx(expected[name], rel=1e-12, abs=1e-9), (f"{name}: checksum {got} != recorded {expected[name]}: this "
                                           "torch draws different random numbers (use torch 2.13.0)")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return need_shared()


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """The golden run's checkpoint, made with the shared generator and checked against its sums.

    Set DEEPSEEK_OCR_SMALL_CKPT to a folder made the same way to skip the ~30 s rebuild
    (its checksums are still verified).
    """
    shared = need_shared()
    reuse = os.environ.get("DEEPSEEK_OCR_SMALL_CKPT")
    if reuse and (Path(reuse) / "config.json").is_file():
        folder = Path(reuse)
    else:
        folder = tmp_path_factory.mktemp("small_ckpt")
        subprocess.run([sys.executable, str(shared / "parity" / "make_checkpoint.py"), str(folder),
                        *SMALL_ARGS], check=True, capture_output=True)
    verify_checksums(folder, shared / "parity" / "checksums_small.json")
    return folder


TEST_DEVICE = os.environ.get("DEEPSEEK_OCR_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def small_model(small_checkpoint):
    """The 3-layer checkpoint loaded in float32 (as the golden run was), on the CPU unless
    DEEPSEEK_OCR_TEST_DEVICE names another device (e.g. `cuda` on the GPU machine)."""
    from deepseek_ocr import DeepseekOCR
    if TEST_DEVICE.startswith("cuda"):
        # float32 parity needs true float32 matmuls and convolutions (TF32 keeps 10 mantissa bits).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return DeepseekOCR.from_pretrained(small_checkpoint, device=TEST_DEVICE, dtype=torch.float32)


@pytest.fixture(scope="session")
def golden(shared_dir):
    from safetensors import safe_open
    f = safe_open(str(shared_dir / "parity" / "golden_small.safetensors"), "pt")
    return f, json.loads(f.metadata()["cases"])


@pytest.fixture(scope="session")
def golden_stages(shared_dir):
    from safetensors import safe_open
    return safe_open(str(shared_dir / "parity" / "golden_stages.safetensors"), "pt")


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc: nothing to hand back this way
        return None


_LIBC = _glibc()
_MALLOC_TRIM = _LIBC.malloc_trim if _LIBC is not None else None
if _LIBC is not None:
    # At most two malloc arenas: the serving tests start dozens of threads (engines, preparing
    # pools, event loops), each of which would otherwise get an arena of its own that keeps
    # its fragments for the rest of the run (M_ARENA_MAX is -8 in glibc's malloc.h).
    _LIBC.mallopt(-8, 2)
    # Blocks of 4 MB and more straight from the kernel and back to it when freed (M_MMAP_THRESHOLD
    # is -3): glibc otherwise raises this threshold up to 32 MB as such blocks are freed, and the
    # freed tensors of one test then sit in the heap under the next one's. Measured on
    # test_parity.py + test_training_parity.py: peak RSS 6.40-6.51 GB -> 6.12 GB.
    _LIBC.mallopt(-3, 4 << 20)
_RSS_LOG = os.environ.get("DEEPSEEK_OCR_TEST_RSS_LOG")


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: no current value
        return float("nan")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """The whole suite runs in one process, so what a test file leaves resident sits under every
    later one. After each test, once pytest has let go of its fixture values (it drops them only
    after the teardown hooks, so a fixture cannot do this):
    - at the end of a test file, collect garbage: a model and its engine refer to each other, so
      a module's model was freed only by a later collection, and two files' models (1.7 GB
      each) were resident together;
    - hand glibc's free heap pages back to the OS (~10 ms): it keeps what tensors under its
      mmap threshold (32 MB at most) leave behind, 0.9 GB after encoding the parity images.
    With DEEPSEEK_OCR_TEST_RSS_LOG=FILE, each test then appends the process's peak RSS so far
    and its RSS now (MB) to FILE: the peak says where the suite's maximum is reached, the
    current value what stays resident."""
    yield
    if nextitem is None or getattr(nextitem, "module", None) is not getattr(item, "module", None):
        gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
    if _RSS_LOG:
        import resource
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open(_RSS_LOG, "a", encoding="utf-8") as log:
            log.write(f"{peak_mb:.0f} {_current_rss_mb():.0f} {item.nodeid}\n")


@pytest.fixture(autouse=True)
def _triton_on_cpu_in_kernel_tests(request):
    """Tests under tests/kernels drive the Triton kernels on CPU tensors through the interpreter
    (no GPU here); elsewhere CPU tensors take the reference path, as in the library."""
    if request.node.path.parent.name != "kernels":
        yield
        return
    from deepseek_ocr.kernels import triton_on_cpu
    with triton_on_cpu():
        yield


# The vision-tower stages that tests/test_parity.py compares with the recorded ones, per case.
# The session's encoding cache keeps these taps only: all of them (every SAM block of every
# view) are 1.2 GB over the five parity images, and they stayed resident for the whole run.
PARITY_STAGES = {
    "tiny_receipt": ["global.sam_block0", "global.sam_block2", "global.sam_neck", "global.sam_out",
                     "global.clip_out", "global.projector_out"],
    "gundam_tall": ["global.sam_out", "global.clip_out", "global.projector_out",
                    "crops.sam_out", "crops.clip_out", "crops.projector_out"],
}
_KEPT_TAPS = frozenset(stage for stages in PARITY_STAGES.values() for stage in stages)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For the serving modules (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): the
    server runs its own threads (engine, preparation, event loop) beside the clients on a
    2-core machine, and torch's two intra-op threads on top oversubscribe the cores (a decode
    step measured 15x slower). Restored for the modules after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def encoded_views(small_model, shared_dir):
    """`encode(image, mode) -> (vision_rows, taps)`, computed once per (image, mode) for the
    whole session: the parity images are the expensive part of the suite, and the inference
    and training parity tests share them. `image` is relative to the shared folder; `taps`
    holds the stages of `PARITY_STAGES` (of any case)."""
    cache: dict = {}

    def encode(image: str, mode: str):
        key = (image, mode)
        if key not in cache:
            inp = small_model.prepare(shared_dir / image, "<image>", mode=mode)
            taps: dict = {}
            dev = small_model.device
            with torch.inference_mode():
                tiles = tuple(inp.images_spatial_crop[0].tolist())
                rows = small_model.model.vision(inp.global_view.to(dev), [inp.crops.to(dev)], [tiles], taps)[0]
            cache[key] = (rows, {name: t for name, t in taps.items() if name in _KEPT_TAPS})
        return cache[key]
    return encode
