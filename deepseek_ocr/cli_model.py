"""The model side of the `deepseek-ocr` command: the device check, the shared random-weight
demo checkpoint (`--model random`, examples/quickstart.py) and loading with messages that say
what to do. Split from cli.py, which stays torch-free until its arguments are checked; every
function here imports torch when called.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import CheckpointNotFoundError, DeepseekOCRError, WeightsError

DEFAULT_REPO = "deepseek-ai/DeepSeek-OCR"  # weights.loading.DEFAULT_REPO, which would import torch
RANDOM_MODEL = "random"
RANDOM_SIZE = {"layers": 2, "experts": 4, "topk": 2}
RANDOM_SIZE_TEXT = "1.6 GB"  # bf16, full vision tower, 2-layer decoder (1,584,775,680 bytes of tensors)


def device_problem(requested: str | None) -> str | None:
    """Why torch here cannot run on `requested` (None: it can, or nothing was asked for)."""
    if requested is None:
        return None
    import torch
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError) as err:
        return f"--device {requested!r}: {err}"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support (a CPU-only build)" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            return f"--device {requested}: CUDA is not available: {why}; use --device cpu or install a CUDA build of torch"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"--device {requested}: there are {torch.cuda.device_count()} CUDA device(s)"
    elif device.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {requested}: MPS is not available"
    elif device.type not in ("cpu", "cuda", "mps"):
        return f"--device {requested}: only cpu, cuda[:N] and mps are supported"
    return None


def random_model_dir() -> Path:
    """Where `--model random` (and examples/quickstart.py) keep the random checkpoint:
    `$DEEPSEEK_OCR_CACHE/random-demo`, by default `~/.cache/deepseek_ocr/random-demo`."""
    root = os.environ.get("DEEPSEEK_OCR_CACHE") or os.path.join("~", ".cache", "deepseek_ocr")
    return Path(root).expanduser() / "random-demo"


def ensure_random_model(err=sys.stderr) -> Path:
    """Build the random-weight checkpoint once; later runs (and other ranks) reuse it.

    Built in a temporary sibling folder and renamed into place, so a run killed while building
    leaves no half checkpoint, and two processes building at once both end with a whole one.
    """
    target = random_model_dir()
    if (target / "config.json").is_file():
        return target
    import torch
    from .pipeline.writer import current_umask
    from .weights.random import make_random_checkpoint
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"building a random-weight checkpoint in {target} (once; {RANDOM_SIZE_TEXT}) ...", file=err)
    tmp = Path(tempfile.mkdtemp(prefix=".random-demo-", dir=target.parent))
    try:
        make_random_checkpoint(tmp, dtype=torch.bfloat16, **RANDOM_SIZE)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide it from other users
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process winning the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def weights_help(model: str, err: Exception) -> str:
    """The message for a model that cannot be loaded; says once how to get the weights."""
    lines = [f"error: cannot load the model {model!r}: {err}"]
    if isinstance(err, CheckpointNotFoundError):
        if "hf download" not in str(err):
            lines.append(f"  To download the official weights (6.7 GB) once: hf download {DEFAULT_REPO}")
        lines.append("  Or pass a local checkpoint folder with --model DIR.")
        lines.append("  To try the whole pipeline without weights: --model random (random weights: the "
                     "text is gibberish).")
    return "\n".join(lines)


def load_for_command(model: str, *, device: str | None, dtype: str | None, max_pixels: int, err=sys.stderr):
    """The loaded `DeepseekOCR`, or None after printing why it could not be loaded.

    Args:
        model: `--model` (a folder, a hub repo id, or "random").
        device, dtype: as `DeepseekOCR.from_pretrained` takes them.
        max_pixels: the image size limit the model's `prepare` applies.
        err: where the message goes.
    """
    from .ocr import DeepseekOCR
    try:
        path = str(ensure_random_model(err)) if model == RANDOM_MODEL else model
        ocr = DeepseekOCR.from_pretrained(path, device=device, dtype=dtype)
    except WeightsError as e:
        print(weights_help(model, e), file=err)
        return None
    except (DeepseekOCRError, ValueError, OSError) as e:
        print(f"error: cannot load the model {model!r}: {e}", file=err)
        return None
    ocr.max_pixels = max_pixels
    return ocr
