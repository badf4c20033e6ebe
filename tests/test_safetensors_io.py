"""Tests of the validating safetensors reader (RELIABILITY.md cases 1 and 3).

Every malformed file is written byte by byte here, so each test states exactly which rule of
the format it breaks.
"""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deepseek_ocr.errors import DeepseekOCRError, WeightsError
from deepseek_ocr.weights import safetensors_io as sio


def write_raw(path: Path, header: dict | bytes, data: bytes = b"",
              declared_len: int | None = None) -> Path:
    """Write a safetensors-shaped file: length prefix, header bytes, data buffer."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    length = len(blob) if declared_len is None else declared_len
    path.write_bytes(struct.pack("<Q", length) + blob + data)
    return path


def assert_refused(path: Path, *fragments: str) -> WeightsError:
    """read_header must raise WeightsError naming the file (and saying what is wrong)."""
    with pytest.raises(WeightsError) as info:
        sio.read_header(path)
    message = str(info.value)
    assert path.name in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def f32(offsets: list[int], shape: list[int]) -> dict:
    return {"dtype": "F32", "shape": shape, "data_offsets": offsets}


# --- malformed files ------------------------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    assert_refused(tmp_path / "absent.safetensors", "not found")


def test_shorter_than_length_prefix(tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    assert_refused(path, "shorter than the 8-byte")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    assert_refused(path)


def test_truncated_data(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    save_file({"a": torch.arange(100, dtype=torch.float32)}, str(path))
    blob = path.read_bytes()
    path.write_bytes(blob[:-10])
    assert_refused(path, "past the end of the data buffer")


def test_header_length_past_eof(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "long.safetensors", b"{}", declared_len=1000)
    assert_refused(path, "past the end")


def test_header_length_absurd(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "huge_header.safetensors", b"{}", declared_len=2**60)
    assert_refused(path, "cap")


@pytest.mark.parametrize("blob, why", [
    (b"this is not json", "JSON"),
    (b"\xff\xfe\xfd{}", "UTF-8"),
    (b"[1, 2, 3]", "expected an object"),
    (b"[" * 200_000 + b"]" * 200_000, "JSON"),
    (b'{"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, '
     b'"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}', "duplicate"),
])
def test_header_not_a_json_object(tmp_path: Path, blob: bytes, why: str) -> None:
    path = write_raw(tmp_path / "garbage.safetensors", blob)
    assert_refused(path, why)


def test_unknown_dtype(tmp_path: Path) -> None:
    header = {"w": {"dtype": "X99", "shape": [2], "data_offsets": [0, 8]}}
    path = write_raw(tmp_path / "dtype.safetensors", header, bytes(8))
    assert_refused(path, "X99")


@pytest.mark.parametrize("entry, why", [
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "shape"),
    ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "shape"),
    ({"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}, "shape"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "data_offsets"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0]}, "data_offsets"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]}, "data_offsets"),
    ({"dtype": "F32", "shape": [2]}, "data_offsets"),
    ([1, 2], "expected an object"),
])
def test_bad_entry_fields(tmp_path: Path, entry: object, why: str) -> None:
    path = write_raw(tmp_path / "entry.safetensors", {"w": entry}, bytes(8))
    assert_refused(path, why)


def test_bad_metadata(tmp_path: Path) -> None:
    header = {"__metadata__": {"format": 3}, "w": f32([0, 4], [1])}
    path = write_raw(tmp_path / "meta.safetensors", header, bytes(4))
    assert_refused(path, "__metadata__")


def test_shape_length_mismatch(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "mismatch.safetensors", {"w": f32([0, 8], [3])}, bytes(8))
    assert_refused(path, "needs 12 bytes")


def test_overlapping_offsets(tmp_path: Path) -> None:
    header = {"a": f32([0, 8], [2]), "b": f32([4, 12], [2])}
    path = write_raw(tmp_path / "overlap.safetensors", header, bytes(12))
    assert_refused(path, "overlaps")


def test_out_of_bounds_offsets(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "oob.safetensors", {"a": f32([0, 8], [2])}, bytes(4))
    assert_refused(path, "past the end of the data buffer")


def test_hole_in_buffer(tmp_path: Path) -> None:
    header = {"a": f32([0, 4], [1]), "b": f32([8, 12], [1])}
    path = write_raw(tmp_path / "hole.safetensors", header, bytes(12))
    assert_refused(path, "hole")


def test_trailing_bytes(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "trailing.safetensors", {"a": f32([0, 4], [1])}, bytes(9))
    assert_refused(path, "trailing")


def test_terabyte_tensor_fails_fast_without_allocating(tmp_path: Path) -> None:
    terabyte = 2**40
    header = {"giant": {"dtype": "U8", "shape": [terabyte], "data_offsets": [0, terabyte]}}
    path = write_raw(tmp_path / "terabyte.safetensors", header, bytes(16))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(WeightsError) as info:
            list(sio.load_tensors(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 5.0
    assert peak < 16 * 2**20, f"peak Python allocation {peak} bytes"
    assert path.name in str(info.value)
    assert isinstance(info.value, DeepseekOCRError)


def test_library_error_is_rewrapped(tmp_path: Path) -> None:
    """A file that changes after validation: the library's own error becomes a WeightsError."""
    path = tmp_path / "swapped.safetensors"
    save_file({"a": torch.ones(4)}, str(path))
    header = sio.read_header(path)
    path.write_bytes(struct.pack("<Q", 5) + b"nope!")
    with pytest.raises(WeightsError) as info:
        list(sio.load_tensors(path, header=header))
    assert path.name in str(info.value)
    assert info.value.__cause__ is not None


