// The OCR page: posts the upload to /v1/ocr with stream=true and reads the NDJSON events as
// they come (page_start, delta, page, done). Model output is only ever set as textContent, never
// parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#e0245e", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#bcbd22"];
const labelColors = new Map();
let controller = null;
let result = null;

function colorFor(label) {
  if (!labelColors.has(label)) labelColors.set(label, COLORS[labelColors.size % COLORS.length]);
  return labelColors.get(label);
}

function setStatus(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

function headers() {
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem("deepseek-ocr-key", key);
  return key ? { Authorization: "Bearer " + key } : {};
}

function pageElement(number) {
  let el = document.querySelector(`.page[data-page="${number}"]`);
  if (el) return el;
  el = $("page-template").content.firstElementChild.cloneNode(true);
  el.dataset.page = number;
  el.querySelector(".page-title").textContent = `Page ${number}`;
  for (const tab of el.querySelectorAll(".tabs button")) {
    tab.addEventListener("click", () => {
      for (const t of el.querySelectorAll(".tabs button")) t.classList.toggle("active", t === tab);
      el.querySelector(".raw").hidden = tab.dataset.tab !== "raw";
      el.querySelector(".markdown").hidden = tab.dataset.tab !== "markdown";
    });
  }
  const results = $("results");
  const later = [...results.children].find((p) => Number(p.dataset.page) > number);
  results.insertBefore(el, later || null);
  return el;
}

function drawBoxes(el, record) {
  const layer = el.querySelector(".boxes");
  layer.replaceChildren();
  for (const b of record.boxes || []) {
    const [x1, y1, x2, y2] = b.box;
    const div = document.createElement("div");
    div.className = "box";
    div.dataset.label = b.label;
    div.title = `${b.label}: ${b.text || ""}`;
    div.style.setProperty("--c", colorFor(b.label));
    div.style.left = (100 * x1 / record.width) + "%";
    div.style.top = (100 * y1 / record.height) + "%";
    div.style.width = (100 * (x2 - x1) / record.width) + "%";
    div.style.height = (100 * (y2 - y1) / record.height) + "%";
    const tag = document.createElement("span");
    tag.textContent = b.label;
    div.appendChild(tag);
    layer.appendChild(div);
  }
}

function onEvent(ev) {
  if (ev.event === "document") {
    result = { document: ev, pages: {} };
    const d = ev.document;
    setStatus(`${d.kind === "pdf" ? "PDF" : "image"}: ${d.pages.length} page(s), mode ${ev.mode.name}…`);
  } else if (ev.event === "page_start") {
    const el = pageElement(ev.page);
    if (ev.image) el.querySelector(".page-image").src = ev.image;
    el.querySelector(".page-status").textContent = "reading…";
  } else if (ev.event === "delta") {
    pageElement(ev.page).querySelector(".raw").textContent += ev.text;
  } else if (ev.event === "page") {
    const el = pageElement(ev.page);
    result.pages[ev.page] = ev;
    const status = el.querySelector(".page-status");
    if (ev.status === "ok") {
      el.querySelector(".raw").textContent = ev.raw_text;
      el.querySelector(".markdown").textContent = ev.markdown;
      drawBoxes(el, ev);
      const t = ev.tokens || {};
      status.textContent = `${t.text} tokens from ${t.valid_vision} vision tokens, ${ev.finish_reason}, ` +
        `${(ev.boxes || []).length} box(es), ${ev.seconds}s` + (ev.problems.length ? `; ${ev.problems.join("; ")}` : "");
      status.className = "page-status";
    } else {
      status.textContent = `failed: ${ev.error_type}: ${ev.error}`;
      status.className = "page-status error";
    }
    el.dataset.done = ev.status;
  } else if (ev.event === "done") {
    const t = ev.totals;
    setStatus(`done: ${t.ok} of ${t.pages} page(s) read in ${t.seconds}s`, t.failed > 0);
    const pages = Object.keys(result.pages).map(Number).sort((a, b) => a - b).map((n) => result.pages[n]);
    const json = { ...result.document, ...ev, pages };
    delete json.event;
    const md = $("download-md"), js = $("download-json");
    URL.revokeObjectURL(md.href); URL.revokeObjectURL(js.href);
    md.href = URL.createObjectURL(new Blob([ev.markdown], { type: "text/markdown" }));
    js.href = URL.createObjectURL(new Blob([JSON.stringify(json, null, 1)], { type: "application/json" }));
    $("downloads").hidden = false;
  }
}

async function run(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) { setStatus("choose an image or a PDF first", true); return; }
  let prompt = $("prompt").value;
  if (prompt === "locate") prompt = "locate:" + $("locate-text").value;
  const form = new FormData();
  form.append("file", file);
  form.append("mode", $("mode").value);
  form.append("prompt", prompt);
  form.append("stream", "true");
  form.append("deltas", "true");
  form.append("page_images", "true");
  for (const [id, name] of [["pages", "pages"], ["dpi", "dpi"], ["max-tokens", "max_tokens"]]) {
    if ($(id).value.trim()) form.append(name, $(id).value.trim());
  }
  $("results").replaceChildren();
  $("downloads").hidden = true;
  $("run").disabled = true; $("stop").disabled = false;
  controller = new AbortController();
  setStatus("uploading…");
  try {
    const response = await fetch("/v1/ocr", { method: "POST", body: form, headers: headers(), signal: controller.signal });
    if (!response.ok) {
      let message = `HTTP ${response.status}`;
      try { message += ": " + (await response.json()).error.message; } catch (e) { /* not JSON */ }
      setStatus(message, true);
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        if (line) onEvent(JSON.parse(line));
      }
    }
  } catch (err) {
    setStatus(err.name === "AbortError" ? "stopped" : "failed: " + err.message, err.name !== "AbortError");
  } finally {
    $("run").disabled = false; $("stop").disabled = true;
    controller = null;
  }
}

$("ocr-form").addEventListener("submit", run);
$("stop").addEventListener("click", () => controller && controller.abort());
$("prompt").addEventListener("change", () => { $("locate-label").hidden = $("prompt").value !== "locate"; });
$("api-key").value = sessionStorage.getItem("deepseek-ocr-key") || "";
fetch("/v1/models", { headers: headers() }).then((r) => r.ok ? r.json() : null).then((m) => {
  if (m && m.data && m.data[0]) $("model-name").textContent = m.data[0].id;
}).catch(() => {});
