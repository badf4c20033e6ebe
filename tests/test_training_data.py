"""Training data: every reader on hand-written files (bad records included), the lazy dataset
and its length policy, the resumable sampler, and the OmniDocBench converter."""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from deepseek_ocr.ocr import DeepseekOCR
from deepseek_ocr.postprocess.grounding import parse_grounding
from deepseek_ocr.processing.image_io import DEFAULT_MAX_PIXELS
from deepseek_ocr.processing.tokenizer import Tokenizer
from deepseek_ocr.processing.views import MODES, Mode
from deepseek_ocr.training.data import (DataError, SampleDataset, SampleOrder, count_tokens,
                                        encode_samples, read_conversations, read_dataset,
                                        read_folder, read_jsonl, read_messages, read_parquet)
from deepseek_ocr.training.data.omnidocbench import convert, convert_page, main, scale_poly

ASSETS = Path(__file__).resolve().parent.parent / "deepseek_ocr" / "assets" / "tokenizer"


class TinyOCR:
    """`DeepseekOCR.prepare` without a network: the same code path, the small tokenizer."""

    prepare = DeepseekOCR.prepare

    def __init__(self):
        self.tokenizer = Tokenizer.from_folder(ASSETS)
        self.max_pixels = DEFAULT_MAX_PIXELS


@pytest.fixture(scope="module")
def model():
    return TinyOCR()


def png(size=(64, 48), color=(200, 30, 30), fmt="PNG", exif_orientation=None) -> bytes:
    buf = io.BytesIO()
    image = Image.new("RGB", size, color)
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(buf, fmt, exif=exif.tobytes())
    else:
        image.save(buf, fmt)
    return buf.getvalue()


def write_jsonl(path: Path, records) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def conv(user="Free OCR.", answer="hello", images=("a.png",), **extra):
    turn = {"role": "<|User|>", "content": user}
    if images is not None:
        turn["images"] = list(images)
    return {"id": "x", "conversations": [turn, {"role": "<|Assistant|>", "content": answer}], **extra}


def msgs(user="<image>Free OCR.", answer="hello", images=("a.png",), **extra):
    record = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
    if images is not None:
        record["images"] = list(images)
    return {**record, **extra}


@pytest.fixture
def data(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png())
    (tmp_path / "imgs" / "wide.png").write_bytes(png((1000, 700)))
    (tmp_path / "imgs" / "notimage.png").write_bytes(b"this is text, not a png")
    return tmp_path


# ------------------------------------------------------------------------------ conversations
def test_conversations_valid(data):
    path = write_jsonl(data / "train.jsonl", [
        conv(images=["imgs/a.png"]),                                   # <image>\n prefixed
        conv(user="<image>\nRead it.", images=["imgs/wide.png"], mode="tiny"),
        conv(user="What is 2+2?", answer="4", images=None),            # text-only
        conv(user="Free OCR.", images=[], mode="1024:640:crop"),       # empty list: text-only
    ])
    samples, report = read_conversations(path)
    assert report.kept == 4 and not report.skipped
    a, b, c, d = samples
    assert a.prompt == "<image>\nFree OCR." and a.image == data / "imgs" / "a.png" and a.image_size == (64, 48)
    assert a.source == f"{path}:1" and a.id == "x" and a.mode is None
    assert b.prompt == "<image>\nRead it." and b.mode == MODES["tiny"]
    assert c.image is None and c.prompt == "What is 2+2?" and c.answer == "4"
    assert d.mode == Mode(1024, 640, True, name="1024:640:crop")


def test_image_root_overrides_the_file_folder(data):
    path = write_jsonl(data / "train.jsonl", [conv(images=["a.png"])])
    samples, _ = read_conversations(path, image_root=data / "imgs")
    assert samples[0].image == data / "imgs" / "a.png"


