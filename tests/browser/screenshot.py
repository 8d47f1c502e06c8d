"""Retake docs/images/page.png, page-phone.png and page-detail.png: the page with hits, in Chromium, at desktop
and phone width (390 px), and a hit's detail, against a stack started here.

    .venv/bin/python -m tests.browser.screenshot [--out docs/images/page.png] [--phone-out ...]

The stack is the browser tests' own (tests/stack.py: the generated collection, a tiny model with
random weights). So that the prediction panel has labels to predict from, the collection's species
names are embedded by that embedder's text tower and handed to a second embedder as TreeOfLife
files, the same shape as pybioclip's `txt_emb_species.npy` and `.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from playwright.sync_api import Page, sync_playwright

from stack.demo_collection import SPECIES, draw_specimen
from stack.tiny_model import write_tiny_model
from tests.browser.pages import CHROMIUM, CHROMIUM_ARGS
from tests.stack import running_stack

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]


def species_labels(embedder_url: str, folder: Path) -> Path:
    """TreeOfLife-shaped label files for the demo species, embedded by the running embedder."""
    names = [f"{s.taxonomy[5]} {s.taxonomy[6]}" for s in SPECIES]
    answer = httpx.post(embedder_url + "/v1/embed/text", json={"texts": names}, timeout=60)
    answer.raise_for_status()
    vectors = np.asarray(answer.json()["vectors"], dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "txt_emb_species.npy", vectors.T)  # (dim, N), as pybioclip stores it
    entries = [[list(s.taxonomy), s.common_name] for s in SPECIES]
    (folder / "txt_emb_species.json").write_text(json.dumps(entries), encoding="utf-8")
    return folder


DESKTOP = {"width": 1200, "height": 1400}
PHONE = {"width": 390, "height": 844}


def measured(url: str, seconds: float = 60) -> None:
    """Wait until the search service has measured its similarity scale, so the page states it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        index = httpx.get(url + "/api/info", timeout=10).json()["index"]
        if index and index.get("similarity_scale"):
            return
        time.sleep(0.2)
    raise RuntimeError("the search service did not measure its similarity scale")


def open_licensed_hit(page: Page) -> None:
    """Open the detail of the first hit whose record carries a licence (the demo gives half of them one)."""
    cards = page.locator("#results .hit")
    for position in range(cards.count()):
        cards.nth(position).click()
        page.wait_for_selector("#detail[open]")
        if "Licence" in page.locator("#detail dl.source").inner_text():
            page.wait_for_function("() => [...document.querySelectorAll('#detail img')].every(i => i.complete)")
            return
        page.keyboard.press("Escape")
    raise RuntimeError("no hit carries a licence")


def take(url: str, photos: list[Path], out: Path, viewport: dict[str, int] = DESKTOP, *, detail: bool = False) -> None:
    measured(url)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(base_url=url, viewport=viewport)  # type: ignore[arg-type]
        page.goto("/")
        page.fill("#top-n", "12")
        page.press("#top-n", "Tab")  # commit the field now, not when the focus leaves it after the search
        with page.expect_response(lambda r: r.url.endswith("/api/search")):
            page.set_input_files("#file-input", [str(p) for p in photos])
        page.wait_for_function("() => !document.getElementById('results').hasAttribute('aria-busy')")
        page.wait_for_function(
            "() => [...document.querySelectorAll('#results .hit img')].every(i => i.complete)", timeout=20_000
        )
        page.evaluate("() => document.activeElement && document.activeElement.blur()")
        page.wait_for_function("() => !document.getElementById('results').hasAttribute('aria-busy')")
        page.wait_for_selector("#similarity-scale:not([hidden])")
        if detail:
            open_licensed_hit(page)
        png = page.screenshot()
        browser.close()
    # A 256-colour palette keeps the picture sharp and the file small.
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    logger.info("wrote %s (%d KB)", out, out.stat().st_size // 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "page.png")
    parser.add_argument("--phone-out", type=Path, default=ROOT / "docs" / "images" / "page-phone.png")
    parser.add_argument("--detail-out", type=Path, default=ROOT / "docs" / "images" / "page-detail.png")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="page-screenshot-") as temp:
        work = Path(temp)
        model = write_tiny_model(work / "model", name="tiny-test-clip", embed_dim=32, width=32)
        (work / "first").mkdir()
        with running_stack(work / "first", model) as first:
            labels = species_labels(first.embedder.url, work / "labels")
        # Two new photos of one monarch, not in the collection: a search as a user would make it.
        rng = random.Random(2024)
        photos = []
        for n in (1, 2):
            photo = work / f"monarch-{n}.jpg"
            draw_specimen(SPECIES[0], rng).save(photo, quality=90)
            photos.append(photo)
        os.environ["EMBEDDER_TREE_OF_LIFE_DIR"] = str(labels)
        (work / "second").mkdir()
        with running_stack(work / "second", model) as stack:
            take(stack.gateway.url, photos, args.out)
            take(stack.gateway.url, photos, args.phone_out, PHONE)
            take(stack.gateway.url, photos, args.detail_out, detail=True)


if __name__ == "__main__":
    main()
