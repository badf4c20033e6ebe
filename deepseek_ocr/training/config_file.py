"""Reading a training configuration file (`.json` or `.toml`) into a flat table of settings, and
the suggestion offered for a misspelt key: the file side of config.py's `TrainConfig`."""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Mapping

from .errors import TrainConfigError


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TrainConfigError(f"{path}: cannot read the configuration file ({exc.strerror or exc})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib  # Python >= 3.11
            return tomllib.loads(raw.decode("utf-8"))
        if suffix == ".json":
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise TrainConfigError(f"{path}: expected a JSON object at the top level")
            return data
    except ImportError:
        raise TrainConfigError(f"{path}: TOML needs Python 3.11 or newer (tomllib); use a .json file") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        if isinstance(exc, TrainConfigError):
            raise
        raise TrainConfigError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from None
    raise TrainConfigError(f"{path}: unknown configuration format {suffix!r} (use .json or .toml)")


def flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """Lift the keys of TOML tables (sections) to the top level; a known field that is itself a
    mapping does not exist, so every mapping value is a section."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(flatten(value))
        else:
            out[key] = value
    return out


def suggest(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