# --- valid files ----------------------------------------------------------------------------

def sample_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, generator=gen)
    return {
        "bf16": base.to(torch.bfloat16),
        "f16": base.to(torch.float16),
        "f32": base,
        "f64": base.double() / 3,
        "i64": torch.arange(-6, 6, dtype=torch.int64).reshape(3, 4) * 10**12,
        "i32": torch.arange(-8, 8, dtype=torch.int32),
        "i16": torch.tensor([-32768, 0, 32767], dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.arange(256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }


def test_round_trip_several_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    original = sample_tensors()
    save_file(original, str(path), metadata={"format": "pt"})

    header = sio.read_header(path)
    assert header.metadata == {"format": "pt"}
    assert set(header.tensors) == set(original)
    for name, tensor in original.items():
        entry = header.tensors[name]
        assert entry.dtype == tensor.dtype and entry.shape == tuple(tensor.shape)
        assert entry.nbytes == tensor.numel() * tensor.element_size()
        start, end = entry.file_range
        assert header.data_start <= start <= end <= header.file_size

    loaded = dict(sio.load_tensors(path))
    assert set(loaded) == set(original)
    for name, tensor in original.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert torch.equal(loaded[name], tensor), name


def test_select_names_in_order(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    original = sample_tensors()
    save_file(original, str(path))
    got = list(sio.load_tensors(path, ["u8", "bf16"]))
    assert [name for name, _ in got] == ["u8", "bf16"]
    assert torch.equal(got[1][1], original["bf16"])


def test_missing_name_is_refused_at_call(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(2)}, str(path))
    with pytest.raises(WeightsError, match="'nope'") as info:
        sio.load_tensors(path, ["a", "nope"])  # no next(): refused when called
    assert path.name in str(info.value)


def test_empty_checkpoint_is_valid(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "none.safetensors", {})
    assert sio.read_header(path).tensors == {}
    assert list(sio.load_tensors(path)) == []


# --- pickles --------------------------------------------------------------------------------

def test_pickle_only_folder_is_refused(tmp_path: Path) -> None:
    # Contents that would be harmful to unpickle do not matter: the file is never opened.
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    for check in (sio.refuse_pickles, sio.safetensors_files):
        with pytest.raises(WeightsError) as info:
            check(tmp_path)
        message = str(info.value)
        assert "pytorch_model.bin" in message
        assert "never unpickles" in message and "safetensors" in message


def test_pickles_beside_safetensors_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"junk")
    save_file({"a": torch.ones(1)}, str(tmp_path / "model.safetensors"))
    sio.refuse_pickles(tmp_path)
    assert sio.safetensors_files(tmp_path) == [tmp_path / "model.safetensors"]


def test_folder_without_weights(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no .safetensors"):
        sio.safetensors_files(tmp_path)
    with pytest.raises(WeightsError, match="not found"):
        sio.refuse_pickles(tmp_path / "absent")


def test_module_never_unpickles() -> None:
    source = Path(sio.__file__).read_text(encoding="utf-8")
    for forbidden in ("torch." + "load", "pickle." + "load", "import " + "pickle"):
        assert forbidden not in source
