"""`/v1/ocr` and the web page, live on 127.0.0.1, on the tiny model made to write a scripted
page: grounding spans with known boxes, so that the boxes, the markdown and the crops can be
checked against values worked out by hand (pixel = int(v / 999 * size), the official formula).

The browser test drives Debian's headless Chromium through its chromedriver (selenium): it
uploads a generated page and waits for the text and the boxes to appear.
"""
from __future__ import annotations

import base64
import io
import json
import shutil

import httpx
import pytest
from PIL import Image, ImageDraw

from deepseek_ocr.engine import Engine
from deepseek_ocr.serving import Backend, BackgroundServer, ServerConfig
from tiny_model import tiny_model

SCRIPT = ("<|ref|>title<|/ref|><|det|>[[100, 200, 600, 300]]<|/det|>\n# Quarterly report\n\n"
          "<|ref|>image<|/ref|><|det|>[[50, 400, 500, 900]]<|/det|>\n\n"
          "<|ref|>text<|/ref|><|det|>[[0, 950, 999, 999]]<|/det|>\nTotal \\coloneqq 42")
SCRIPT_TOKENS = 0  # set by `server`: the script's length in tokens
BOXES = [("title", (100, 200, 600, 300)), ("image", (50, 400, 500, 900)), ("text", (0, 950, 999, 999))]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def script_engine(engine: Engine, ids: list[int], eos: int) -> None:
    """Make every request of `engine` write `ids` then EOS, whatever the logits say: the
    token chosen for a request's k-th output position is `ids[k]` (a test double in place of
    a trained model; the rest of the engine, prefill and decode included, runs as ever)."""
    choose = engine._choose

    def scripted(logits, slots, reqs):
        chosen, bad = choose(logits, slots, reqs)
        for i, r in enumerate(reqs):
            row = i if slots is not None else r.slot
            chosen[row] = ids[r.launched] if r.launched < len(ids) else eos
        return chosen, bad

    engine._choose = scripted


@pytest.fixture(scope="module")
def server():
    global SCRIPT_TOKENS
    ocr = tiny_model(seed=5)
    engine = Engine(ocr.model, ocr.tokenizer, max_slots=4)
    ids = ocr.tokenizer.encode(SCRIPT)
    SCRIPT_TOKENS = len(ids)
    script_engine(engine, ids, ocr.tokenizer.eos_id)
    cfg = ServerConfig(model_name="tiny-scripted", max_pages=3, prepare_workers=2)
    with BackgroundServer(Backend([ocr], cfg, engines=[engine])) as srv:
        yield srv


