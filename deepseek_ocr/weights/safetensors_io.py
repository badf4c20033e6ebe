"""A validating reader for `.safetensors` checkpoint files.

Layout of the format: an 8-byte little-endian unsigned header length N, then N bytes of
UTF-8 JSON mapping each tensor name to ``{"dtype", "shape", "data_offsets": [start, end]}``
(offsets relative to the data buffer that follows the header), plus an optional
``"__metadata__"`` object of string to string. The data buffer runs to the end of the file.

`read_header` checks every claim the header makes against the file's real size before anything
is read or allocated, so a hostile or damaged file fails with a `WeightsError` naming the file
instead of an out-of-memory kill or a cryptic error deep inside the model. `load_tensors` then
reads the validated byte ranges one tensor at a time into memory the tensor owns (no memory
map, so a load holds one copy of the weights, not the file's pages on top).

Pickle checkpoints are refused outright (`refuse_pickles`): unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from deepseek_ocr.errors import WeightsError

logger = logging.getLogger(__name__)

# A real header is a few hundred KiB even for thousands of tensors; refusing anything larger
# than this keeps a corrupt length field from making us read gigabytes of "JSON".
MAX_HEADER_BYTES = 100 * 1024 * 1024

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


_DTYPE_NAMES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
    "I32": "int32", "U32": "uint32", "I64": "int64", "U64": "uint64",
    "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
    "C64": "complex64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
}
# The format's dtype names -> torch dtypes. Types this torch build lacks are left out, so such
# a file is refused as "unknown dtype" instead of failing at import time.
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, attr) for name, attr in _DTYPE_NAMES.items() if hasattr(torch, attr)}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header declares it (already validated)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]  # relative to the start of the data buffer
    data_start: int  # absolute file offset of the data buffer, for `file_range`

    @property
    def nbytes(self) -> int:
        return self.data_offsets[1] - self.data_offsets[0]

    @property
    def file_range(self) -> tuple[int, int]:
        """Absolute byte range ``[start, end)`` of this tensor inside the file."""
        return (self.data_start + self.data_offsets[0], self.data_start + self.data_offsets[1])


@dataclass(frozen=True)
class SafetensorsHeader:
    """The validated header of one `.safetensors` file."""

    path: Path
    header_size: int
    file_size: int
    tensors: dict[str, TensorEntry] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def data_start(self) -> int:
        return 8 + self.header_size


def _fail(path: Path, what: str) -> WeightsError:
    return WeightsError(f"{path}: not a valid safetensors file: {what}")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads silently keeps the last of two equal keys; a header naming a tensor twice is
    # ambiguous (which bytes are the tensor?), so it is refused.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _is_int(value: Any) -> bool:
    # bool is a subclass of int in Python; `true` is not a valid dimension or offset.
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_entry(path: Path, name: str, raw: Any, data_start: int) -> TensorEntry:
    if not isinstance(raw, dict):
        raise _fail(path, f"entry for tensor {name!r} is {type(raw).__name__}, expected an object")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in raw:
            raise _fail(path, f"tensor {name!r} lacks {key!r}")
    dtype_name = raw["dtype"]
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise _fail(path, f"tensor {name!r} has unknown dtype {dtype_name!r} "
                          f"(known: {', '.join(sorted(DTYPES))})")
    shape = raw["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _fail(path, f"tensor {name!r} has shape {shape!r}, "
                          "expected a list of non-negative ints")
    offsets = raw["data_offsets"]
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise _fail(path, f"tensor {name!r} has data_offsets {offsets!r}, "
                          "expected [start, end] with 0 <= start <= end")
    dtype = DTYPES[dtype_name]
    # Python ints do not overflow, so a shape of huge dimensions cannot wrap around to a
    # small, plausible byte count here.
    expected = math.prod(shape) * dtype.itemsize
    actual = offsets[1] - offsets[0]
    if actual != expected:
        raise _fail(path, f"tensor {name!r} ({dtype_name} {shape}) needs {expected} bytes "
                          f"but data_offsets {offsets} span {actual}")
    return TensorEntry(name, dtype, tuple(shape), (offsets[0], offsets[1]), data_start)


def _check_layout(path: Path, entries: Iterable[TensorEntry], buffer_size: int) -> None:
    """Tensors must tile the data buffer exactly: no overlap, no hole, nothing past its end.

    Overlaps would let two tensors alias the same bytes; holes and trailing bytes are
    places to hide data and signal a damaged file (the official library refuses both).
    """
    cursor = 0
    previous = None
    # Sorting by (start, end) puts empty tensors before a non-empty one at the same offset,
    # so they are accepted without being taken for an overlap.
    for entry in sorted(entries, key=lambda e: e.data_offsets):
        start, end = entry.data_offsets
        if end > buffer_size:
            raise _fail(path, f"tensor {entry.name!r} ends at data offset {end}, past the end of "
                              f"the data buffer ({buffer_size} bytes; file truncated?)")
        if start < cursor:
            raise _fail(path, f"tensor {entry.name!r} at {list(entry.data_offsets)} overlaps "
                              f"tensor {previous!r}, which ends at {cursor}")
        if start > cursor:
            raise _fail(path, f"hole in the data buffer: bytes {cursor}..{start} before tensor "
                              f"{entry.name!r} belong to no tensor")
        cursor, previous = end, entry.name
    if cursor != buffer_size:
        raise _fail(path, f"data buffer holds {buffer_size} bytes but the tensors cover only "
                          f"{cursor} (trailing bytes belong to no tensor)")


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate the header of `path`; read no tensor data.

    Raises `WeightsError` naming the file for every inconsistency between the header and the
    file. Only the header bytes are read, after their length is checked against the file size
    and `MAX_HEADER_BYTES`, so a declared size can never cause a large allocation.
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        if not path.is_file():
            raise _fail(path, "not a regular file")
        with path.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise _fail(path, f"file is {file_size} bytes, "
                                  "shorter than the 8-byte header length")
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > MAX_HEADER_BYTES:
                raise _fail(path, f"header length {header_size} exceeds "
                                  f"the {MAX_HEADER_BYTES}-byte cap")
            if 8 + header_size > file_size:
                raise _fail(path, f"header length {header_size} runs past the end of the "
                                  f"{file_size}-byte file (file truncated?)")
            raw = fh.read(header_size)
    except FileNotFoundError as err:
        raise WeightsError(f"{path}: safetensors file not found") from err
    except OSError as err:
        raise WeightsError(f"{path}: cannot read safetensors file: {err}") from err
    if len(raw) != header_size:  # the file shrank between stat() and read()
        raise _fail(path, f"header cut short: read {len(raw)} of {header_size} bytes")

    try:
        text = raw.decode("utf-8")
        parsed = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except UnicodeDecodeError as err:
        raise _fail(path, f"header is not UTF-8 ({err})") from err
    # ValueError covers JSONDecodeError and the duplicate-key check; RecursionError is what
    # a header of a million nested brackets produces, and it must not escape untyped.
    except (ValueError, RecursionError) as err:
        raise _fail(path, f"header is not valid JSON ({type(err).__name__}: {err})") from err
    if not isinstance(parsed, dict):
        raise _fail(path, f"header is a JSON {type(parsed).__name__}, expected an object")

    metadata = parsed.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise _fail(path, "__metadata__ must be an object mapping strings to strings")

    data_start = 8 + header_size
    tensors = {name: _parse_entry(path, name, entry, data_start) for name, entry in parsed.items()}
    _check_layout(path, tensors.values(), file_size - data_start)
    logger.debug("%s: header ok, %d tensors, %d data bytes",
                 path, len(tensors), file_size - data_start)
    return SafetensorsHeader(path, header_size, file_size, tensors, dict(metadata))


def load_tensors(
    path: str | os.PathLike[str],
    names: Iterable[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    header: SafetensorsHeader | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` pairs from `path`, one tensor materialised at a time.

    The header is validated now, when this is called, not at the first `next()` (or `header`,
    from an earlier `read_header` of the same file, is reused). `names` selects tensors, in
    the given order; asking for a name the file lacks is a `WeightsError` listing them all.
    Default order is the order in the file. Errors raised by the `safetensors` library while
    iterating become `WeightsError` naming the file.
    """
    path = Path(path)
    if header is None:
        header = read_header(path)
    if names is None:
        wanted = sorted(header.tensors, key=lambda n: header.tensors[n].data_offsets)
    else:
        wanted = list(names)
        missing = [n for n in wanted if n not in header.tensors]
        if missing:
            raise WeightsError(f"{path}: no tensor named {', '.join(map(repr, missing))}")
    return _iter_tensors(path, header, wanted, str(device))


