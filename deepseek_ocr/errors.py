"""The package's exception hierarchy.

Every error a user can provoke with bad input derives from `DeepseekOCRError`, so one
`except DeepseekOCRError` catches them all, while the subclasses say what kind of input was
wrong. Messages name the file or argument and the expected and found values.
"""


class DeepseekOCRError(Exception):
    """Base class of every error raised on purpose by deepseek_ocr."""


class ConfigError(DeepseekOCRError, ValueError):
    """config.json is missing, malformed, or describes a model this package does not implement."""


class WeightsError(DeepseekOCRError):
    """A checkpoint file is malformed, or its tensors do not match the configuration."""


class CheckpointNotFoundError(WeightsError):
    """No checkpoint at the given folder, or a hub repo id that is neither cached nor reachable."""


class TokenizerError(DeepseekOCRError):
    """tokenizer.json is missing or malformed, or lacks a token the model needs."""


class ImageError(DeepseekOCRError):
    """Base class for problems with an input image."""


class InvalidImageError(ImageError, ValueError):
    """The file is not a decodable image (empty, random bytes, truncated, unsupported)."""


class ImageTooLargeError(ImageError, ValueError):
    """The image has more pixels than allowed; raised before its pixels are decoded."""


class ModeError(DeepseekOCRError, ValueError):
    """An unknown resolution mode name, or a `Mode` / `BASE:IMAGE[:crop]` with invalid sizes."""


class PromptError(DeepseekOCRError, ValueError):
    """The prompt does not fit the inputs (e.g. no `<image>` for an image, or two of them)."""


class ContextLengthError(DeepseekOCRError, ValueError):
    """The prompt plus the requested new tokens do not fit the model's context."""


class GenerationError(DeepseekOCRError, ValueError):
    """Bad generation arguments, or a numerical fault (NaN/Inf logits) in one sequence."""


class DocumentError(DeepseekOCRError):
    """Base class for problems with an input document (a PDF, or a path that holds none)."""


class InvalidPDFError(DocumentError, ValueError):
    """The file is not a readable PDF (corrupt, not a PDF at all, or a page that fails to render)."""


class EncryptedPDFError(DocumentError, ValueError):
    """The PDF is encrypted and no (correct) password was given."""


class DocumentTooLargeError(DocumentError, ValueError):
    """The document has more pages than allowed; raised before any page is rendered."""


class InputNotFoundError(DocumentError, FileNotFoundError):
    """A path, folder or glob given as input matches no readable file."""


class KernelError(DeepseekOCRError, RuntimeError):
    """A fast kernel was asked for inputs it cannot handle (shape, dtype, device)."""
