"""gallery.html: one self-contained page beside a run's images that works from file:// with
no network. A grid of lazy thumbnails with each image's parameters, a text filter, sorting,
a full-size view with every parameter and a "copy command" that makes exactly that image
again; images that are missing or were never made are shown as such.

Every piece of user text is data: the manifest travels as JSON inside a
``<script type="application/json">`` block (with ``<``, ``>`` and ``&`` escaped, so no
``</script>`` can end it), and the page's script puts text into the DOM with
``textContent`` only, never as HTML.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from ..engine.wire import IMAGE_PARAMS, images_text

GALLERY = "gallery.html"
SHOWN = ("prompt", *IMAGE_PARAMS, "model", "loras", "refiner", "score")


def command(record: dict, header: dict) -> str:
    """The command line that makes this image again (shell-quoted: any prompt survives)."""
    args = ["imggenhub", "generate"]
    if header.get("backend") == "local":  # where it was made: the same device and precision
        args += ["--backend", "local"]
    args += ["--prompt", str(record.get("prompt", ""))]
    # a sweep's cell may have its own scheduler; the record names only its class
    scheduler = (record.get("cell") or {}).get("scheduler") or header.get("scheduler_flag")
    values = {name: record.get(name) for name in IMAGE_PARAMS}  # each is the flag of its name
    values.update(scheduler=scheduler, model=record.get("model") or header.get("model"))
    for name, value in values.items():
        if value not in (None, ""):
            args += ["--" + name.replace("_", "-"), str(value)]
    for lora in record.get("loras") or header.get("loras") or []:  # a local one by its file name
        args += ["--lora", f"{lora.get('file') or lora.get('name')}:{lora.get('scale')}"]
    for emb in record.get("embeddings") or header.get("embeddings") or []:
        args += ["--embedding", f"{emb.get('file') or emb.get('name')}"
                 + (f":{emb['token']}" if emb.get("token") else "")]
    if record.get("refiner"):
        args += ["--refiner", str(record["refiner"].get("model")), "--refiner-start",
                 str(record["refiner"].get("start"))]
    return " ".join(shlex.quote(a) for a in args)


def _data(manifest: dict) -> dict:
    header = {k: v for k, v in manifest.items() if k not in ("images", "processes", "bundles")}
    cards = []
    for record in manifest.get("images", []):
        card = {k: record[k] for k in SHOWN if k in record}
        card.update(index=record.get("index"), file=str(record.get("file", "")),
                    command=command(record, header))
        cards.append(card)
    missing = [i for a, b in manifest.get("remaining") or [] for i in range(a, b)]
    run_id = manifest.get("run_id")
    title = (f"imggenhub {run_id or manifest.get('job_id', '')}: {images_text(len(cards))}, "
             f"{manifest.get('model', '')}")  # the run id: what every command takes
    notice = ""
    if missing:  # a run not whole yet (stopped, failed, or still going): the command that goes on
        run = str(run_id).split("/shard-")[0] if run_id else ""  # a shard's: its run's
        how = f"'imggenhub resume {run}' goes on with the rest" if run else \
            "'imggenhub resume' goes on with the rest"
        notice = (f"{len(cards)} of {images_text(len(cards) + len(missing))} are here; "
                  f"{len(missing)} not made yet: {how}.")
    return {"title": title, "images": cards, "not_made": missing, "notice": notice,
            "planned": manifest.get("planned_images")}


def _script_json(data: dict) -> str:
    """JSON that is inert inside a <script> element, whatever the strings hold."""
    text = json.dumps(data, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def read_data(page: str) -> dict:
    """The data a gallery page carries (what its script shows)."""
    head = '<script type="application/json" id="data">'
    start = page.index(head) + len(head)
    return json.loads(page[start:page.index("</script>", start)])


def write(folder: Path, manifest: dict) -> Path:
    path = Path(folder) / GALLERY
    data = _data(manifest)
    data["sheets"] = sorted(p.name for p in Path(folder).glob("grid*.png"))
    from .sweeps import plots

    data["sweeps"] = plots(manifest)
    page = PAGE.replace("/*DATA*/", _script_json(data))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>imggenhub gallery</title>
<style>
body{font-family:system-ui,sans-serif;margin:1em;background:#111;color:#eee}
header{display:flex;gap:1em;align-items:center;flex-wrap:wrap;margin-bottom:1em}
h1{font-size:1.1em;margin:0;flex:1 1 100%}
input,select,button{font:inherit;padding:.3em .5em}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:.8em}
figure{margin:0;background:#222;border-radius:6px;overflow:hidden;cursor:pointer}
figure img{width:100%;aspect-ratio:1;object-fit:cover;display:block;image-rendering:pixelated;background:#333}
figcaption{padding:.4em;font-size:.8em;overflow-wrap:anywhere}
figcaption small{color:#aaa;display:block}
figure.missing,figure.not-made{outline:2px dashed #c55;cursor:default}
figure.missing img,figure.not-made img{visibility:hidden}
#notice{color:#fc6;margin:.2em 0 1em}#notice:empty{display:none}
dialog{max-width:95vw;max-height:95vh;background:#222;color:#eee;border:0;border-radius:8px}
dialog img{min-width:256px;max-width:90vw;max-height:70vh;display:block;margin:auto;image-rendering:pixelated}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em;font-size:.9em}
dd{margin:0;overflow-wrap:anywhere}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#000;padding:.5em}
table.sweep{border-collapse:collapse;margin:.4em 0 1em;font-size:.85em}
table.sweep td,table.sweep th{border:1px solid #444;padding:.2em .5em}
</style></head>
<body>
<header><h1 id="title"></h1>
<input id="filter" type="search" placeholder="filter: prompt, seed, model..." aria-label="filter">
<label>sort <select id="sort">
<option value="index">order made</option><option value="prompt">prompt</option>
<option value="seed">seed</option><option value="score">score</option></select></label>
<span id="count"></span><span id="sheets"></span></header>
<p id="notice"></p>
<section id="sweeps"></section>
<main id="grid"></main>
<dialog id="view"><img id="full" alt=""><dl id="params"></dl>
<pre id="command"></pre><button id="copy">copy command</button> <button id="close">close</button></dialog>
<script type="application/json" id="data">/*DATA*/</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const grid = document.getElementById("grid");
const el = (tag, text, cls) => { const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; };
document.getElementById("title").textContent = data.title;
document.getElementById("notice").textContent = data.notice || "";
const images = n => n + (n === 1 ? " image" : " images");
for (const name of data.sheets || []) { const a = el("a", name); a.href = name;
  a.style.color = "#9cf"; a.style.marginLeft = ".6em"; document.getElementById("sheets").append(a); }
document.title = data.title;
const fmt = v => (v === null || v === undefined) ? "" :
  (typeof v === "object" ? JSON.stringify(v) : String(v));
const cards = data.images.map(r => {
  const fig = el("figure"); fig.dataset.kind = "image";
  const img = el("img"); img.loading = "lazy"; img.alt = r.prompt || ""; img.src = r.file;
  img.addEventListener("error", () => { fig.classList.add("missing");
    cap.append(el("small", "missing: " + r.file)); });
  const cap = el("figcaption", r.prompt || "");
  cap.append(el("small", ["seed " + fmt(r.seed), fmt(r.steps) + " steps", "cfg " + fmt(r.guidance),
    fmt(r.width) + "x" + fmt(r.height), r.score !== undefined ? "score " + fmt(r.score) : ""]
    .filter(Boolean).join(" \\u00b7 ")));
  if (r.negative_prompt) cap.append(el("small", "not: " + r.negative_prompt));
  cap.append(el("small", [r.model, r.scheduler, ...(r.loras || []).map(l => "lora " + fmt(l.name)
    + ":" + fmt(l.scale))].filter(Boolean).map(fmt).join(" \\u00b7 ")));
  fig.append(img, cap);
  fig.addEventListener("click", () => { if (!fig.classList.contains("missing")) show(r); });
  fig.record = r;
  fig.search = [r.prompt, r.negative_prompt, r.seed, r.model, r.scheduler, r.file]
    .map(fmt).join(" ").toLowerCase();
  return fig;
});
const gaps = data.not_made.map(i => { const fig = el("figure", undefined, "not-made");
  fig.dataset.kind = "not-made"; fig.append(el("img"), el("figcaption", "image " + (i + 1) +
  ": not made (the run ended before it)")); fig.record = {index: i}; fig.search = ""; return fig; });
for (const plot of data.sweeps || []) {  // a sweep: its grid image and its table
  const box = document.getElementById("sweeps");
  const head = el("h2", "sweep of prompt " + plot.prompt_number + ": " + plot.prompt);
  head.style.fontSize = "1em";
  const link = el("a", plot.file); link.href = plot.file; link.style.color = "#9cf";
  const table = el("table", undefined, "sweep"); const top = el("tr");
  top.append(el("th", plot.y ? plot.y[0] + " \\ " + plot.x[0] : plot.x[0]));
  for (const x of plot.x[1]) top.append(el("th", fmt(x)));
  table.append(top);
  plot.rows.forEach((row, r) => { const tr = el("tr");
    tr.append(el("th", plot.y ? fmt(plot.y[1][r]) : ""));
    for (const cell of row) { const td = el("td");
      if (cell) { const a = el("a", cell.file + (cell.score !== null && cell.score !== undefined ?
        " (" + fmt(cell.score) + ")" : "")); a.href = cell.file; a.style.color = "#ccc"; td.append(a); }
      else td.textContent = "-";
      tr.append(td); }
    table.append(tr); });
  const z = Object.entries(plot.z).map(([k, v]) => k + "=" + fmt(v)).join(", ");
  box.append(head, link, el("span", z ? " (" + z + ")" : ""), table);
}
function render() {
  const q = document.getElementById("filter").value.trim().toLowerCase();
  const key = document.getElementById("sort").value;
  const shown = cards.filter(c => !q || c.search.includes(q));
  const value = c => c.record[key];
  shown.sort((a, b) => { const x = value(a), y = value(b);
    if (x === y) return a.record.index - b.record.index;
    if (x === undefined || x === null) return 1; if (y === undefined || y === null) return -1;
    if (key === "score") return y - x;
    return typeof x === "number" ? x - y : String(x).localeCompare(String(y)); });
  grid.replaceChildren(...shown, ...(q ? [] : gaps));
  document.getElementById("count").textContent = shown.length + " of " + images(cards.length) +
    (gaps.length ? " made, " + gaps.length + " not made" : "");
}
const view = document.getElementById("view");
function show(r) {
  document.getElementById("full").src = r.file;
  const dl = document.getElementById("params"); dl.replaceChildren();
  for (const [k, v] of Object.entries(r)) { if (k === "command") continue;
    dl.append(el("dt", k), el("dd", fmt(v))); }
  document.getElementById("command").textContent = r.command;
  view.showModal();
}
document.getElementById("close").addEventListener("click", () => view.close());
document.getElementById("copy").addEventListener("click", async () => {
  const text = document.getElementById("command").textContent;
  try { await navigator.clipboard.writeText(text); }
  catch (e) { const t = el("textarea"); t.value = text; document.body.append(t); t.select();
    document.execCommand("copy"); t.remove(); }
  document.getElementById("copy").textContent = "copied";
});
document.getElementById("filter").addEventListener("input", render);
document.getElementById("sort").addEventListener("change", render);
render();
</script></body></html>
"""