BAD = {
    "not json": ("{not json", "not valid JSON"),
    "not an object": ("[1, 2]", "must be a JSON object"),
    "no turns key": ({"id": 1, "turns": []}, "expected a 'conversations' or 'messages'"),
    "content not a string": (conv(user=["x"], images=["imgs/a.png"]), "must be a string"),
    "unknown role": ({"conversations": [{"role": "bot", "content": "x"}]}, "unknown role 'bot'"),
    "system turn": ({"conversations": [{"role": "system", "content": "x"}, *conv()["conversations"]]},
                    "system turns are not supported"),
    "multi-turn": ({"conversations": conv()["conversations"] * 2}, "multi-turn records are not supported"),
    "missing content": ({"conversations": [{"role": "<|User|>"}]}, "has no 'content'"),
    "image file missing": (conv(images=["imgs/nope.png"]), "image file not found"),
    "not an image": (conv(images=["imgs/notimage.png"]), "not a readable image"),
    "two images": (conv(images=["imgs/a.png", "imgs/wide.png"]), "at most one image per sample"),
    "two tags": (conv(user="<image><image>x", images=["imgs/a.png"]), "2 '<image>' tags"),
    "tag without image": (conv(user="<image>x", images=None), "but the sample has no image"),
    "empty answer": (conv(answer="  \n", images=["imgs/a.png"]), "is empty"),
    "answer not a string": (conv(answer=3, images=["imgs/a.png"]), "must be a string"),
    "bad mode": (conv(images=["imgs/a.png"], mode="huge"), "bad mode"),
    "mode not a string": (conv(images=["imgs/a.png"], mode=3), "'mode' must be a string"),
    "images not a list": (conv(images=["imgs/a.png"]) | {"images": "imgs/a.png"}, None),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_conversations_bad_record_stop_and_skip(data, name):
    record, message = BAD[name]
    path = write_jsonl(data / "bad.jsonl", [conv(images=["imgs/a.png"]), record, conv(images=["imgs/a.png"])])
    if message is None:  # images given in the turn and as a (malformed) record field
        message = "'images' must be a list"
    with pytest.raises(DataError, match=message) as info:
        read_conversations(path)
    assert str(info.value).startswith(f"{path}:2: ")
    assert info.value.source == f"{path}:2"
    samples, report = read_conversations(path, on_error="skip")
    assert [s.source for s in samples] == [f"{path}:1", f"{path}:3"]
    assert report.kept == 2 and [s.source for s in report.skipped] == [f"{path}:2"]
    assert re.search(message, report.skipped[0].reason)


def test_skip_counts_every_bad_record_and_blank_lines_are_not_records(data):
    path = write_jsonl(data / "mixed.jsonl", [
        conv(images=["imgs/a.png"]), "", conv(images=["imgs/nope.png"]), "{", conv(answer="", images=None),
        conv(images=None, user="plain", answer="text"),
    ])
    samples, report = read_jsonl(path, on_error="skip")
    assert len(samples) == 2 and report.kept == 2
    assert [s.source for s in report.skipped] == [f"{path}:3", f"{path}:4", f"{path}:5"]
    assert "3 left out" in report.summary() and f"{path}:4" in report.summary()
    with pytest.raises(ValueError, match="on_error"):
        read_jsonl(path, on_error="ignore")


# ----------------------------------------------------------------------------------- messages
def test_messages_formats_and_inline_images(data):
    raw = png((40, 30), (0, 0, 255))
    b64 = base64.b64encode(raw).decode()
    path = write_jsonl(data / "m.jsonl", [
        msgs(images=["imgs/a.png"]),
        msgs(images=[{"bytes": b64, "path": None}]),
        msgs(images=None, user="OCR:") | {"images": [f"data:image/png;base64,{b64}"]},
        {"messages": [{"role": "<|User|>", "content": "<image>\nFree OCR."},       # Unsloth
                      {"role": "<|Assistant|>", "content": "hi"}], "image": "imgs/wide.png"},
        {"messages": [{"role": "user", "content": "x", "images": [{"bytes": b64}]},  # image in the turn
                      {"role": "assistant", "content": "hi"}]},
        {"messages": [{"role": "assistant", "content": "only the target"}], "images": ["imgs/a.png"],
         "prompt": "<image>Transcribe.", "mode": "base"},
        {"messages": [{"role": "assistant", "content": "default prompt"}], "images": ["imgs/a.png"]},
        msgs(user="Say hi.", answer="hi", images=None),
    ])
    samples, report = read_messages(path)
    assert report.kept == 8
    assert samples[0].prompt == "<image>Free OCR." and samples[0].image == data / "imgs" / "a.png"
    assert samples[1].image == raw and samples[1].image_size == (40, 30)
    assert samples[2].image == raw and samples[2].prompt == "<image>\nOCR:"
    assert samples[3].image == data / "imgs" / "wide.png" and samples[3].image_size == (1000, 700)
    assert samples[4].image == raw and samples[4].prompt == "<image>\nx"
    assert samples[5].prompt == "<image>Transcribe." and samples[5].mode == MODES["base"]
    assert samples[6].prompt == "<image>\nFree OCR."
    assert samples[7].image is None and samples[7].prompt == "Say hi."


@pytest.mark.parametrize("record, message", [
    (msgs(images=[{"bytes": "@@not base64@@"}]), "undecodable base64"),
    (msgs(images=["data:image/png;base64,%%%"]), "undecodable base64"),
    (msgs(images=["data:image/png,abc"]), "data URL must be"),
    (msgs(images=[{"bytes": base64.b64encode(b"garbage").decode()}]), "not a readable image"),
    (msgs(images=["https://example.com/a.png"]), "URLs are not fetched"),
    (msgs(images=[{"url": "x"}]), "unknown key"),
    (msgs(images=[3]), "image must be a path"),
    (msgs(images=["imgs/a.png"]) | {"prompt": "p"}, "both a user turn and a 'prompt'"),
    ({"messages": [{"role": "user", "content": "<image>", "images": ["imgs/a.png"]},
                   {"role": "assistant", "content": "x"}], "images": ["imgs/a.png"]}, "both in the record and"),
    ({"messages": [{"role": "user", "content": "<image>"},
                   {"role": "assistant", "content": "x", "images": ["imgs/a.png"]}]}, "assistant turn carries images"),
    (msgs() | {"image": "imgs/a.png"}, "both 'images' and 'image'"),
    (conv(images=["imgs/a.png"]), "expected the messages format"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}, "one user turn followed"),
])
def test_messages_bad_records(data, record, message):
    path = write_jsonl(data / "bad.jsonl", [msgs(images=["imgs/a.png"]), record])
    with pytest.raises(DataError, match=message) as info:
        read_messages(path)
    assert info.value.source == f"{path}:2"
    samples, report = read_messages(path, on_error="skip")
    assert len(samples) == 1 and [s.source for s in report.skipped] == [f"{path}:2"]


