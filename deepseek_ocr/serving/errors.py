"""Errors the server answers with: each carries its HTTP status and an OpenAI-style error body.

Every failure a client can cause maps to one of these (4xx with a reason); anything else is a
bug, answered 500 with a generic message while the traceback goes to the log only, so that no
error body carries a stack trace or a host path (RELIABILITY.md §25).
"""
from __future__ import annotations

from ..errors import (ContextLengthError, DeepseekOCRError, DocumentTooLargeError, EncryptedPDFError,
                      GenerationError, ImageTooLargeError, InvalidImageError, InvalidPDFError, ModeError,
                      PromptError)


class ServingError(DeepseekOCRError):
    """A request the server refuses or cannot complete.

    Attributes:
        status: the HTTP status code.
        kind: the OpenAI error `type` (e.g. "invalid_request_error").
        param: the request field at fault, when there is one.
        headers: extra response headers (e.g. Retry-After).
    """

    status = 500
    kind = "server_error"

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = dict(headers or {})
        self.error_type = type(self).__name__  # the library error's name when it came from one

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.status}}


class MalformedRequestError(ServingError):
    """The body cannot be read as what the endpoint takes: bad JSON, bad base64, a broken
    multipart form, an image or PDF that does not decode."""

    status = 400
    kind = "invalid_request_error"


class InvalidRequestError(ServingError):
    """Well-formed, but a field has a wrong type or value, or a limit is passed (pages, pixels,
    images, tokens)."""

    status = 422
    kind = "invalid_request_error"


class UnauthorizedError(ServingError):
    status = 401
    kind = "authentication_error"


class NotFoundError(ServingError):
    status = 404
    kind = "not_found_error"


class PayloadTooLargeError(ServingError):
    status = 413
    kind = "invalid_request_error"


class QueueFullError(ServingError):
    """More requests in flight than the queue holds; the client should retry later."""

    status = 429
    kind = "rate_limit_error"


class ShuttingDownError(ServingError):
    status = 503
    kind = "server_unavailable"


class RequestTimeoutError(ServingError):
    """The request ran past the server's time limit and was cancelled."""

    status = 504
    kind = "timeout_error"


class GenerationFailedError(ServingError):
    """The engine ended the request with an error (e.g. NaN logits): a fault of this request's
    computation, not of its input; the other requests are unaffected."""

    status = 500
    kind = "generation_error"


# Library errors a request's content can raise, and how they are answered.
_MALFORMED = (InvalidImageError, InvalidPDFError, EncryptedPDFError)
_INVALID = (ImageTooLargeError, DocumentTooLargeError, ModeError, PromptError, ContextLengthError,
            GenerationError)


def from_library_error(err: DeepseekOCRError, param: str | None = None) -> ServingError:
    """The answer for a library error raised by a request's content (an undecodable image is
    400, a valid input past a limit 422). Messages of these errors name no host path: images
    and PDFs reach the library as bytes, described by their size."""
    if isinstance(err, ServingError):
        return err
    if isinstance(err, _MALFORMED):
        out: ServingError = MalformedRequestError(str(err), param=param)
    elif isinstance(err, _INVALID):
        out = InvalidRequestError(str(err), param=param)
    else:
        out = InvalidRequestError(f"{type(err).__name__}: {err}", param=param)
    out.error_type = type(err).__name__
    return out
