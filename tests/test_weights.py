"""Checkpoint names, loading, saving, the hub cache and random checkpoints (DESIGN.md 6,
RELIABILITY.md cases 1-3).

References used here, independent of the code under test:
- the small checkpoint written by `../shared/parity/make_checkpoint.py` (its header gives the
  real names, shapes and dtypes; its bytes are the values);
- the shape table of that same script, and the figures of `../shared/parity/README.md` for the
  full-size model (2710 tensors, 6,672,212,480 bf16 bytes).

The 1.6 GB small checkpoint is never modified: folders that need a changed checkpoint link to
it (hard link, else a copy) or hold small files written here. Files whose data is never read
(every loading check fails before reading data) are written as sparse files: a real header and
a data region of zeros that takes no disk space.
"""
from __future__ import annotations

import filecmp
import hashlib
import importlib.util
import json
import math
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from deepseek_ocr import DeepseekOCR
from deepseek_ocr.config import ModelConfig
from deepseek_ocr.errors import WeightsError
from deepseek_ocr.modeling import DeepseekOCRModel
from deepseek_ocr.weights.loading import DEFAULT_REPO, check_tensors, resolve_checkpoint, shard_files
from deepseek_ocr.weights.names import (Slot, checkpoint_name, checkpoint_tensors, expected_tensors,
                                        module_name, slot_for)
from deepseek_ocr.weights.random import make_random_checkpoint
from deepseek_ocr.weights.safetensors_io import read_header

REPO = Path(__file__).resolve().parent.parent
SHARD = "model-00001-of-000001.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SMALL_TENSORS = 556            # 3 decoder layers, 8 experts
FULL_TENSORS = 2710            # README / DESIGN.md section 6
FULL_BF16_BYTES = 6_672_212_480  # the official index's total_size
ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I32": 4, "I64": 8, "U8": 1, "BOOL": 1}


# --- helpers ------------------------------------------------------------------------------------

def meta_model(cfg: ModelConfig) -> DeepseekOCRModel:
    with torch.device("meta"):
        return DeepseekOCRModel(cfg)