def test_json_list_file_and_auto_format(data):
    path = data / "fox.json"
    path.write_text(json.dumps([
        {"image": "imgs/a.png", "conversations": [{"from": "human", "value": "<image>\nOCR this image: "},
                                                  {"from": "gpt", "value": "GT"}]},
        {"conversations": [{"from": "human", "value": "hi"}]},
    ]))
    with pytest.raises(DataError, match=r"fox.json:record 2: .*turns \['user'\]"):
        read_dataset(path)
    samples, report = read_dataset(path, on_error="skip")
    assert samples[0].prompt == "<image>\nOCR this image: " and samples[0].answer == "GT"
    assert report.skipped[0].source == f"{path}:record 2"


# ------------------------------------------------------------------------------------ parquet
def test_parquet_as_hf_datasets_writes_it(data):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    raw = png((50, 40))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "image": pa.array([{"bytes": raw, "path": "ignored.png"}, {"bytes": None, "path": "imgs/a.png"},
                           None, {"bytes": None, "path": None}, {"bytes": b"junk", "path": None},
                           {"bytes": raw, "path": None}], type=image_type),
        "text": ["first", "second", "text only", "also text only", "bad image", ""],
        "prompt": [None, "<image>Read.", "Answer:", None, None, None],
        "mode": ["tiny", None, None, "1024:1024", None, None],
    })
    path = data / "train-00000.parquet"
    pq.write_table(table, path, row_group_size=2)  # rows cross row groups and batches
    with pytest.raises(DataError, match=r"row 4: not a readable image"):
        read_parquet(path, prompt_column="prompt", mode_column="mode")
    samples, report = read_parquet(path, prompt_column="prompt", mode_column="mode", on_error="skip")
    assert report.kept == 4
    assert [s.source for s in report.skipped] == [f"{path}:row 4", f"{path}:row 5"]
    assert "is empty" in report.skipped[1].reason
    s0, s1, s2, s3 = samples
    assert s0.image == raw and s0.prompt == "<image>\nFree OCR." and s0.mode == MODES["tiny"]
    assert s0.source == f"{path}:row 0" and s0.answer == "first"
    assert s1.image == data / "imgs" / "a.png" and s1.prompt == "<image>Read."
    assert s2.image is None and s2.prompt == "Answer:"
    # the default prompt loses its <image> for a text-only row
    assert s3.image is None and s3.prompt == "Free OCR." and s3.mode == Mode(1024, 1024, False, name="1024:1024")
    with pytest.raises(DataError, match=r"no column\(s\) \['transcription'\]"):
        read_parquet(path, text_column="transcription", on_error="skip")
    samples, _ = read_dataset(data, on_error="skip")  # a folder of shards
    assert len(samples) == 4


