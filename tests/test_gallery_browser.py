"""gallery.html in a real browser: headless Chromium (Debian's package, driven through
Playwright pointed at it; scripts/setup.sh installs it where it can, as root) loads a
run's gallery from file:// and is checked through the page's DOM: one figure per image
and per image never made, the filter, the sorting, the full view with its command, and
hostile prompts that stay text (no dialog, no page error, the sentinel untouched). A
screenshot is kept in .test-artifacts/gallery.png."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imggenhub.outputs import artifacts

REPO = Path(__file__).resolve().parents[1]
HOSTILE = ['<img src=x onerror="window.__pwned=1">', "</script><script>window.__pwned=2</script>",
           "a fox's \"den\" & $(touch /tmp/x) `id`"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI, where scripts/setup.sh installs it")
        pytest.skip("no chromium on this machine: 'apt-get install chromium' (scripts/setup.sh "
                    "does it when run as root)")
    return found


def run_folder(folder: Path, n: int, missing: int | None = None, not_made: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    prompts = HOSTILE + ["a red fox", "a lighthouse at dusk"]
    for i in range(n):
        name = f"{i + 1:04d}-img.png"
        Image.fromarray(np.full((8, 8, 3), (i * 37) % 255, dtype=np.uint8)).save(folder / name)
        data = (folder / name).read_bytes()
        images.append({"index": i, "prompt": prompts[i % len(prompts)], "seed": 1000 - i,
                       "steps": 4, "guidance": 5.0, "width": 8, "height": 8, "model": "tiny-random",
                       "scheduler": "DDIMScheduler", "file": name, "bytes": len(data),
                       "sha256": artifacts.sha256_of(folder / name), "score": round(20 + i % 7, 1),
                       "negative_prompt": "blurry", "loras": [{"name": "style", "scale": 0.5}]})
    if missing is not None:
        (folder / images[missing]["file"]).unlink()
    planned = n + not_made
    manifest = {"job_id": "j", "run_id": "r-gallery", "model": "tiny-random", "images": images,
                "planned_images": planned,
                "remaining": [[n, planned]] if not_made else []}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return artifacts.write_gallery(folder)


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, path: Path):
    page = browser.new_page()
    trouble = []
    page.on("dialog", lambda d: (trouble.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("pageerror", lambda e: trouble.append(f"page error: {e}"))
    page.on("console", lambda m: trouble.append(f"console {m.type}: {m.text}")
            if m.type == "error" and "ERR_FILE_NOT_FOUND" not in m.text else None)
    page.goto(path.as_uri())
    page.wait_for_selector("figure")
    return page, trouble


def test_the_gallery_works_in_a_browser_and_runs_nothing_of_the_prompts(browser, tmp_path):
    page_path = run_folder(tmp_path / "run", 10, missing=3, not_made=2)
    page, trouble = open_page(browser, page_path)
    figures = page.locator("figure")
    assert figures.count() == 12  # 10 images and 2 never made
    assert page.locator("figure.not-made").count() == 2
    # how far the run got, and the command that goes on
    assert page.inner_text("#notice") == ("10 of 12 images are here; 2 not made yet: 'imggenhub "
                                          "resume r-gallery' goes on with the rest.")
    assert page.inner_text("#count") == "10 of 10 images made, 2 not made"
    page.wait_for_function("document.querySelectorAll('figure.missing').length === 1")
    # each card: its parameters, model, scheduler and LoRAs
    card = page.locator("figure", has_text="a red fox").first.inner_text()
    assert "tiny-random" in card and "DDIMScheduler" in card and "lora style:0.5" in card
    assert "not: blurry" in card
    # hostile prompts are shown as text and ran nothing
    captions = page.locator("figcaption").all_inner_texts()
    assert any(HOSTILE[0] in c for c in captions) and any(HOSTILE[1] in c for c in captions)
    assert page.evaluate("window.__pwned") is None and page.locator("img[src=x]").count() == 0
    # the filter
    page.fill("#filter", "red fox")
    assert page.locator("figure").count() == 2
    assert page.inner_text("#count") == "2 of 10 images made, 2 not made"
    page.fill("#filter", "")
    # sorting by seed puts the highest index first (seeds fall as the index grows)
    page.select_option("#sort", "seed")
    first = page.locator("figure figcaption small").first.inner_text()
    assert "seed 991" in first
    page.select_option("#sort", "score")
    scores = [float(t.split("score ")[1]) for t in
              page.locator("figure:not(.not-made) figcaption small:first-of-type").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    # the full view, and a command that a shell reads back as the very prompt
    page.locator("figure", has_text="a fox's").first.click()
    assert page.locator("dialog#view[open]").count() == 1
    command = page.inner_text("#command")
    argv = shlex.split(command)
    assert argv[:4] == ["imggenhub", "generate", "--prompt", HOSTILE[2]]
    assert argv[argv.index("--seed") + 1] in {str(1000 - i) for i in range(10)}
    artefacts = REPO / ".test-artifacts"
    artefacts.mkdir(exist_ok=True)
    page.screenshot(path=str(artefacts / "gallery.png"), full_page=True)
    assert page.evaluate("window.__pwned") is None
    assert trouble == [], trouble


def test_a_gallery_of_1000_images_stays_small_and_lazy(browser, tmp_path):
    page_path = run_folder(tmp_path / "big", 1000)
    assert page_path.stat().st_size < 1_000_000  # the page's own size, bounded
    page, trouble = open_page(browser, page_path)
    assert page.locator("figure").count() == 1000
    assert page.evaluate("[...document.querySelectorAll('#grid img')].every(i => i.loading === 'lazy')")
    assert trouble == []


def test_open_hands_the_gallery_to_the_browser(cli, tmp_path, monkeypatch):
    import sys

    from imggenhub.run import runs

    run_folder(tmp_path / "out", 2)
    runs.save(runs.Run(run_id="r-open", backend="local", job_id="j", image_count=2,
                       out_dir=str(tmp_path / "out"), state="downloaded"))
    seen = tmp_path / "seen.txt"
    opener = tmp_path / "opener.py"
    opener.write_text(f"import sys; open({str(seen)!r}, 'w').write(sys.argv[1])")
    monkeypatch.setenv("BROWSER", f"{sys.executable} {opener} %s")
    code, out, err = cli("open", "r-open")
    assert code == 0, err
    assert seen.read_text() == (tmp_path / "out" / "gallery.html").as_uri()
    code, out, err = cli("open", "nope")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_a_shards_gallery_gives_its_runs_command():
    from imggenhub.outputs import gallery

    data = gallery._data({"run_id": "20261202-x/shard-2", "images": [], "remaining": [[0, 2]]})
    assert data["notice"] == ("0 of 2 images are here; 2 not made yet: 'imggenhub resume "
                              "20261202-x' goes on with the rest.")
    assert gallery._data({"run_id": "r", "images": [], "remaining": []})["notice"] == ""