def raw_header(path: Path) -> dict:
    """The JSON header of a safetensors file, parsed here without the code under test."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def differing_tensors(a: Path, b: Path) -> list[str]:
    """The tensors whose dtype, shape or bytes differ between two safetensors files that name
    the same tensors, read here (headers parsed as `raw_header` does) in 16 MB pieces with plain
    reads: two 1.6 GB files mapped by `safe_open` and read whole stayed resident together."""
    ha, hb = raw_header(a), raw_header(b)
    assert ha.keys() == hb.keys()
    different = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        data_a, data_b = (8 + struct.unpack("<Q", f.read(8))[0] for f in (fa, fb))
        for name in sorted(ha):
            (start_a, end_a), (start_b, end_b) = ha[name]["data_offsets"], hb[name]["data_offsets"]
            if (ha[name]["dtype"], ha[name]["shape"], end_a - start_a) != (
                    hb[name]["dtype"], hb[name]["shape"], end_b - start_b):
                different.append(name)
                continue
            fa.seek(data_a + start_a)
            fb.seek(data_b + start_b)
            left = end_a - start_a
            while left:
                piece = min(left, 1 << 24)
                if fa.read(piece) != fb.read(piece):
                    different.append(name)
                    break
                left -= piece
    return different


def state_checksums(model: DeepseekOCR) -> dict[str, tuple]:
    """Per state-dict tensor: dtype, shape and the CRC-32 of its bytes. Lets a test compare two
    models without holding both (each is 1.5 GB in bfloat16); any change to a tensor's bytes
    changes its CRC but for a 2^-32 chance."""
    return {name: (t.dtype, tuple(t.shape), zlib.crc32(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
            for name, t in model.model.state_dict().items()}


def write_sparse_safetensors(path: Path, entries: dict[str, tuple[str, list[int]]]) -> Path:
    """A valid safetensors file whose data are zeros in a sparse region (no disk blocks)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(entries):
        dtype, shape = entries[name]
        size = math.prod(shape) * ITEMSIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        f.truncate(8 + len(blob) + offset)
    return path


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (no disk, and the source is only ever read), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def checkpoint_folder(src: Path, dst: Path, *, weights: bool = True, index: bool = True) -> Path:
    """A private copy of checkpoint `src`: small files copied, the big shard linked."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", *TOKENIZER_FILES) + ((INDEX,) if index else ()):
        shutil.copyfile(src / name, dst / name)
    if weights:
        link_or_copy(src / SHARD, dst / SHARD)
    return dst


def load_make_checkpoint(shared_dir: Path):
    """The parity data's own generator script, imported as a module (its main() is not run)."""
    spec = importlib.util.spec_from_file_location("parity_make_checkpoint",
                                                  shared_dir / "parity" / "make_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_cfg(small_checkpoint) -> ModelConfig:
    return ModelConfig.from_file(small_checkpoint / "config.json")


@pytest.fixture()
def small_file(small_checkpoint):
    """Opened per test: the pages a test reads through the mapping stay resident while it is open."""
    with safe_open(str(small_checkpoint / SHARD), "pt") as f:
        yield f


# --- 2. the name table --------------------------------------------------------------------------

def test_expected_tensors_equal_the_small_checkpoint_header(small_checkpoint, small_cfg):
    expected = expected_tensors(meta_model(small_cfg))
    header = read_header(small_checkpoint / SHARD).tensors
    assert len(header) == SMALL_TENSORS
    assert sorted(expected) == sorted(header)
    wrong = {n: (expected[n][0], header[n].shape) for n in header if expected[n][0] != header[n].shape}
    assert not wrong, f"shapes differ (expected, file): {wrong}"


def test_full_size_name_table_matches_the_official_layout(shared_dir):
    cfg = ModelConfig.from_file(shared_dir / "parity" / "official_config.json")
    expected = expected_tensors(meta_model(cfg))
    assert len(expected) == FULL_TENSORS
    assert sum(math.prod(shape) for shape, _ in expected.values()) * 2 == FULL_BF16_BYTES
    # Name by name against the parity generator's table of the official checkpoint.
    official = load_make_checkpoint(shared_dir)
    table = official.shapes(official.official_config(12, 64, 6))
    assert {n: tuple(s) for n, s in table.items()} == {n: shape for n, (shape, _) in expected.items()}


def test_every_parameter_element_is_filled_exactly_once(shared_dir):
    """The slots of the checkpoint tensors tile each module parameter: no element is left
    unfilled, none is written twice, and the name maps are inverse to each other."""
    cfg = ModelConfig.from_file(shared_dir / "parity" / "official_config.json")
    model = meta_model(cfg)
    params = model.state_dict(keep_vars=True)
    expected = expected_tensors(model)
    covered: dict[str, int] = {}
    parts: dict[str, set] = {}
    moe = cfg.decoder.moe_intermediate_size
    for name, (shape, slot) in expected.items():
        assert slot_for(name, moe) == slot, name
        assert slot.param in params, name
        covered[slot.param] = covered.get(slot.param, 0) + math.prod(shape)
        key = (slot.expert, slot.rows)
        assert key not in parts.setdefault(slot.param, set()), f"{name} overlaps another slot"
        parts[slot.param].add(key)
        if slot.expert is None:
            assert module_name(name) == slot.param and checkpoint_name(slot.param) == name
            assert tuple(params[slot.param].shape) == shape
    assert covered == {p: t.numel() for p, t in params.items()}
    gate_up = params["decoder.layers.1.mlp.experts.gate_up"]
    assert tuple(gate_up.shape) == (64, 2 * 896, 1280)
    assert expected["model.layers.1.mlp.experts.63.up_proj.weight"][1] == Slot(
        "decoder.layers.1.mlp.experts.gate_up", 63, (896, 1792))
    assert slot_for("model.layers.1.mlp.experts.5.gate_proj.weight", moe) == Slot(
        "decoder.layers.1.mlp.experts.gate_up", 5, (0, 896))
    assert slot_for("model.something_else.weight", moe) is None


def test_checkpoint_tensors_yield_the_same_table(small_cfg):
    model = meta_model(small_cfg)
    expected = expected_tensors(model)
    produced = {n: tuple(t.shape) for n, t in checkpoint_tensors(model)}
    assert produced == {n: shape for n, (shape, _) in expected.items()}


# --- 3. loading checks --------------------------------------------------------------------------

def found_entry(dtype, shape, file="model.safetensors"):
    return (dtype, tuple(shape), Path("/ckpt") / file)


def test_check_tensors_reports_every_problem_in_one_error():
    expected = {"a.weight": ((2, 3), None), "b.weight": ((4,), None),
                "c.weight": ((5, 6), None), "d.weight": ((7,), None), "e.weight": ((1,), None)}
    found = {"a.weight": found_entry(torch.bfloat16, (2, 3)),
             "c.weight": found_entry(torch.float32, (6, 5), "shard-2.safetensors"),
             "d.weight": found_entry(torch.int32, (7,)),
             "e.weight": found_entry(torch.float16, (1,)),
             "x.weight": found_entry(torch.float32, (9,))}
    with pytest.raises(WeightsError) as info:
        check_tensors(found, expected, Path("/ckpt"))
    message = str(info.value)
    assert "4 problem(s)" in message and "/ckpt" in message
    assert "missing: b.weight" in message and "[4]" in message
    assert "unexpected: x.weight" in message and "[9]" in message
    assert "wrong shape: c.weight: expected [5, 6], found [6, 5] (in shard-2.safetensors)" in message
    assert "wrong dtype: d.weight" in message and "int32" in message
    assert "a.weight" not in message and "e.weight" not in message


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int64, torch.bool])
def test_check_tensors_refuses_non_float_dtypes(dtype):
    with pytest.raises(WeightsError, match="wrong dtype: w"):
        check_tensors({"w": found_entry(dtype, (3,))}, {"w": ((3,), None)}, Path("/ckpt"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_check_tensors_accepts_a_matching_checkpoint(dtype):
    check_tensors({"w": found_entry(dtype, (3, 2))}, {"w": ((3, 2), None)}, Path("/ckpt"))


def test_load_lists_missing_unexpected_misshapen_and_int_tensors(small_checkpoint, tmp_path):
    folder = checkpoint_folder(small_checkpoint, tmp_path / "ckpt", weights=False)
    entries = {n: (e["dtype"], e["shape"]) for n, e in raw_header(small_checkpoint / SHARD).items()}
    assert len(entries) == SMALL_TENSORS
    missing = "model.layers.1.mlp.experts.3.up_proj.weight"
    unexpected = "model.layers.1.mlp.experts.8.up_proj.weight"  # a 9th expert of 8
    misshapen = "model.layers.2.self_attn.q_proj.weight"
    int_typed = "model.norm.weight"
    del entries[missing]
    entries[unexpected] = ("BF16", [896, 1280])
    entries[misshapen] = ("BF16", [1280, 1024])
    entries[int_typed] = ("I32", [1280])
    write_sparse_safetensors(folder / SHARD, entries)
    with pytest.raises(WeightsError) as info:
        DeepseekOCR.from_pretrained(folder, device="cpu", dtype="bfloat16")
    message = str(info.value)
    assert "4 problem(s)" in message, message  # nothing else wrong with the written file
    assert f"missing: {missing} (expected shape [896, 1280])" in message
    assert f"unexpected: {unexpected}" in message
    assert f"wrong shape: {misshapen}: expected [1280, 1280], found [1280, 1024]" in message
    assert f"wrong dtype: {int_typed}" in message and "int32" in message


def test_sparse_writer_makes_a_checkpoint_that_passes_the_checks(small_checkpoint, small_cfg, tmp_path):
    # The control for the test above: the same file, unmodified, has no problem at all.
    entries = {n: (e["dtype"], e["shape"]) for n, e in raw_header(small_checkpoint / SHARD).items()}
    path = write_sparse_safetensors(tmp_path / SHARD, entries)
    header = read_header(path)
    found = {n: (e.dtype, e.shape, path) for n, e in header.tensors.items()}
    check_tensors(found, expected_tensors(meta_model(small_cfg)), tmp_path)


class _CreatesFile:
    """Unpickling this object calls open(path, "w"): proof that something was unpickled."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "model.pt"])
def test_pickle_only_checkpoint_is_refused_unopened(small_checkpoint, tmp_path, monkeypatch, filename):
    marker = tmp_path / "unpickled.txt"
    trap = pickle.dumps({"model.norm.weight": _CreatesFile(marker)})
    pickle.loads(trap).popitem()[1].close()  # the trap works: unpickling creates the marker ...
    assert marker.exists()
    marker.unlink()  # ... which must not appear again below
    folder = checkpoint_folder(small_checkpoint, tmp_path / "ckpt", weights=False, index=False)
    (folder / filename).write_bytes(trap)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("weights were unpickled")
    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(torch.serialization, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    with pytest.raises(WeightsError) as info:
        DeepseekOCR.from_pretrained(folder, device="cpu", dtype="bfloat16")
    message = str(info.value)
    assert filename in message and "pickle" in message and "safetensors" in message
    assert not marker.exists()


def test_no_weight_files_at_all(small_checkpoint, tmp_path):
    folder = checkpoint_folder(small_checkpoint, tmp_path / "ckpt", weights=False, index=False)
    with pytest.raises(WeightsError, match="no .safetensors"):
        DeepseekOCR.from_pretrained(folder, device="cpu", dtype="bfloat16")


def test_auto_map_remote_code_is_never_imported(small_checkpoint, tmp_path, monkeypatch):
    folder = checkpoint_folder(small_checkpoint, tmp_path / "ckpt")
    marker = tmp_path / "imported.txt"
    module = "modeling_deepseekocr_trap"
    # Hub repos ship their remote code beside the weights; put it there and importable.
    (folder / f"{module}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise RuntimeError('remote code was imported')\n")
    monkeypatch.syspath_prepend(str(folder))
    cfg = json.loads((folder / "config.json").read_text())
    trap = {"AutoConfig": f"{module}.DeepseekOCRConfig", "AutoModel": f"{module}.DeepseekOCRForCausalLM"}
    cfg["auto_map"] = trap
    cfg["language_config"]["auto_map"] = trap
    (folder / "config.json").write_text(json.dumps(cfg))
    model = DeepseekOCR.from_pretrained(folder, device="cpu", dtype="bfloat16")
    assert model.config.decoder.num_layers == 3
    assert module not in sys.modules and not marker.exists()


@pytest.mark.parametrize("keep", [4, 1000, 1 << 20, -1])
def test_truncated_shard_names_the_file(small_checkpoint, tmp_path, keep):
    """Cut in the length prefix, in the header, in the data, and just the last byte."""
    folder = checkpoint_folder(small_checkpoint, tmp_path / "ckpt", weights=False)
    src = small_checkpoint / SHARD
    size = src.stat().st_size if keep < 0 else keep
    with open(src, "rb") as f, open(folder / SHARD, "wb") as out:
        if keep < 0:  # all but the last byte: copy the header, leave the data sparse
            (n,) = struct.unpack("<Q", f.read(8))
            out.write(struct.pack("<Q", n) + f.read(n))
            out.truncate(size - 1)
        else:
            out.write(f.read(size))
    with pytest.raises(WeightsError) as info:
        DeepseekOCR.from_pretrained(folder, device="cpu", dtype="bfloat16")
    assert str(folder / SHARD) in str(info.value)


def test_index_naming_a_missing_shard(small_checkpoint, tmp_path):
    folder = checkpoint_folder(small_checkpoint, tmp_path / "ckpt")
    index = json.loads((folder / INDEX).read_text())
    lost = "model-00002-of-000002.safetensors"
    index["weight_map"]["lm_head.weight"] = lost
    (folder / INDEX).write_text(json.dumps(index))
    with pytest.raises(WeightsError) as info:
        DeepseekOCR.from_pretrained(folder, device="cpu", dtype="bfloat16")
    assert lost in str(info.value) and INDEX in str(info.value)


@pytest.mark.parametrize("text", [
    '{"weight_map": ', '{"metadata": {}}', '[1, 2]', '{"weight_map": 3}', '{"weight_map": {"a": 3}}',
    '{"weight_map": {"a": "../other/model.safetensors"}}', '{"weight_map": {"a": "/etc/model.safetensors"}}',
])
def test_malformed_index(tmp_path, text):
    (tmp_path / INDEX).write_text(text)
    with pytest.raises(WeightsError, match="malformed index"):
        shard_files(tmp_path)


def test_shards_without_index_are_found_and_pickles_beside_them_ignored(tmp_path):
    for name in ("model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"):
        save_file({name[:14]: torch.zeros(2)}, str(tmp_path / name))
    (tmp_path / "pytorch_model.bin").write_bytes(b"never read")
    assert [p.name for p in shard_files(tmp_path)] == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def test_tensor_stored_in_two_shards(small_checkpoint, tmp_path):
    folder = checkpoint_folder(small_checkpoint, tmp_path / "ckpt", weights=False, index=False)
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        write_sparse_safetensors(folder / name, {"model.norm.weight": ("BF16", [1280])})
    with pytest.raises(WeightsError, match="model.norm.weight is stored twice"):
        DeepseekOCR.from_pretrained(folder, device="cpu", dtype="bfloat16")


# --- 4. save_pretrained round trip --------------------------------------------------------------

def test_save_pretrained_reproduces_the_checkpoint_byte_for_byte(small_checkpoint, tmp_path):
    """The bfloat16 model is loaded here, not shared by a module fixture, so that it is gone
    before its reload (and before the other loads of this module): 1.5 GB each."""
    model = DeepseekOCR.from_pretrained(small_checkpoint, device="cpu", dtype="bfloat16")
    out = model.save_pretrained(tmp_path / "saved")
    with safe_open(str(small_checkpoint / SHARD), "pt") as a, safe_open(str(out / SHARD), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())  # safetensors itself reads what was written
        assert len(list(a.keys())) == SMALL_TENSORS
    different = differing_tensors(small_checkpoint / SHARD, out / SHARD)
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"
    original_index = json.loads((small_checkpoint / INDEX).read_text())
    saved_index = json.loads((out / INDEX).read_text())
    assert saved_index["weight_map"] == original_index["weight_map"]
    assert saved_index["metadata"]["total_size"] == original_index["metadata"]["total_size"]
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (small_checkpoint / "config.json").read_text())
    for name in TOKENIZER_FILES:
        assert filecmp.cmp(small_checkpoint / name, out / name, shallow=False), name
    assert not list(out.glob("*.tmp"))

    config, mine = model.config, state_checksums(model)
    del model  # one bfloat16 copy at a time
    again = DeepseekOCR.from_pretrained(out, device="cpu", dtype="bfloat16")
    assert again.config == config
    theirs = state_checksums(again)
    assert mine.keys() == theirs.keys()
    assert [k for k in mine if mine[k] != theirs[k]] == []
    (out / SHARD).unlink()  # 1.6 GB; pytest keeps the last runs' tmp folders


def test_save_pretrained_of_a_float32_model_keeps_the_checkpoint_dtype(small_checkpoint, small_model, tmp_path):
    """A model loaded on the CPU runs in float32; saving it wrote 2x the bytes as F32 while
    config.json still said bfloat16. It is saved as the checkpoint was, and says so."""
    assert small_model.dtype == torch.float32
    out = small_model.save_pretrained(tmp_path / "saved")
    dtypes = {e["dtype"] for name, e in raw_header(out / SHARD).items() if name != "__metadata__"}
    assert dtypes == {"BF16"}
    assert (out / SHARD).stat().st_size == (small_checkpoint / SHARD).stat().st_size
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == config["language_config"]["torch_dtype"] == "bfloat16"
    assert config == json.loads((small_checkpoint / "config.json").read_text())
    (out / SHARD).unlink()  # 1.6 GB


# --- 5. dtypes and the expert fusion -------------------------------------------------------------

def assert_matches_file(model: DeepseekOCR, file, dtype: torch.dtype) -> None:
    params = dict(model.model.named_parameters())
    assert {p.dtype for p in params.values()} == {dtype}
    assert all(p.device.type == "cpu" for p in params.values())
    cfg = model.config.decoder
    for layer in range(cfg.first_k_dense_replace, cfg.num_layers):
        base = f"model.layers.{layer}.mlp.experts."
        gate_up = params[f"decoder.layers.{layer}.mlp.experts.gate_up"]
        down = params[f"decoder.layers.{layer}.mlp.experts.down"]
        assert gate_up.shape == (cfg.n_routed_experts, 2 * cfg.moe_intermediate_size, cfg.hidden_size)
        for e in range(cfg.n_routed_experts):
            fused = torch.cat([file.get_tensor(f"{base}{e}.gate_proj.weight"),
                               file.get_tensor(f"{base}{e}.up_proj.weight")]).to(dtype)
            assert torch.equal(gate_up[e], fused), f"layer {layer} expert {e} gate_up"
            assert torch.equal(down[e], file.get_tensor(f"{base}{e}.down_proj.weight").to(dtype))
    assert torch.equal(params["decoder.lm_head.weight"], file.get_tensor("lm_head.weight").to(dtype))
    assert torch.equal(params["vision.sam.pos_embed"], file.get_tensor("model.sam_model.pos_embed").to(dtype))


def test_float32_load(small_model, small_file):
    assert_matches_file(small_model, small_file, torch.float32)
    assert small_model.dtype == torch.float32


def assert_matches_float32_model(model: DeepseekOCR, reference: DeepseekOCR, dtype: torch.dtype) -> None:
    """The float32 session model is the reference: test_float32_load proves it equals the file,
    and every bfloat16 value is exact in float32, so a conversion of it is what a load in
    `dtype` must hold. Reading the file again here kept 1.6 GB of its pages resident beside two
    models: the suite's memory peak."""
    params, ref = dict(model.model.named_parameters()), dict(reference.model.named_parameters())
    assert params.keys() == ref.keys()
    assert {p.dtype for p in params.values()} == {dtype}
    assert all(p.device.type == "cpu" for p in params.values())
    different = [n for n, p in params.items() if not torch.equal(p, ref[n].detach().to(dtype))]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


def test_bfloat16_load(small_checkpoint, small_model):
    model = DeepseekOCR.from_pretrained(small_checkpoint, device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert_matches_float32_model(model, small_model, torch.bfloat16)


def test_float16_load(small_checkpoint, small_model):
    model = DeepseekOCR.from_pretrained(small_checkpoint, device="cpu", dtype="float16")
    assert model.dtype == torch.float16
    assert_matches_float32_model(model, small_model, torch.float16)


# --- 6. the Hugging Face hub cache --------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def no_network(monkeypatch):
    """Every attempt to open a connection is recorded and refused."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("the test forbids network access")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture()
def hub_cache(small_checkpoint, tmp_path, monkeypatch, no_network) -> Path:
    """A Hugging Face cache holding deepseek-ai/DeepSeek-OCR at COMMIT (files symlinked to the
    small checkpoint), in offline mode. huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE
    into `huggingface_hub.constants` at import, so those are patched along with the env."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf_cache"
    repo = cache / "models--deepseek-ai--DeepSeek-OCR"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name in ("config.json", INDEX, SHARD, *TOKENIZER_FILES):
        (snapshot / name).symlink_to(small_checkpoint / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)  # no newline, as huggingface_hub writes it
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return snapshot


def test_repo_id_loads_from_the_cache_offline(hub_cache, no_network, small_file):
    assert resolve_checkpoint(DEFAULT_REPO) == hub_cache
    assert resolve_checkpoint(DEFAULT_REPO, revision=COMMIT) == hub_cache
    model = DeepseekOCR.from_pretrained("deepseek-ai/DeepSeek-OCR", device="cpu", dtype="bfloat16")
    assert model.folder == hub_cache
    assert model.config.decoder.num_layers == 3 and model.config.decoder.n_routed_experts == 8
    assert torch.equal(model.model.decoder.lm_head.weight, small_file.get_tensor("lm_head.weight"))
    assert no_network == []


@pytest.mark.parametrize("repo, revision", [("deepseek-ai/Not-Cached", None), (DEFAULT_REPO, "v2")])
def test_uncached_repo_offline_is_a_weights_error(hub_cache, no_network, repo, revision):
    with pytest.raises(WeightsError) as info:
        DeepseekOCR.from_pretrained(repo, device="cpu", dtype="bfloat16", revision=revision)
    message = str(info.value)
    assert repo in message and "HF_HUB_OFFLINE=1" in message and "cache" in message
    assert no_network == []


@pytest.mark.parametrize("path", ["./nope/missing", "nope/missing/deeper", "/nonexistent/ckpt",
                                  "~/nope-deepseek-ocr-test"])
def test_missing_local_folder(path, no_network, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(WeightsError, match="checkpoint folder not found"):
        DeepseekOCR.from_pretrained(path, device="cpu", dtype="bfloat16")
    assert no_network == []


def test_a_file_is_not_a_checkpoint_folder(small_checkpoint, no_network):
    with pytest.raises(WeightsError, match="not found"):
        DeepseekOCR.from_pretrained(small_checkpoint / SHARD, device="cpu")


# --- 7. random checkpoints ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    folder = make_random_checkpoint(tmp_path_factory.mktemp("random") / "ckpt", layers=2, experts=4, topk=2)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def test_random_checkpoint_loads_and_runs(random_checkpoint):
    cfg = ModelConfig.from_file(random_checkpoint / "config.json")
    d = cfg.decoder
    assert (d.num_layers, d.n_routed_experts, d.num_experts_per_tok) == (2, 4, 2)
    assert (d.hidden_size, d.vocab_size, d.moe_intermediate_size) == (1280, 129280, 896)
    assert cfg.sam == ModelConfig().sam and cfg.clip == ModelConfig().clip
    header = raw_header(random_checkpoint / SHARD)
    # layer 0 dense (9 tensors), layer 1 MoE with 4 experts, the vision tower and the rest.
    assert "model.layers.1.mlp.experts.3.down_proj.weight" in header
    assert "model.layers.1.mlp.experts.4.down_proj.weight" not in header
    assert "model.layers.2.input_layernorm.weight" not in header
    assert {e["dtype"] for e in header.values()} == {"BF16"}

    model = DeepseekOCR.from_pretrained(random_checkpoint, device="cpu", dtype="bfloat16")
    decoder = model.model.decoder
    assert len(decoder.layers) == 2
    assert tuple(decoder.layers[1].mlp.experts.gate_up.shape) == (4, 2 * 896, 1280)
    assert tuple(decoder.layers[1].mlp.experts.down.shape) == (4, 1280, 896)
    inputs = model.prepare(None, "Hello")
    logits = model.logits(inputs)
    assert logits.shape == (inputs.input_ids.shape[-1], 129280)
    assert torch.isfinite(logits).all()
    assert logits.float().std() > 0


def test_random_checkpoint_depends_only_on_the_seed(tmp_path):
    """Three builds with a narrow decoder and a 2-block vision tower: a build holds every tensor
    while it writes (3 GB or more at full size, on top of the session's model), and the size
    changes nothing here: each tensor is drawn from its own name's generator, and the narrow
    build still draws large tensors (SAM's and CLIP's blocks at their official widths, the
    129280 x 64 embedding)."""
    narrow = dict(layers=2, experts=4, topk=2, hidden_size=64, heads=2, intermediate_size=128,
                  moe_intermediate_size=32, vision_depth=2)
    first = make_random_checkpoint(tmp_path / "first", **narrow, seed=0)
    from deepseek_ocr.config import ModelConfig
    cfg = ModelConfig.from_dict(json.loads((first / "config.json").read_text()))
    assert (cfg.sam.depth, cfg.sam.global_attn_indexes, cfg.clip.depth) == (2, (1,), 2)
    with pytest.raises(ValueError, match="vision_depth"):
        make_random_checkpoint(tmp_path / "none", **{**narrow, "vision_depth": 0})
    again = make_random_checkpoint(tmp_path / "again", **narrow, seed=0)
    for name in ("config.json", INDEX, *TOKENIZER_FILES):
        assert filecmp.cmp(first / name, again / name, shallow=False), name
    assert sha256(first / SHARD) == sha256(again / SHARD)
    (again / SHARD).unlink()

    other = make_random_checkpoint(tmp_path / "other", **narrow, seed=1)
    assert raw_header(other / SHARD).keys() == raw_header(first / SHARD).keys()
    different = differing_tensors(first / SHARD, other / SHARD)
    same = sorted(set(raw_header(other / SHARD)) - set(different))
    assert not same, f"seed 1 drew the same values as seed 0 for {same[:5]}"
    (first / SHARD).unlink()
    (other / SHARD).unlink()


# --- 8. memory ----------------------------------------------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status and ru_maxrss in KiB")
def test_peak_memory_of_a_bf16_load_stays_near_one_copy_of_the_weights(small_checkpoint):
    """Two measures, both relative to the process after importing torch and the package:
    - anonymous memory (what the process allocates), sampled: at most 1.2x the file;
    - ru_maxrss (all resident pages, file-backed ones included): at most 1.2x the file, which
      also proves the reader does not keep the file's pages mapped on top of the copies.
    Holding a second full copy of the weights at any moment breaks both."""
    allowance_mib = 300  # lazily imported modules, allocator slack, one tensor in flight
    # The probe is the benchmark script itself (one measurement, two uses).
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "load_memory.py"), str(small_checkpoint)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"the library printed to stdout: {proc.stdout!r}"
    m = json.loads(lines[0])
    file_mib = (small_checkpoint / SHARD).stat().st_size / 2**20
    report = f"file {file_mib:.0f} MiB, measured {m}"
    assert abs(m["file_mib"] - file_mib) < 1, report
    assert file_mib <= m["anon_peak_growth_mib"], report  # the weights are really in memory (the probe works)
    assert m["anon_peak_growth_mib"] <= 1.2 * file_mib + allowance_mib, report
    assert m["maxrss_growth_mib"] <= 1.2 * file_mib + allowance_mib, report