def _iter_tensors(path: Path, header: SafetensorsHeader, wanted: list[str],
                  device: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The lazy half of `load_tensors`: read tensors on demand into memory they own.

    Plain reads into a fresh tensor rather than the `safetensors` library's memory map: a map
    keeps every page it touched resident in the process, so loading a checkpoint would peak at
    the file's size on top of the copies the model keeps (measured: 2x the file in ru_maxrss).
    Reading through the validated header costs one copy and no more.
    """
    try:
        handle = open(path, "rb", buffering=0)
    except OSError as err:
        raise WeightsError(f"{path}: cannot open the file: {err}") from err
    # The yield stays outside the try blocks so an exception thrown into this generator by its
    # consumer is never mistaken for, or rewrapped as, a file error.
    with handle:
        for name in wanted:
            entry = header.tensors[name]
            tensor = torch.empty(entry.shape, dtype=entry.dtype)
            start, end = entry.file_range
            try:
                _read_exact(handle, start, end - start, tensor)
            except OSError as err:
                raise WeightsError(f"{path}: could not read tensor {name!r}: {err}") from err
            if device != "cpu":
                tensor = tensor.to(device)
            yield name, tensor


def _read_exact(handle, offset: int, size: int, tensor: torch.Tensor) -> None:
    """Fill `tensor`'s bytes from `offset`; a short read (file changed or truncated) is an error."""
    if size == 0:
        return
    view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
    if len(view) != size:
        raise OSError(f"header declares {size} bytes, the tensor holds {len(view)}")
    handle.seek(offset)
    done = 0
    while done < size:
        n = handle.readinto(view[done:])
        if not n:
            raise OSError(f"file ended after {done} of {size} bytes (changed while loading?)")
        done += n


def refuse_pickles(folder: str | os.PathLike[str]) -> None:
    """Raise `WeightsError` if `folder` offers only pickle checkpoints and no `.safetensors`.

    Pickle files are never opened: unpickling executes code chosen by whoever wrote the file.
    Pickles next to `.safetensors` files are ignored (with a log message), since many model
    repositories ship both.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: checkpoint folder not found")
    pickles = sorted(p.name for p in folder.iterdir()
                     if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    has_safetensors = any(p.suffix == ".safetensors" for p in folder.iterdir() if p.is_file())
    if pickles and not has_safetensors:
        raise WeightsError(
            f"{folder}: holds only pickle checkpoint files ({', '.join(pickles)}) and no "
            ".safetensors file. deepseek_ocr never unpickles weights, because unpickling can run "
            "arbitrary code. Convert them once, on a machine and from a source you trust, by "
            "loading them with PyTorch there and writing them out with "
            "safetensors.torch.save_file(state_dict, 'model.safetensors').")
    if pickles:
        logger.info("%s: ignoring pickle files %s; using the .safetensors files", folder, pickles)


def safetensors_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The `.safetensors` files of a checkpoint folder, sorted by name.

    Refuses pickle-only folders (see `refuse_pickles`) and folders with no weights at all.
    """
    refuse_pickles(folder)
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix == ".safetensors")
    if not files:
        raise WeightsError(f"{folder}: no .safetensors weight files found")
    return files
