"""deepseek_ocr: a pure-PyTorch DeepSeek-OCR that loads the official checkpoint.

    from deepseek_ocr import DeepseekOCR
    model = DeepseekOCR.from_pretrained("deepseek-ai/DeepSeek-OCR")
    result = model.generate("page.png", prompt="<image>\\nFree OCR.", mode="gundam")
"""
from .config import ModelConfig
from .errors import (ConfigError, ContextLengthError, DeepseekOCRError, GenerationError,
                     ImageError, ImageTooLargeError, InvalidImageError, PromptError, TokenizerError,
                     WeightsError)
from .generation.generate import GenerationResult
from .ocr import DeepseekOCR
from .processing.prompt import PreparedInputs
from .processing.views import MODES, Mode
from .weights.random import make_random_checkpoint

__version__ = "0.1.0"

__all__ = [
    "DeepseekOCR", "ModelConfig", "Mode", "MODES", "PreparedInputs", "GenerationResult",
    "make_random_checkpoint", "DeepseekOCRError", "ConfigError", "WeightsError", "TokenizerError",
    "ImageError", "InvalidImageError", "ImageTooLargeError", "PromptError", "ContextLengthError",
    "GenerationError",
]
