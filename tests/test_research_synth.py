"""Synthetic pages: byte-identical for the same seed, the stored token count equal to an
independent tokenizer's count of the stored text, the same text at every font size, and clear
errors when a text cannot be laid out."""
import json

import pytest
from PIL import Image
from tokenizers import Tokenizer as HFTokenizer

from deepseek_ocr.research import PageGeometry, SynthError, load_pages, make_synthetic_pages, token_counter
from deepseek_ocr.research.synth import BUNDLED_TOKENIZER
from deepseek_ocr.research.synth_text import fit_to_tokens

SMALL_PAGE = PageGeometry(width=700, height=900, margin=40)


@pytest.fixture(scope="module")
def counter():
    count, _ = token_counter()
    return count


def _independent_count(text: str) -> int:
    # The tokenizers library directly, not the package's wrapper.
    return len(HFTokenizer.from_file(str(BUNDLED_TOKENIZER / "tokenizer.json")).encode(
        text, add_special_tokens=False).ids)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes(tmp_path, counter):
    options = dict(targets=[120, 200], font_sizes=[12, 18], count=2, count_tokens=counter,
                   geometry=SMALL_PAGE, seed=7)
    make_synthetic_pages(tmp_path / "a", **options)
    make_synthetic_pages(tmp_path / "b", **options)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 2 * 2 * 2 * 3 + 1  # 8 pages x (png, md, json) + synth.json
    assert a == b
    make_synthetic_pages(tmp_path / "c", **{**options, "seed": 8})
    c = _files(tmp_path / "c")
    assert c["t120-p001-fs12.md"] != a["t120-p001-fs12.md"]


def test_stored_token_count_is_the_tokenizers_count(tmp_path, counter):
    entries = make_synthetic_pages(tmp_path, targets=[150, 300], font_sizes=[14], count=2,
                                   count_tokens=counter, geometry=SMALL_PAGE, seed=1)
    for entry in entries:
        text = (tmp_path / entry["text"]).read_text(encoding="utf-8")
        side = json.loads((tmp_path / f"{entry['id']}.json").read_text())
        assert side == entry
        assert entry["text_tokens"] == _independent_count(text)
        # The longest word prefix within the budget: at most the target, and close to it.
        assert entry["target_tokens"] - 15 <= entry["text_tokens"] <= entry["target_tokens"]
        assert entry["characters"] == len(text)
        image = Image.open(tmp_path / entry["image"])
        assert image.size == (700, 900) and image.mode == "L"
        assert entry["font"] == "Aileron Regular" and entry["font_file"] == "Pillow built-in"


def test_same_text_at_every_font_size_and_readable_as_pages(tmp_path, counter):
    make_synthetic_pages(tmp_path, targets=[100], font_sizes=[10, 20], count=1, count_tokens=counter,
                         geometry=SMALL_PAGE)
    small, large = (tmp_path / "t100-p001-fs10.md").read_bytes(), (tmp_path / "t100-p001-fs20.md").read_bytes()
    assert small == large
    meta = {e["id"]: e for e in json.loads((tmp_path / "synth.json").read_text())["pages"]}
    assert meta["t100-p001-fs20"]["lines"] > meta["t100-p001-fs10"]["lines"]
    pages, _ = load_pages([tmp_path])
    assert [p.id for p in pages] == ["t100-p001-fs10", "t100-p001-fs20"]
    assert pages[1].meta["font_size"] == 20 and pages[1].meta["text_tokens"] == meta["t100-p001-fs20"]["text_tokens"]
    assert pages[1].reference == large.decode()


def test_a_text_file_is_consumed_in_order(tmp_path, counter):
    words = [f"word{i}" for i in range(400)]
    source = " ".join(words[:150]) + "\n\n" + " ".join(words[150:])
    entries = make_synthetic_pages(tmp_path, targets=[60], count=3, count_tokens=counter,
                                   geometry=PageGeometry(width=900, height=None, margin=10), text=source)
    texts = [(tmp_path / e["text"]).read_text() for e in entries]
    read_back = " ".join(" ".join(t.split()) for t in texts).split()
    assert read_back == words[:len(read_back)]
    # Height 'auto': margins plus one line pitch, ceil(16 px x 1.3) = 21, per line.
    assert all(e["page_height"] == 2 * 10 + e["lines"] * 21 for e in entries)
    assert all(e["text_source"] == "file" for e in entries)


def test_fit_to_tokens_by_hand():
    # One token per character: "a b" is 3, "a b c" is 5.
    text, used = fit_to_tokens(["a b", "c d"], 6, len)
    assert (text, used) == ("a b\n\nc", 3)
    assert fit_to_tokens(["abc"], 2, len) == ("", 0)


def test_layout_errors(tmp_path, counter):
    with pytest.raises(SynthError, match="need .* px of height but the page has 300"):
        make_synthetic_pages(tmp_path, targets=[500], font_sizes=[20], count_tokens=counter,
                             geometry=PageGeometry(width=400, height=300, margin=20))
    with pytest.raises(SynthError, match="wider than the line"):
        make_synthetic_pages(tmp_path, targets=[50], font_sizes=[30], count_tokens=counter, text="x" * 80,
                             geometry=PageGeometry(width=200, height=None, margin=10))
    with pytest.raises(SynthError, match="no text left"):
        make_synthetic_pages(tmp_path, targets=[50], count=3, count_tokens=counter, text="just four words here")
    with pytest.raises(SynthError, match="cannot load the font"):
        make_synthetic_pages(tmp_path, targets=[50], count_tokens=counter, font_path=tmp_path / "none.ttf")
    with pytest.raises(SynthError, match="margin"):
        PageGeometry(width=100, margin=50)
