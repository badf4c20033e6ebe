"""Reading request fields with a 422 that names the field and what was expected.

JSON bodies give typed values (`json_*`); multipart forms give strings (`form_*`), which are
parsed here with the same limits.
"""
from __future__ import annotations

import math

from ..errors import ModeError
from ..processing.views import Mode, resolve_mode
from .errors import InvalidRequestError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def json_int(body: dict, name: str, *, minimum: int | None = None, default=None, allow_none: bool = True):
    value = body.get(name, default)
    if value is None:
        if not allow_none and name in body:
            raise InvalidRequestError(f"{name} must be an integer, not null", param=name)
        return default
    # JSON has one number type: 16.0 is accepted as 16, 16.5 is not.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{name} must be an integer, got {value!r}", param=name)
    if minimum is not None and value < minimum:
        raise InvalidRequestError(f"{name} must be >= {minimum}, got {value}", param=name)
    return value


def json_number(body: dict, name: str, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequestError(f"{name} must be a finite number, got {value!r}", param=name)
    if low is not None and (value < low or (low_open and value == low)):
        raise InvalidRequestError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}", param=name)
    if high is not None and value > high:
        raise InvalidRequestError(f"{name} must be <= {high}, got {value}", param=name)
    return float(value)


def json_bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be true or false, got {value!r}", param=name)
    return value


def json_str(body: dict, name: str, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidRequestError(f"{name} must be a string, got {type(value).__name__}", param=name)
    return value


def form_int(form, name: str, *, minimum: int | None = None, default=None):
    text = form_str(form, name)
    if text is None or not text.strip():
        return default
    try:
        value = int(text.strip())
    except ValueError:
        raise InvalidRequestError(f"{name} must be an integer, got {text!r}", param=name) from None
    if minimum is not None and value < minimum:
        raise InvalidRequestError(f"{name} must be >= {minimum}, got {value}", param=name)
    return value


def form_number(form, name: str, *, low: float | None = None, high: float | None = None, low_open: bool = False,
                default=None):
    text = form_str(form, name)
    if text is None or not text.strip():
        return default
    try:
        value = float(text.strip())
    except ValueError:
        raise InvalidRequestError(f"{name} must be a number, got {text!r}", param=name) from None
    return json_number({name: value}, name, low=low, high=high, low_open=low_open)


def form_bool(form, name: str, default: bool) -> bool:
    text = form_str(form, name)
    if text is None:
        return default
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise InvalidRequestError(f"{name} must be true or false, got {text!r}", param=name)


def form_str(form, name: str):
    values = form.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequestError(f"{name} was given {len(values)} times", param=name)
    value = values[0]
    if not isinstance(value, str):
        raise InvalidRequestError(f"{name} must be a plain form field, not a file", param=name)
    return value


def mode_field(value, default: str, name: str = "mode") -> Mode:
    """A mode name or `BASE:IMAGE[:crop]`, as the command's --mode takes it."""
    if value is None or (isinstance(value, str) and not value.strip()):
        value = default
    if not isinstance(value, str):
        raise InvalidRequestError(f"{name} must be a string such as 'gundam' or '1024:640:crop'", param=name)
    try:
        return resolve_mode(value.strip())
    except (ModeError, ValueError) as err:
        raise InvalidRequestError(f"{name}: {err}", param=name) from None
