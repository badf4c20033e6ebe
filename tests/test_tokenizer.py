"""Tests of the tokenizer wrapper against ids recorded from the official tokenizer.

The reference ids below are copied from the "Tokenizer" table of shared/parity/README.md,
which records what the official DeepSeek-OCR `tokenizer.json` produces
(`add_special_tokens=False`). They are the independent reference: the library reads ids only
from the files, never from this table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deepseek_ocr.errors import DeepseekOCRError, TokenizerError
from deepseek_ocr.processing.tokenizer import Tokenizer

from conftest import SHARED  # honours DEEPSEEK_OCR_SHARED, as every shared-data test does

TOKENIZER_DIR = SHARED / "tokenizer"

# text -> ids, from shared/parity/README.md ("Tokenizer" section).
REFERENCE = [
    ("Hello", [19923]),
    ("The capital of France is", [671, 6102, 294, 8760, 344]),
    ("\nFree OCR.", [201, 21431, 126041, 16]),
    ("<image>\n<|grounding|>Convert the document to markdown.",
     [128815, 201, 128820, 21842, 270, 4940, 304, 2121, 7919, 16]),
    ("12345", [6895, 1883]),
    ("year 2026, price $1299.99", [24821, 223, 939, 24, 14, 5220, 957, 9603, 27, 16, 1977]),
    ("日本語のテキスト", [88768, 1576, 17383, 20367, 24552]),
    ("  spaced", [223, 48914]),
    ("def main():\n\tpass", [3465, 1840, 15536, 200, 9762]),
]

# Ids the README states for the added tokens.
STATED_IDS = {
    "<image>": 128815, "<|ref|>": 128816, "<|/ref|>": 128817, "<|det|>": 128818,
    "<|/det|>": 128819, "<|grounding|>": 128820, "<td>": 128821, "</td>": 128822,
}


def _tokenizer_dir() -> Path:
    if not (TOKENIZER_DIR / "tokenizer.json").is_file():
        reason = f"tokenizer files not found at {TOKENIZER_DIR}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; in CI they must be present")
        pytest.skip(f"{reason} (set DEEPSEEK_OCR_SHARED to the shared folder)")
    return TOKENIZER_DIR


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_folder(_tokenizer_dir())


@pytest.fixture()
def copied(tmp_path: Path) -> Path:
    """A writable copy of the tokenizer folder, to break on purpose."""
    source = _tokenizer_dir()
    target = tmp_path / "tok"
    target.mkdir()
    for name in ("tokenizer.json", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copyfile(source / name, target / name)
    return target


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


# --- agreement with the official tokenizer --------------------------------------------------

@pytest.mark.parametrize("text, ids", REFERENCE, ids=[repr(t) for t, _ in REFERENCE])
def test_encode_matches_official(tok: Tokenizer, text: str, ids: list[int]) -> None:
    assert tok.encode(text) == ids


@pytest.mark.parametrize("text, ids", REFERENCE, ids=[repr(t) for t, _ in REFERENCE])
def test_decode_inverts_encode(tok: Tokenizer, text: str, ids: list[int]) -> None:
    assert tok.decode(ids) == text


def test_special_ids_match_readme(tok: Tokenizer) -> None:
    # README: "BOS 0, EOS 1, pad 2", "<image> 128815".
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.image_id) == (0, 1, 2, 128815)
    for token, token_id in STATED_IDS.items():
        assert tok.token_to_id(token) == token_id, token
        assert token in tok
    assert tok.token_to_id("<no such token>") is None
    # 128,000 BPE ids plus the added tokens; the largest added id is past <td>'s.
    assert tok.vocab_size > 128822
    assert tok.id_to_token(tok.image_id) == "<image>"


def test_no_special_tokens_added(tok: Tokenizer) -> None:
    ids = tok.encode("Hello")
    assert tok.bos_id not in ids and tok.eos_id not in ids
    assert tok.encode("") == []


def test_decode_keeps_grounding_tokens_by_default(tok: Tokenizer) -> None:
    text = "<|ref|>Total<|/ref|><|det|>[[10, 20, 30, 40]]<|/det|>"
    ids = tok.encode(text)
    assert ids[0] == 128816 and 128817 in ids
    assert tok.decode(ids) == text
    assert "<|ref|>" not in tok.decode(ids, skip_special_tokens=True)
    assert tok.decode([tok.bos_id, *tok.encode("Hi"), tok.eos_id]).startswith(tok.bos_token)


def test_decode_accepts_integer_like_and_refuses_negative(tok: Tokenizer) -> None:
    torch = pytest.importorskip("torch")
    assert tok.decode(torch.tensor([19923])) == "Hello"
    with pytest.raises(TokenizerError):
        tok.decode([19923, -1])


# --- refusing broken tokenizers -------------------------------------------------------------

def test_missing_tokenizer_json(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError) as info:
        Tokenizer.from_folder(tmp_path)
    assert "tokenizer.json" in str(info.value) and "not found" in str(info.value)
    assert isinstance(info.value, DeepseekOCRError)


def test_garbage_json(copied: Path) -> None:
    (copied / "tokenizer.json").write_bytes(b'{"version": "1.0", "model": {oops')
    with pytest.raises(TokenizerError, match="not valid JSON") as info:
        Tokenizer.from_folder(copied)
    assert str(copied / "tokenizer.json") in str(info.value)


@pytest.mark.parametrize("content", [b"[1, 2, 3]", b'{"model": 5}', b"\xff\xfe"])
def test_json_that_is_no_tokenizer(copied: Path, content: bytes) -> None:
    (copied / "tokenizer.json").write_bytes(content)
    with pytest.raises(TokenizerError) as info:
        Tokenizer.from_folder(copied)
    assert "tokenizer.json" in str(info.value)


def test_missing_image_token(copied: Path) -> None:
    def drop_image(data: dict) -> None:
        data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<image>"]
        data["model"]["vocab"].pop("<image>", None)

    edit_json(copied / "tokenizer.json", drop_image)
    with pytest.raises(TokenizerError) as info:
        Tokenizer.from_folder(copied)
    assert "<image>" in str(info.value) and "tokenizer.json" in str(info.value)


def test_bos_not_in_vocabulary(copied: Path) -> None:
    edit_json(copied / "special_tokens_map.json", lambda d: d.update(bos_token="<|no_bos|>"))
    with pytest.raises(TokenizerError, match="BOS") as info:
        Tokenizer.from_folder(copied)
    assert "<|no_bos|>" in str(info.value)


def test_eos_not_declared(copied: Path) -> None:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        edit_json(copied / name, lambda d: d.pop("eos_token"))
    with pytest.raises(TokenizerError, match="eos_token") as info:
        Tokenizer.from_folder(copied)
    assert "special_tokens_map.json" in str(info.value)


def test_no_special_token_files(copied: Path) -> None:
    (copied / "special_tokens_map.json").unlink()
    (copied / "tokenizer_config.json").unlink()
    with pytest.raises(TokenizerError, match="bos_token"):
        Tokenizer.from_folder(copied)


def test_config_alone_names_the_tokens(copied: Path) -> None:
    (copied / "special_tokens_map.json").unlink()
    tok = Tokenizer.from_folder(copied)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)


def test_pad_falls_back_to_eos(copied: Path) -> None:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        edit_json(copied / name, lambda d: d.pop("pad_token"))
    tok = Tokenizer.from_folder(copied)
    assert tok.pad_id == tok.eos_id


def test_malformed_special_tokens_map(copied: Path) -> None:
    (copied / "special_tokens_map.json").write_text("not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="special_tokens_map.json"):
        Tokenizer.from_folder(copied)


def test_the_shared_folder_setting_is_honoured(tmp_path):
    """DEEPSEEK_OCR_SHARED moves the tokenizer files too (they were read from ../shared only)."""
    code = "import test_tokenizer; print(test_tokenizer.TOKENIZER_DIR)"
    env = dict(os.environ, DEEPSEEK_OCR_SHARED=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "tokenizer")