def page_image(width: int, height: int, label: str) -> Image.Image:
    img = Image.new("RGB", (width, height), (250, 250, 245))
    draw = ImageDraw.Draw(img)
    draw.text((20, 20), label, fill="black")
    draw.rectangle((width // 20, height * 2 // 5, width // 2, height * 9 // 10), outline="navy", width=3)
    return img


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def pdf(pages: list[Image.Image]) -> bytes:
    buf = io.BytesIO()
    pages[0].save(buf, "PDF", resolution=72.0, save_all=True, append_images=pages[1:])
    return buf.getvalue()


def expected_boxes(width: int, height: int) -> list[tuple[str, list[int]]]:
    return [(label, [int(x1 / 999 * width), int(y1 / 999 * height), int(x2 / 999 * width), int(y2 / 999 * height)])
            for label, (x1, y1, x2, y2) in BOXES]


def check_page(record: dict, number: int, width: int, height: int) -> None:
    assert record["page"] == number and record["status"] == "ok", record
    assert (record["width"], record["height"]) == (width, height)
    assert [(b["label"], b["box"]) for b in record["boxes"]] == expected_boxes(width, height)
    assert [b["text"] for b in record["boxes"]] == ["# Quarterly report", "", "Total \\coloneqq 42"]
    assert record["raw_text"] == SCRIPT and record["finish_reason"] == "stop"
    stem = f"page-{number:04d}"
    # Spans gone, the image region linked, the official fix-up applied.
    assert record["markdown"] == f"\n# Quarterly report\n\n![](images/{stem}-0.jpg)\n\n\n\nTotal := 42"
    assert record["tokens"]["text"] == SCRIPT_TOKENS


def test_pdf_every_page_back_with_boxes(server):
    sizes = [(200, 300), (260, 180), (240, 240)]  # points; rendered at 144 dpi: twice as many pixels
    doc = pdf([page_image(w, h, f"page {i + 1}") for i, (w, h) in enumerate(sizes)])
    r = httpx.post(server.url + "/v1/ocr", files={"file": ("report.pdf", doc, "application/pdf")},
                   data={"mode": "tiny", "crops": "true"}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["document"] == {"kind": "pdf", "page_count": 3, "pages": [1, 2, 3]}
    assert [p["page"] for p in body["pages"]] == [1, 2, 3] and body["complete"]
    for i, (w, h) in enumerate(sizes):
        check_page(body["pages"][i], i + 1, 2 * w, 2 * h)
        crop_name = f"images/page-{i + 1:04d}-0.jpg"
        x1, y1, x2, y2 = expected_boxes(2 * w, 2 * h)[1][1]
        crop = Image.open(io.BytesIO(base64.b64decode(body["pages"][i]["crops"][crop_name].split(",", 1)[1])))
        assert crop.size == (x2 - x1, y2 - y1)
    assert body["markdown"].count("<--- Page Split --->") == 2
    assert body["usage"]["completion_tokens"] == sum(p["tokens"]["text"] for p in body["pages"])
    # A page range, one past the end, and more pages than the server takes per request.
    two = httpx.post(server.url + "/v1/ocr", files={"file": ("r.pdf", doc)}, data={"mode": "tiny", "pages": "2-3"},
                     timeout=120).json()
    assert [p["page"] for p in two["pages"]] == [2, 3]
    check_page(two["pages"][1], 3, 480, 480)
    past = httpx.post(server.url + "/v1/ocr", files={"file": ("r.pdf", doc)}, data={"pages": "4"}, timeout=60)
    assert past.status_code == 422 and past.json()["error"]["param"] == "pages"
    four = pdf([page_image(100, 100, str(i)) for i in range(4)])
    over = httpx.post(server.url + "/v1/ocr", files={"file": ("r.pdf", four)}, timeout=60)
    assert over.status_code == 422 and "limit of 3" in over.json()["error"]["message"]


def test_image_as_json_and_as_ndjson_stream(server):
    img = page_image(333, 450, "an image")
    r = httpx.post(server.url + "/v1/ocr", files={"file": ("scan.png", png(img), "image/png")},
                   data={"mode": "small", "prompt": "ocr"}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["document"]["kind"] == "image" and body["prompt"] == "<image>\n<|grounding|>OCR this image."
    check_page(body["pages"][0], 1, 333, 450)
    with httpx.stream("POST", server.url + "/v1/ocr", files={"file": ("scan.png", png(img), "image/png")},
                      data={"mode": "tiny", "stream": "true", "deltas": "true", "page_images": "true"},
                      timeout=120) as s:
        assert s.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in s.iter_lines() if line.strip()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "document" and kinds[1] == "page_start" and kinds[-2:] == ["page", "done"]
    assert set(kinds[2:-2]) == {"delta"}
    assert "".join(e["text"] for e in events if e["event"] == "delta") == SCRIPT
    preview = Image.open(io.BytesIO(base64.b64decode(events[1]["image"].split(",", 1)[1])))
    assert preview.size == (333, 450)
    check_page(events[-2], 1, 333, 450)
    assert events[-1]["totals"]["ok"] == 1


def test_multi_page_tiff_frames_are_pages(server):
    frames = [page_image(200, 260, "one"), page_image(300, 200, "two")]
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    r = httpx.post(server.url + "/v1/ocr", files={"file": ("scan.tif", buf.getvalue())}, data={"mode": "tiny"},
                   timeout=120)
    body = r.json()
    assert body["document"] == {"kind": "image", "page_count": 2, "pages": [1, 2]}
    check_page(body["pages"][0], 1, 200, 260)
    check_page(body["pages"][1], 2, 300, 200)


def test_bad_uploads(server):
    url = server.url + "/v1/ocr"
    cases = [
        (dict(files={"file": ("x.png", b"no image here")}), 400, "InvalidImageError"),
        (dict(files={"file": ("x.pdf", b"%PDF-1.4\nbroken")}), 400, None),
        (dict(data={"mode": "tiny"}), 400, None),  # no file at all
        (dict(files={"file": ("x.png", png(page_image(64, 64, "x")))}, data={"mode": "1000:10"}), 422, None),
        (dict(files={"file": ("x.png", png(page_image(64, 64, "x")))}, data={"dpi": "-3"}), 422, None),
        (dict(files={"file": ("x.png", png(page_image(64, 64, "x")))}, data={"prompt": "no placeholder"}), 422, None),
        (dict(content=b'{"file": 1}', headers={"content-type": "application/json"}), 400, None),
    ]
    for kwargs, status, _ in cases:
        r = httpx.post(url, timeout=60, **kwargs)
        assert r.status_code == status, (kwargs.get("data"), r.text)
        assert r.json()["error"]["message"] and "Traceback" not in r.text
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Debian's chromium and chromium-driver are needed (.ci/run installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1600"):
        options.add_argument(flag)
    drv = webdriver.Chrome(service=Service(driver), options=options)
    yield drv
    drv.quit()


def test_the_page_in_a_real_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait
    upload = tmp_path / "page.png"
    page_image(400, 520, "browser page").save(upload)
    browser.get(server.url + "/")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "model-name").text == "tiny-scripted")
    browser.find_element(By.ID, "file").send_keys(str(upload))
    Select(browser.find_element(By.ID, "mode")).select_by_value("tiny")
    browser.find_element(By.ID, "run").click()
    done = WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, ".page[data-done]")))
    assert done.get_attribute("data-done") == "ok"
    assert done.find_element(By.CSS_SELECTOR, ".raw").text.startswith("<|ref|>title<|/ref|>")
    boxes = done.find_elements(By.CSS_SELECTOR, ".box")
    assert [b.get_attribute("data-label") for b in boxes] == ["title", "image", "text"]
    # Drawn over the page where the boxes are: the title box's left edge at 100/999 of the width.
    view = done.find_element(By.CSS_SELECTOR, ".view").rect
    title = boxes[0].rect
    assert abs((title["x"] - view["x"]) / view["width"] - int(100 / 999 * 400) / 400) < 0.01
    assert done.find_element(By.CSS_SELECTOR, ".page-image").get_attribute("naturalWidth") == "400"
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "downloads").is_displayed())
    assert browser.find_element(By.ID, "download-md").get_attribute("href").startswith("blob:")
    assert "done: 1 of 1" in browser.find_element(By.ID, "status").text
    done.find_element(By.CSS_SELECTOR, '.tabs button[data-tab="markdown"]').click()
    markdown = done.find_element(By.CSS_SELECTOR, ".markdown")
    assert markdown.is_displayed() and "![](images/page-0001-0.jpg)" in markdown.text
    assert not done.find_element(By.CSS_SELECTOR, ".raw").is_displayed()
