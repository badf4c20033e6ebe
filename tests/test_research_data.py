"""Benchmarks as data: the Fox and OmniDocBench readers, the fine-tuning formats and synthetic
folders through `load_pages`, format detection, and the errors a bad file gets."""
import json

import pytest
from PIL import Image

from deepseek_ocr.research import BenchmarkFormatError, load_pages
from deepseek_ocr.research.benchmark_fox import read_fox
from deepseek_ocr.research.benchmark_omnidocbench import read_omnidocbench
from deepseek_ocr.research.page_sources import detect_format


def _png(path, size=(60, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "white").save(path)
    return path


def _fox_entry(image, answer, length=3):
    return {"image": image, "len": length, "conversations": [
        {"from": "human", "value": "<image>\nOCR this image: "}, {"from": "gpt", "value": answer}]}


# ----------------------------------------------------------------------------- Fox
def test_fox_pages_keep_the_ground_truth_exactly(tmp_path):
    _png(tmp_path / "png" / "en_1.png")
    _png(tmp_path / "png" / "en_2.png")
    (tmp_path / "en_page_ocr.json").write_text(json.dumps(
        [_fox_entry("en_1.png", "First page\ntext. "), _fox_entry("en_2.png", "Second", 826)]))
    pages, notes = read_fox(tmp_path / "en_page_ocr.json", image_roots=[tmp_path / "png"])
    assert [p.id for p in pages] == ["en_1.png", "en_2.png"]
    assert pages[0].reference == "First page\ntext. "          # not stripped
    assert pages[0].image == tmp_path / "png" / "en_1.png"
    assert {p.language for p in pages} == {"en"}
    assert pages[1].meta == {"benchmark": "fox", "fox_len": 826, "fox_prompt": "<image>\nOCR this image: "}
    assert notes == []


def test_fox_chinese_file_and_default_image_root(tmp_path):
    _png(tmp_path / "cn_1.png")
    (tmp_path / "cn_page_ocr.json").write_text(json.dumps([_fox_entry("cn_1.png", "中文页面")]))
    (page,), _ = read_fox(tmp_path / "cn_page_ocr.json")
    assert page.language == "zh" and page.image == tmp_path / "cn_1.png"


def test_fox_lists_every_missing_image(tmp_path):
    _png(tmp_path / "en_1.png")
    entries = [_fox_entry(f"en_{i}.png", "x") for i in range(1, 5)]
    (tmp_path / "en_page_ocr.json").write_text(json.dumps(entries))
    with pytest.raises(BenchmarkFormatError, match=r"3 of 4 page images not found .*en_2.png, en_3.png, "
                                                   r"en_4.png.*--image-root"):
        read_fox(tmp_path / "en_page_ocr.json")


@pytest.mark.parametrize("entry,message", [
    ({"image": "a.png"}, "'conversations' must be a non-empty list"),
    ({"image": "a.png", "conversations": [{"from": "human", "value": "q"}]}, "no 'gpt' turn"),
    ({"image": "a.png", "conversations": [{"from": "gpt", "value": "  "}]}, "ground truth .* is empty"),
    ({"conversations": []}, "'image' must name"),
    ("not an object", "must be an object"),
])
def test_fox_malformed_entries_are_named_by_index(tmp_path, entry, message):
    _png(tmp_path / "a.png")
    (tmp_path / "en_page_ocr.json").write_text(json.dumps([_fox_entry("a.png", "ok") | {"image": "b.png"}, entry]))
    _png(tmp_path / "b.png")
    with pytest.raises(BenchmarkFormatError, match=r"en_page_ocr.json\[1\].*" + message):
        read_fox(tmp_path / "en_page_ocr.json")


def test_fox_unreadable_json(tmp_path):
    (tmp_path / "en_page_ocr.json").write_text("[{")
    with pytest.raises(BenchmarkFormatError, match="cannot read Fox JSON"):
        read_fox(tmp_path / "en_page_ocr.json")


# ----------------------------------------------------------------------------- OmniDocBench
def _omni_page(image, blocks, language="english", relations=()):
    return {"page_info": {"image_path": image, "width": 1000, "height": 1400,
                          "page_attribute": {"language": language, "data_source": "book", "layout": "single_column"}},
            "layout_dets": blocks, "extra": {"relation": list(relations)}}


def _block(category, order, anno, **fields):
    return {"category_type": category, "order": order, "anno_id": anno, "poly": [0, 0, 10, 0, 10, 10, 0, 10],
            "ignore": False, **fields}


BLOCKS = [
    _block("header", 0, 1, text="Journal header"),
    _block("title", 1, 2, text="Results"),
    _block("text_block", 2, 3, text="The first part of a"),
    _block("table", 3, 4, html="<table><tr><td>1</td></tr></table>"),
    _block("equation_isolated", 4, 5, latex="$$x^2$$"),
    _block("text_block", 5, 6, text="paragraph, continued."),
    _block("text_block", None, 7, text="unplaced"),
]


def test_omnidocbench_text_target(tmp_path):
    _png(tmp_path / "images" / "p1.png")
    relation = {"source_anno_id": 3, "target_anno_id": 6, "relation": "truncated"}
    (tmp_path / "OmniDocBench.json").write_text(json.dumps([_omni_page("p1.png", BLOCKS, relations=[relation])]))
    pages, notes = read_omnidocbench(tmp_path / "OmniDocBench.json")
    (page,) = pages
    # Header dropped, title without '#', table and formula left out, the truncated pair joined
    # with a space, the unordered block left out (and noted).
    assert page.reference == "Results\n\nThe first part of a paragraph, continued."
    assert page.language == "en" and page.id == "p1.png"
    assert page.meta == {"benchmark": "omnidocbench", "target": "text", "data_source": "book",
                         "layout": "single_column"}
    assert any("without 'order'" in n for n in notes)


def test_omnidocbench_markdown_target_and_text_free_pages(tmp_path):
    _png(tmp_path / "images" / "p1.png")
    _png(tmp_path / "images" / "p2.png")
    only_table = [_block("table", 1, 1, html="<table></table>")]
    (tmp_path / "OmniDocBench.json").write_text(json.dumps(
        [_omni_page("p1.png", BLOCKS[:6], language="simplified_chinese"), _omni_page("p2.png", only_table)]))
    (page, table_page), _ = read_omnidocbench(tmp_path / "OmniDocBench.json", target="markdown")
    assert page.reference == ("# Results\n\nThe first part of a\n\n<table><tr><td>1</td></tr></table>\n\n"
                              "\\[x^2\\]\n\nparagraph, continued.")
    assert page.language == "zh"
    assert table_page.reference == "<table></table>"
    text_pages, notes = read_omnidocbench(tmp_path / "OmniDocBench.json", target="text")
    assert [p.id for p in text_pages] == ["p1.png"]
    assert any("p2.png" in n and "no text block" in n for n in notes)


def test_omnidocbench_errors(tmp_path):
    path = tmp_path / "OmniDocBench.json"
    path.write_text(json.dumps([_omni_page("missing.png", BLOCKS[:3])]))
    with pytest.raises(BenchmarkFormatError, match="missing.png.*not found.*--image-root"):
        read_omnidocbench(path)
    _png(tmp_path / "images" / "p1.png")
    path.write_text(json.dumps([_omni_page("p1.png", [_block("text_block", 1, 1)])]))
    with pytest.raises(BenchmarkFormatError, match=r"\[0\] \(p1.png\).*has no 'text'"):
        read_omnidocbench(path)
    path.write_text(json.dumps([{"layout_dets": []}]))
    with pytest.raises(BenchmarkFormatError, match="page_info"):
        read_omnidocbench(path)
    with pytest.raises(BenchmarkFormatError, match="target must be"):
        read_omnidocbench(path, target="html")


# ----------------------------------------------------------------------------- every source
def test_detection_and_generic_formats(tmp_path):
    folder = tmp_path / "pages"
    _png(folder / "page2.png")
    _png(folder / "page10.png")
    (folder / "page2.png").with_suffix(".md").write_text("Second page\n")
    (folder / "page10.png").with_suffix(".txt").write_text("Tenth page")
    assert detect_format(folder) == "folder"
    pages, _ = load_pages([folder])
    assert [(p.id, p.reference) for p in pages] == [("page2.png", "Second page"), ("page10.png", "Tenth page")]

    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text(json.dumps({"messages": [{"role": "<|User|>", "content": "<image>\nFree OCR."},
                                              {"role": "<|Assistant|>", "content": "你好"}],
                                 "images": ["pages/page2.png"]}) + "\n")
    assert detect_format(jsonl) == "jsonl"
    (page,), _ = load_pages([jsonl])
    assert page.reference == "你好" and page.language == "zh" and page.id == "pages/page2.png"

    fox = tmp_path / "fox.json"
    fox.write_text(json.dumps([_fox_entry("pages/page2.png", "x")]))
    omni = tmp_path / "omni.json"
    omni.write_text(json.dumps([_omni_page("p.png", [])]))
    assert detect_format(fox) == "fox" and detect_format(omni) == "omnidocbench"
    with pytest.raises(BenchmarkFormatError, match="cannot tell the format"):
        detect_format(folder / "page2.md")


def test_load_pages_refuses_duplicates_and_takes_seeded_subsets(tmp_path):
    for i in range(1, 7):
        _png(tmp_path / f"en_{i}.png")
    entries = [_fox_entry(f"en_{i}.png", f"page {i}") for i in range(1, 7)]
    (tmp_path / "en_a.json").write_text(json.dumps(entries))
    (tmp_path / "en_b.json").write_text(json.dumps(entries[:1]))
    with pytest.raises(BenchmarkFormatError, match="page id 'en_1.png' is also"):
        load_pages([tmp_path / "en_a.json", tmp_path / "en_b.json"])
    first, notes = load_pages([tmp_path / "en_a.json"], max_pages=3, seed=5)
    again, _ = load_pages([tmp_path / "en_a.json"], max_pages=3, seed=5)
    assert [p.id for p in first] == [p.id for p in again] and len(first) == 3
    order = [int(p.id[3:-4]) for p in first]
    assert order == sorted(order)  # a subset keeps the benchmark's order
    assert "3 of 6 pages kept" in notes[0]
    with pytest.raises(BenchmarkFormatError, match="no such file"):
        load_pages([tmp_path / "absent.json"])
    with pytest.raises(BenchmarkFormatError, match="--format"):
        load_pages([tmp_path / "en_a.json"], format="xml")
