"""deepseek_ocr: a pure-PyTorch DeepSeek-OCR that loads the official checkpoint.

    from deepseek_ocr import DeepseekOCR
    model = DeepseekOCR.from_pretrained("deepseek-ai/DeepSeek-OCR")
    result = model.generate("page.png", prompt="<image>\\nFree OCR.", mode="gundam")

The public names below are imported on first use (PEP 562), not with the package: the
`deepseek-ocr` command lives in this package, and `deepseek-ocr --help` or a mistyped argument
should answer at once instead of waiting seconds for torch to import.
"""
import importlib

from .errors import (ConfigError, ContextLengthError, DeepseekOCRError, GenerationError,
                     ImageError, ImageTooLargeError, InvalidImageError, ModeError, PromptError,
                     TokenizerError, WeightsError)

__version__ = "0.1.0"

# public name -> the module defining it (relative to this package)
_LAZY = {
    "DeepseekOCR": ".ocr",
    "ModelConfig": ".config",
    "GenerationResult": ".generation.generate",
    "PreparedInputs": ".processing.prompt",
    "MODES": ".processing.views",
    "Mode": ".processing.views",
    "make_random_checkpoint": ".weights.random",
}

__all__ = [
    "DeepseekOCR", "ModelConfig", "Mode", "MODES", "PreparedInputs", "GenerationResult",
    "make_random_checkpoint", "DeepseekOCRError", "ConfigError", "WeightsError", "TokenizerError",
    "ImageError", "InvalidImageError", "ImageTooLargeError", "ModeError", "PromptError",
    "ContextLengthError", "GenerationError",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deepseek_ocr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