# ------------------------------------------------------------------------------------- folder
def test_folder_of_pages(tmp_path):
    for name in ("page10.png", "page2.jpg", "page1.png", "lost.png", "both.png"):
        (tmp_path / name).write_bytes(png(fmt="JPEG" if name.endswith("jpg") else "PNG"))
    (tmp_path / "page1.md").write_text("\ufeff# Page one\n\n", encoding="utf-8")
    (tmp_path / "page2.txt").write_text("page two\n", encoding="utf-8")
    (tmp_path / "page10.md").write_text("page ten", encoding="utf-8")
    (tmp_path / "both.md").write_text("x")
    (tmp_path / "both.txt").write_text("x")
    (tmp_path / "README.md").write_text("notes")
    with pytest.raises(DataError, match=r"both.png: two targets"):
        read_folder(tmp_path)
    samples, report = read_folder(tmp_path, on_error="skip", prompt="Read the page.", mode="small")
    assert [Path(s.source).name for s in samples] == ["page1.png", "page2.jpg", "page10.png"]
    assert [s.answer for s in samples] == ["# Page one", "page two", "page ten"]
    assert all(s.prompt == "<image>\nRead the page." and s.mode == MODES["small"] for s in samples)
    assert sorted(Path(s.source).name for s in report.skipped) == ["both.png", "lost.png"]
    assert any("no target" in s.reason for s in report.skipped)
    assert any("README.md" in n for n in report.notes)


