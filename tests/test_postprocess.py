"""Grounding parser, markdown and drawn page, on handwritten model outputs.

Expected pixel boxes are computed by hand in the comments (`v * size / 999`, truncated) on an
850 x 1100 page, so that x and y scale differently. Crops are checked against the formula that
generated the page's pixels, not against `Image.crop`.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deepseek_ocr.postprocess import (EOS_STRING, GroundingSpan, combine_pages, draw_boxes,
                                      label_color, parse_box_list, parse_grounding, render_page,
                                      scale_box)
from deepseek_ocr.postprocess.drawing import label_height

W, H = 850, 1100

DOC = (
    "<|ref|>title<|/ref|><|det|>[[62, 40, 513, 77]]<|/det|>\n"
    "# Quarterly Report\n\n"
    "<|ref|>text<|/ref|><|det|>[[62, 110, 930, 190]]<|/det|>\n"
    "Revenue grew 12% ...\n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 300, 600, 700]]<|/det|>\n\n"
    "<|ref|>table<|/ref|><|det|>[[62, 720, 930, 950], [10, 20, 30, 40]]<|/det|>\n"
    "<table><tr><td>...</td></tr></table>"
)


def pattern(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The test page's pixel at (x, y): (H, W) grids -> (H, W, 3) uint8."""
    return np.stack([x % 256, y % 256, (7 * x + 3 * y) % 256], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def page() -> Image.Image:
    ys, xs = np.mgrid[0:H, 0:W]
    return Image.fromarray(pattern(xs, ys), "RGB")


# --- parsing ---------------------------------------------------------------------------------

def test_parse_document_spans():
    spans, malformed = parse_grounding(DOC)
    assert malformed == []
    assert [s.label for s in spans] == ["title", "text", "image", "table"]
    assert spans[0].boxes == [(62, 40, 513, 77)]
    assert spans[3].boxes == [(62, 720, 930, 950), (10, 20, 30, 40)]
    assert [s.text for s in spans] == ["# Quarterly Report", "Revenue grew 12% ...", "",
                                       "<table><tr><td>...</td></tr></table>"]
    # Offsets: the title span is the first 54 characters (7 + 5 + 8 + 7 + 19 + 8).
    assert (spans[0].start, spans[0].end) == (0, 54)
    for s in spans:
        assert DOC[s.start:s.end] == s.raw
        assert s.raw.startswith("<|ref|>") and s.raw.endswith("<|/det|>")


def test_parse_box_list_is_whitespace_tolerant_and_strict():
    assert parse_box_list(" [ [ 1 ,2,\t3 , 4 ] ,[5,6,7,  8] ]  ") == [(1, 2, 3, 4), (5, 6, 7, 8)]
    assert parse_box_list("[[0,0,999,999]]") == [(0, 0, 999, 999)]
    assert parse_box_list("[[-5, 10, 1200, 30]]") == [(-5, 10, 1200, 30)]  # range is not syntax
    for bad in ["", "[]", "[[]]", "[1, 2, 3, 4]", "[[1, 2, 3]]", "[[1, 2, 3, 4, 5]]",
                "[[1, 2, 3, 4],]", "[[1, 2, 3, 4]] x", "[[1.0, 2, 3, 4]]", "[[a, 2, 3, 4]]",
                "[[[1, 2, 3, 4]]]", "[[1, 2, 3, 4]", "[[1,,3,4]]", "[[+1, 2, 3, 4]]",
                "[[1 2, 3, 4]]", "[(1, 2, 3, 4)]", "[[0x1, 2, 3, 4]]", "__import__('os')"]:
        with pytest.raises(ValueError):
            parse_box_list(bad)


def test_locate_output_is_spans_alone():
    text = "<|ref|>the red car<|/ref|><|det|>[[10, 20, 500, 600], [600, 20, 990, 600]]<|/det|>"
    spans, malformed = parse_grounding(text)
    assert malformed == []
    assert spans == [GroundingSpan(label="the red car", boxes=[(10, 20, 500, 600),
                                                               (600, 20, 990, 600)],
                                   start=0, end=len(text), raw=text, text="")]
    out = render_page(text, Image.new("RGB", (W, H), "white"))
    assert out.markdown == ""
    # 10*850/999 = 8.5, 20*1100/999 = 22.0, 500*850/999 = 425.4, 600*1100/999 = 660.7;
    # 600*850/999 = 510.5, 990*850/999 = 842.3.
    assert [b["box"] for b in out.boxes] == [[8, 22, 425, 660], [510, 22, 842, 660]]
    assert {b["label"] for b in out.boxes} == {"the red car"}
    assert out.crops == [] and out.problems == []


def test_empty_and_span_free_output(page):
    for text in ["", "Just text,\nno spans at all. $x \\coloneqq 1$"]:
        out = render_page(text, page)
        assert out.markdown == text.replace("\\coloneqq", ":=")
        assert out.boxes == [] and out.crops == [] and out.problems == []
        assert np.array_equal(np.asarray(out.drawn), np.asarray(page))
    assert parse_grounding("") == ([], [])


# --- scaling ---------------------------------------------------------------------------------

def test_scale_box_on_non_square_page():
    # x: 62*850/999 = 52.75 -> 52, 513*850/999 = 436.49 -> 436;
    # y: 40*1100/999 = 44.04 -> 44, 77*1100/999 = 84.78 -> 84.
    assert scale_box((62, 40, 513, 77), W, H) == (52, 44, 436, 84)
    # 930*850/999 = 791.29, 950*1100/999 = 1046.05, 720*1100/999 = 792.79
    assert scale_box((62, 720, 930, 950), W, H) == (52, 792, 791, 1046)
    assert scale_box((0, 0, 999, 999), W, H) == (0, 0, 850, 1100)


def test_scale_box_orders_and_clamps():
    # Reversed corners give the same box as ordered ones: 100*850/999 = 85.09, 300*1100/999 =
    # 330.33, 600*850/999 = 510.51, 700*1100/999 = 770.77.
    assert scale_box((600, 700, 100, 300), W, H) == (85, 330, 510, 770)
    assert scale_box((600, 300, 100, 700), W, H) == (85, 330, 510, 770)
    # Out-of-range values clamp to 0..999, i.e. to the page edges.
    assert scale_box((-5, 100, 1200, 5000), W, H) == (0, 110, 850, 1100)


def test_scale_box_matches_the_official_formula():
    # The official code computes int(v / 999 * size) in floating point; parity needs the same
    # result also where v * size / 999 is an integer (e.g. 333 * 999 / 999).
    for size in (1, 7, 640, 850, 999, 1100, 4032):
        for v in range(0, 1000, 37):
            x = scale_box((v, 0, v, 0), size, 10)[0]
            assert x == int(v / 999 * size), (v, size)


# --- markdown, crops, problems ---------------------------------------------------------------

def test_render_document_markdown_and_boxes(page):
    out = render_page(DOC + EOS_STRING, page, page_name="p1")
    assert out.raw == DOC + EOS_STRING
    assert out.markdown == ("\n# Quarterly Report\n\n\nRevenue grew 12% ...\n\n"
                            "![](images/p1-0.jpg)\n\n\n\n<table><tr><td>...</td></tr></table>")
    assert out.problems == []
    assert [(b["label"], b["box"], b["crop"]) for b in out.boxes] == [
        ("title", [52, 44, 436, 84], None),
        # 110*1100/999 = 121.12, 190*1100/999 = 209.21
        ("text", [52, 121, 791, 209], None),
        ("image", [85, 330, 510, 770], "images/p1-0.jpg"),
        ("table", [52, 792, 791, 1046], None),
        # 10*850/999 = 8.51, 20*1100/999 = 22.02, 30*850/999 = 25.53, 40*1100/999 = 44.04
        ("table", [8, 22, 25, 44], None),
    ]
    assert out.boxes[3]["box_norm"] == [62, 720, 930, 950]
    assert out.boxes[3]["text"] == out.boxes[4]["text"] == "<table><tr><td>...</td></tr></table>"


def test_image_crop_size_and_pixels(page):
    out = render_page(DOC, page, page_name="p1")
    [(name, crop)] = out.crops
    assert name == "images/p1-0.jpg"
    # Box (85, 330, 510, 770): 425 x 440 pixels, right and bottom edges exclusive.
    assert crop.size == (425, 440) and crop.mode == "RGB"
    ys, xs = np.mgrid[330:770, 85:510]
    assert np.array_equal(np.asarray(crop), pattern(xs, ys))


def test_several_image_boxes_link_every_crop(page):
    text = ("<|ref|>image<|/ref|><|det|>[[0, 0, 100, 100], [200, 200, 300, 300]]<|/det|>\n"
            "<|ref|>image<|/ref|><|det|>[[500, 500, 600, 600]]<|/det|>\nend")
    out = render_page(text, page, page_name="doc-3", images_dir="figs")
    assert out.markdown == ("![](figs/doc-3-0.jpg)\n![](figs/doc-3-1.jpg)\n\n"
                            "![](figs/doc-3-2.jpg)\n\nend")
    assert [n for n, _ in out.crops] == ["figs/doc-3-0.jpg", "figs/doc-3-1.jpg", "figs/doc-3-2.jpg"]
    assert [b["crop"] for b in out.boxes] == [n for n, _ in out.crops]
    # 100*850/999 = 85.09, 100*1100/999 = 110.11
    assert out.crops[0][1].size == (85, 110)


def test_empty_image_box_is_reported_not_cropped(page):
    out = render_page("<|ref|>image<|/ref|><|det|>[[100, 100, 100, 500]]<|/det|>\nx", page)
    assert out.crops == [] and out.boxes[0]["crop"] is None
    assert out.markdown == "\nx"
    assert len(out.problems) == 1 and "empty" in out.problems[0]


def test_fixups_eos_and_reversed_or_large_boxes(page):
    text = ("<|ref|>equation<|/ref|><|det|>[[600, 700, 100, 300]]<|/det|>\n"
            "$$a \\coloneqq b, \\quad c \\eqqcolon d$$\n"
            "<|ref|>text<|/ref|><|det|>[[500, 100, 1200, 999]]<|/det|>\nwide" + EOS_STRING)
    out = render_page(text, page)
    assert out.markdown == "\n$$a := b, \\quad c =: d$$\n\nwide"
    assert out.boxes[0]["box"] == [85, 330, 510, 770]
    assert out.boxes[0]["box_norm"] == [100, 300, 600, 700]
    # 500*850/999 = 425.43, 100*1100/999 = 110.11; 1200 clamps to 999 -> 850.
    assert out.boxes[1]["box"] == [425, 110, 850, 1100]
    assert out.boxes[1]["box_norm"] == [500, 100, 999, 999]
    assert len(out.problems) == 1 and "1200" in out.problems[0]


def test_eos_only_stripped_once_and_inner_eos_reported():
    page = Image.new("RGB", (10, 10))
    assert render_page("done" + EOS_STRING, page).markdown == "done"
    out = render_page("a" + EOS_STRING + "b" + EOS_STRING, page)
    assert out.markdown == "ab" and len(out.problems) == 1


GOOD = "<|ref|>text<|/ref|><|det|>[[10, 20, 30, 40]]<|/det|>\nGood.\n"
MALFORMED = [
    ("<|ref|>tit", "unclosed <|ref|>"),  # truncated at max_new_tokens inside the label
    ("<|ref|>text<|/ref|><|det|>[[1, 2, 3", "unclosed <|det|>"),  # truncated in the boxes
    ("<|ref|>title\n# Heading", "unclosed <|ref|>"),
    ("<|ref|>text<|/ref|><|det|>[[a, 2, 3, 4]]<|/det|>", "not an integer"),
    ("<|ref|>text<|/ref|><|det|>[[1.5, 2, 3, 4]]<|/det|>", "not an integer"),
    ("<|ref|>text<|/ref|><|det|>[[1, 2, 3]]<|/det|>", "3 numbers"),
    ("<|ref|>text<|/ref|><|det|>[[[1, 2, 3, 4]]]<|/det|>", "nested brackets"),
    ("<|ref|>text<|/ref|><|det|>[1, 2, 3, 4]<|/det|>", "flat list"),
    ("<|ref|>text<|/ref|><|det|>[]<|/det|>", "empty list"),
    ("<|ref|>text<|/ref|>no det", "not followed by <|det|>"),
    ("a stray <|/det|> tag", "stray <|/det|>"),
    ("<|det|>[[1, 2, 3, 4]]<|/det|>", "without a <|ref|>"),
]


@pytest.mark.parametrize("bad,reason", MALFORMED)
def test_malformed_spans_kept_as_text_and_reported(bad, reason):
    text = GOOD + bad
    spans, malformed = parse_grounding(text)
    assert [s.label for s in spans] == ["text"]
    # The good span's text runs up to the next markup, well-formed or not.
    assert spans[0].text == ("Good.\n" + bad[:bad.index("<|")]).strip()
    assert len(malformed) == 1 and reason in malformed[0].reason
    m = malformed[0]
    assert text[m.start:m.end] == m.raw and bad.find(m.raw) >= 0
    out = render_page(text, Image.new("RGB", (100, 100), "white"))
    assert out.markdown == "\nGood.\n" + bad
    assert len(out.problems) == 1 and reason in out.problems[0]
    # 10*100/999 = 1.001, 20*100/999 = 2.002, 30*100/999 = 3.003, 40*100/999 = 4.004
    assert [b["box"] for b in out.boxes] == [[1, 2, 3, 4]]


def test_label_broken_by_line_reports_every_piece():
    text = "<|ref|>ti\ntle<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nbody"
    spans, malformed = parse_grounding(text)
    assert spans == []
    assert [m.raw for m in malformed] == ["<|ref|>ti", "<|/ref|>", "<|det|>[[1, 2, 3, 4]]<|/det|>"]
    assert render_page(text, Image.new("RGB", (8, 8))).markdown == text


# --- drawing ---------------------------------------------------------------------------------

def test_label_colours_are_deterministic_and_distinct():
    assert label_color("title") == label_color("title")
    assert len({label_color(x) for x in ["title", "text", "image", "table"]}) == 4
    for r, g, b in map(label_color, ["title", "text", "image", "table", "", "ß"]):
        assert 0 <= r < 200 and 0 <= g < 200 and 0 <= b < 256


def test_drawn_page_differs_exactly_inside_boxes_and_labels():
    page = Image.new("RGB", (200, 120), "white")
    boxes = [("title", (40, 50, 120, 100)), ("text", (130, 60, 190, 110))]
    drawn = draw_boxes(page, boxes)
    assert drawn.size == page.size and drawn.mode == "RGB"
    assert np.array_equal(np.asarray(page), np.full((120, 200, 3), 255))  # page untouched
    changed = (np.asarray(drawn) != 255).any(axis=-1)  # (H, W)

    allowed = np.zeros_like(changed)
    for label, (x1, y1, x2, y2) in boxes:
        # Every pixel of the box is tinted (fill alpha 20 on white moves a channel < 200 by 4+).
        assert changed[y1:y2 + 1, x1:x2 + 1].all(), label
        allowed[y1:y2 + 1, x1:x2 + 1] = True
        # The label: at most 20 rows above the box, 10 px per character wide.
        strip = changed[y1 - 20:y1, x1:x1 + 10 * len(label)]
        assert strip.any(), label
        allowed[y1 - 20:y1, x1:x1 + 10 * len(label)] = True
    assert not (changed & ~allowed).any()

    px = drawn.load()
    title, text = label_color("title"), label_color("text")
    # Outlines: 4 px for the title, 2 px for other labels, drawn inwards.
    assert px[40, 75] == px[43, 75] == px[80, 100] == title
    assert px[44, 75] != title and px[131, 80] == text and px[132, 80] != text
    # Fill: white blended with the colour at alpha 20/255.
    expected = [(c * 20 + 255 * 235) / 255 for c in title]
    assert np.allclose(px[80, 75], expected, atol=1)
    # Just outside the boxes (and below the labels) the page is unchanged.
    for xy in [(39, 75), (121, 75), (80, 101), (129, 80), (191, 80), (160, 111), (10, 10)]:
        assert px[xy] == (255, 255, 255), xy
    assert 10 <= label_height() <= 20


def test_render_page_draws_its_boxes_and_converts_modes():
    page = Image.new("RGBA", (W, H), (255, 255, 255, 0))
    out = render_page("<|ref|>image<|/ref|><|det|>[[100, 300, 600, 700]]<|/det|>", page)
    assert out.drawn.mode == "RGB" and out.crops[0][1].mode == "RGB"
    px = out.drawn.load()
    # Box (85, 330, 510, 770): outline at its corners, the page outside it.
    assert px[85, 400] == px[510, 770] == label_color("image")
    assert px[84, 400] == px[511, 400] == px[300, 771] == (255, 255, 255)


def test_render_page_rejects_bad_arguments(page):
    with pytest.raises(TypeError):
        render_page("x", np.zeros((4, 4, 3)))
    for name in ["", "..", "a/b", "a\\b"]:
        with pytest.raises(ValueError):
            render_page("x", page, page_name=name)


def test_combine_pages():
    sep = "\n\n<--- Page Split --->\n\n"
    assert combine_pages(["# One", "Two", ""]) == "# One" + sep + "Two" + sep
    assert combine_pages(["only"]) == "only"
    assert combine_pages([]) == ""