# ------------------------------------------------------------------------ dataset and lengths
def test_lengths_match_prepare_without_decoding(model, data):
    rotated = png((900, 300), fmt="JPEG", exif_orientation=6)  # 90 degrees: 300 x 900 upright
    (data / "imgs" / "rot.jpg").write_bytes(rotated)
    path = write_jsonl(data / "t.jsonl", [
        msgs(images=["imgs/a.png"], mode="tiny"),
        msgs(images=["imgs/wide.png"], mode="gundam", answer="a longer answer with words"),
        msgs(images=["imgs/wide.png"], mode="base"),
        msgs(images=["imgs/rot.jpg"], mode="gundam"),
        msgs(images=["imgs/wide.png"], mode="1024:640:crop"),
        msgs(user="no image here", images=None, answer="text only"),
    ])
    samples, _ = read_messages(path)
    assert samples[3].image_size == (300, 900)
    dataset = SampleDataset(model, samples, default_mode="small")
    for i in range(len(dataset)):
        inputs = dataset[i]
        assert inputs.num_tokens == dataset.lengths[i], samples[i].source
        answer_ids = model.tokenizer.encode(samples[i].answer) + [model.tokenizer.eos_id]
        assert inputs.labels[inputs.num_prompt_tokens:].tolist() == answer_ids
        assert (inputs.labels[:inputs.num_prompt_tokens] == -100).all()
        assert inputs.extras["source"] == samples[i].source
    assert dataset[1].crops.shape[0] > 0 and dataset[5].global_view is None
    # counting alone opens headers only: sizes unknown to the sample are read on demand
    samples[1].image_size = None
    assert count_tokens(model.tokenizer, samples[1], MODES["gundam"]) == dataset.lengths[1]


def test_length_policy(model, data):
    path = write_jsonl(data / "t.jsonl", [
        msgs(images=["imgs/a.png"], mode="tiny", answer="short"),
        msgs(images=["imgs/a.png"], mode="base", answer="short"),       # 273 image positions
        msgs(user="text", images=None, answer="fine"),
    ])
    samples, _ = read_messages(path)
    lengths = SampleDataset(model, samples).lengths
    limit = lengths[0]
    assert lengths[1] > limit
    with pytest.raises(DataError, match=rf"t.jsonl:2: {lengths[1]} tokens .* exceed max_length={limit}"):
        SampleDataset(model, samples, max_length=limit)
    dataset = SampleDataset(model, samples, max_length=limit, length_policy="drop")
    assert len(dataset) == 2 and dataset.report.kept == 2
    assert [s.source for s in dataset.report.skipped] == [f"{path}:2"]
    prepared, report = encode_samples(model, samples, max_length=limit, length_policy="drop")
    assert [p.num_tokens for p in prepared] == [lengths[0], lengths[2]]  # nothing cut
    assert len(report.skipped) == 1


def test_prepare_failure_names_the_sample(model, data):
    path = write_jsonl(data / "t.jsonl", [msgs(images=["imgs/a.png"], mode="tiny")])
    samples, _ = read_messages(path)
    dataset = SampleDataset(model, samples)
    (data / "imgs" / "a.png").write_bytes(b"gone bad")
    with pytest.raises(DataError, match=rf"{path}:1: cannot prepare"):
        dataset[0]


# ------------------------------------------------------------------------------------ sampler
def test_sampler_splits_ranks_without_overlap():
    n, world = 23, 4
    orders = [SampleOrder(n, seed=7, rank=r, world_size=world) for r in range(world)]
    epoch0 = [list(o) for o in orders]
    assert all(len(e) == n // world == len(o) for e, o in zip(epoch0, orders))
    flat = [i for e in epoch0 for i in e]
    assert len(set(flat)) == len(flat) == 20
    perm = orders[0].permutation(0).tolist()
    assert sorted(flat) == sorted(perm[:20])
    epoch1 = [list(o) for o in orders]
    assert epoch1 != epoch0 and all(o.epoch == 2 for o in orders)
    assert list(SampleOrder(n, seed=7, rank=1, world_size=world)) == epoch0[1]  # deterministic
    assert list(SampleOrder(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_sampler_resumes_exactly_mid_epoch():
    full = SampleOrder(10, seed=3)
    expected = full.take(27)  # crosses two epoch boundaries
    first = SampleOrder(10, seed=3)
    head = first.take(13)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    resumed = SampleOrder(10, seed=3)
    resumed.load_state_dict(state)
    assert head + resumed.take(14) == expected
    # the iterator form: stop inside an epoch, resume, same indices
    a = SampleOrder(10, seed=3)
    it = iter(a)
    got = [next(it) for _ in range(4)]
    b = SampleOrder(10, seed=3)
    b.load_state_dict(a.state_dict())
    assert got + list(b) == list(SampleOrder(10, seed=3))
    with pytest.raises(DataError, match="n=11"):
        SampleOrder(11, seed=3).load_state_dict(state)


def test_sampler_resumes_on_another_number_of_ranks():
    n = 13  # 4 taken by 2 ranks, then 9 left: 3 for each of 3 ranks
    two = [SampleOrder(n, seed=1, rank=r, world_size=2) for r in range(2)]
    consumed = [i for o in two for i in o.take(2)]   # 4 samples of the epoch
    state = two[0].state_dict()
    three = [SampleOrder(n, seed=1, rank=r, world_size=3) for r in range(3)]
    for o in three:
        o.load_state_dict(state)
    rest = [i for o in three for i in list(o)]
    assert sorted(consumed + rest) == list(range(n))  # every sample once, none twice
    assert all(o.epoch == 1 for o in three)


# ------------------------------------------------------------------------------ OmniDocBench
def omnidoc_pages():
    block = lambda cat, order, poly, **kw: {"category_type": cat, "poly": poly, "order": order,
                                            "ignore": False, **kw}
    page0 = {
        "page_info": {"image_path": "p0.png", "width": 1000, "height": 2000, "page_no": 0},
        "layout_dets": [
            block("text_block", 2, [100, 400, 900, 400, 900, 600, 100, 600], text="first half of", anno_id=3),
            block("title", 1, [100, 100, 900, 100, 900, 200, 100, 200], text="The Title", anno_id=1),
            block("header", None, [0, 0, 1000, 0, 1000, 50, 0, 50], text="Journal header", anno_id=0),
            block("table", 3, [100, 700, 900, 700, 900, 1200, 100, 1200], html="<table><tr><td>1</td></tr></table>",
                  latex="\\begin{tabular}1\\end{tabular}", anno_id=4),
            block("text_block", 5, [500, 1300, 950, 1300, 950, 1500, 500, 1500], text="a paragraph.", anno_id=6),
            block("equation_isolated", 4, [200, 1250, 800, 1250, 800, 1290, 200, 1290], latex="$$E=mc^2$$", anno_id=5),
            block("page_number", 6, [480, 1950, 520, 1950, 520, 1990, 480, 1990], text="7", anno_id=7),
            block("figure", 7, [0, 1600, 500, 1600, 500, 1900, 0, 1900], anno_id=8),
        ],
        "extra": {"relation": [{"source_anno_id": 3, "target_anno_id": 6, "relation_type": "truncated"},
                               {"source_anno_id": 8, "target_anno_id": 4, "relation": "parent_son"}]},
    }
    page1 = {
        "page_info": {"image_path": "p1.png", "width": 500, "height": 500},
        "layout_dets": [block("text_block", 0, [0, 0, 250, 0, 250, 100, 0, 100], text="中文开头", anno_id=0),
                        block("text_block", 1, [0, 200, 250, 200, 250, 300, 0, 300], text="继续", anno_id=1),
                        block("footer", 2, [0, 480, 500, 480, 500, 499, 0, 499], text="footer", anno_id=2)],
        "extra": {"relation": [{"source_anno_id": 0, "target_anno_id": 1, "relation": "truncated"}]},
    }
    return [page0, page1]


def test_omnidocbench_targets(tmp_path):
    pages = omnidoc_pages()
    target = convert_page(pages[0], "p0")
    assert target == ("# The Title\n\nfirst half of a paragraph.\n\n<table><tr><td>1</td></tr></table>"
                      "\n\n\\[E=mc^2\\]")
    assert convert_page(pages[1], "p1") == "中文开头继续"
    assert convert_page(pages[1], "p1", keep_furniture=True) == "中文开头继续\n\nfooter"
    assert "\\begin{tabular}" in convert_page(pages[0], "p0", table_format="latex")


def test_omnidocbench_grounding_boxes_round_trip():
    page = omnidoc_pages()[0]
    target = convert_page(page, "p0", grounding=True, figures=True)
    spans, malformed = parse_grounding(target)
    assert not malformed
    # by hand: x * 999 / 1000 and y * 999 / 2000, truncated
    assert [(s.label, s.boxes, s.text) for s in spans] == [
        ("title", [(99, 49, 899, 99)], "# The Title"),
        ("text", [(99, 199, 899, 299), (499, 649, 949, 749)], "first half of a paragraph."),
        ("table", [(99, 349, 899, 599)], "<table><tr><td>1</td></tr></table>"),
        ("equation", [(199, 624, 799, 644)], "\\[E=mc^2\\]"),
        ("image", [(0, 799, 499, 949)], ""),
    ]
    assert scale_poly([0, 0, 1200, 0, 1200, 10, 0, 10], 1000, 10) == [0, 0, 999, 999]  # clamped


def test_omnidocbench_convert_writes_messages_jsonl(tmp_path, model):
    (tmp_path / "images").mkdir()
    for name in ("p0.png", "p1.png"):
        (tmp_path / "images" / name).write_bytes(png((200, 400)))
    src = tmp_path / "OmniDocBench.json"
    pages = omnidoc_pages()
    bad = json.loads(json.dumps(pages[1]))
    bad["page_info"]["image_path"] = "missing.png"
    src.write_text(json.dumps(pages + [bad, {"page_info": {"image_path": "p1.png"}, "layout_dets": []}]))
    with pytest.raises(DataError, match=r"page 2 \(missing.png\): page image not found"):
        convert(src, tmp_path / "out" / "train.jsonl")
    report = convert(src, tmp_path / "out" / "train.jsonl", grounding=True, on_error="skip")
    assert report.kept == 2 and len(report.skipped) == 2
    assert "width and height" in report.skipped[1].reason
    samples, read_report = read_messages(tmp_path / "out" / "train.jsonl")
    assert read_report.kept == 2 and samples[0].image == tmp_path / "out" / ".." / "images" / "p0.png"
    assert samples[0].prompt == "<image>\n<|grounding|>Convert the document to markdown."
    assert samples[1].answer.endswith("中文开头继续") and samples[0].id == "p0.png"
    prepared, _ = encode_samples(model, samples, default_mode="tiny")
    assert prepared[0].labels is not None


def test_omnidocbench_command_line(tmp_path, capsys):
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "p1.png").write_bytes(png())
    src = tmp_path / "omni.json"
    src.write_text(json.dumps([omnidoc_pages()[1]]))
    out = tmp_path / "o.jsonl"
    assert main([str(src), str(out), "--images", str(tmp_path / "pages"), "--keep-furniture"]) == 0
    assert "1 sample(s) kept" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["messages"][1]["content"] == "中文开头继续\n\nfooter"
    assert record["images"] == ["pages/p1.png"]
    assert main([str(src), str(out)]) == 1  # images/ beside the JSON does not exist
    assert "page image not found" in capsys.readouterr().err


def test_dataset_feeds_a_dataloader_and_reads_several_files(model, data):
    one = write_jsonl(data / "one.jsonl", [msgs(images=["imgs/a.png"], mode="tiny")])
    two = write_jsonl(data / "two.jsonl", [conv(images=None, user="q", answer="a"), "{"])
    samples, report = read_dataset([one, two], on_error="skip")
    assert report.kept == 2 and [s.source for s in report.skipped] == [f"{two}:2"]
    from torch.utils.data import DataLoader
    loader = DataLoader(SampleDataset(model, samples), batch_size=2, collate_fn=list,
                        sampler=list(SampleOrder(len(samples), seed=0)))
    (batch,) = list(loader)
    assert sorted(p.has_image for p in batch) == [False, True]  # image and text-only together
