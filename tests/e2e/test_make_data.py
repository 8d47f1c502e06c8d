"""`make data` into an empty folder, then `make run` serves it: real processes, the local hub as the only outside."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright

from stack.processes import ROOT
from tests.browser.pages import CHROMIUM, CHROMIUM_ARGS
from tests.hub import COLLECTION_REPO, LABELS_REPO, MODEL_REPO, LocalHub
from tests.stack import read_until_ready

pytestmark = pytest.mark.e2e


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEARCH_", "EMBEDDER_", "GATEWAY_", "HF_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def page_footer(gateway: str) -> str | None:
    """The page's footer line in Chromium (None without Chromium); nothing may leave the gateway."""
    if not CHROMIUM.exists():
        return None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.route(lambda url: not url.startswith(gateway), lambda route: route.abort())
            page.goto(gateway + "/")
            footer = page.locator("#footer-status")
            footer.filter(has_text="collection").wait_for(timeout=20_000)
            return footer.inner_text()
        finally:
            browser.close()


def test_make_data_into_an_empty_folder_then_the_stack_searches_it_offline(
    hub: LocalHub, tmp_path: Path, free_port: Callable[[], int], make_image: Callable[..., bytes]
) -> None:
    data, cache = tmp_path / "data", tmp_path / "search-cache"
    common = {"SEARCH_CACHE_DIR": str(cache), "SEARCH_COARSE_QUANTIZER": "hnsw", "STACK_DATA_DIR": str(data)}
    done = subprocess.run(
        [sys.executable, "-m", "collection", "download", "--data-dir", str(data), "--search-cache", str(cache)],
        cwd=ROOT, env=_env(HF_ENDPOINT=hub.url, **common), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Done in" in done.stdout
    commit = hub.repos[("model", COLLECTION_REPO)].commit
    asked = len(hub.requests)

    ports = {name: free_port() for name in ("GATEWAY", "EMBEDDER", "SEARCH", "FETCHER")}
    env = _env(HF_ENDPOINT=hub.url, **common, **{f"{name}_PORT": str(port) for name, port in ports.items()})
    runner = subprocess.Popen(
        [sys.executable, "-m", "stack", "--logs", str(tmp_path / "logs")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        read_until_ready(runner)
        gateway = f"http://127.0.0.1:{ports['GATEWAY']}"
        info = httpx.get(gateway + "/api/info", timeout=30).json()
        assert info["notice"] == ""
        assert info["model"]["model"] == f"hf-hub:{MODEL_REPO}" and info["model"]["pretrained"] is True
        assert info["index"]["vectors"] == 400 and info["index"]["lookup"] == "sidecar"
        assert info["index"]["coarse_quantizer"] == "hnsw"
        assert info["index"]["collection"] == {"repo": COLLECTION_REPO, "revision": "main", "commit": commit}
        found = httpx.post(
            gateway + "/api/search", files={"image": ("q.png", make_image(), "image/png")}, timeout=60
        ).json()
        assert len(found["hits"]) > 0 and found["identity"]["index"] == f"{COLLECTION_REPO}@{commit[:12]}"
        assert found["prediction"]["predictions"], found.get("prediction_error")  # the downloaded labels
        assert commit[:12] in found["permalink"]
        assert len(hub.requests) == asked, "the stack asked the hub: its first start must be offline"
        footer = page_footer(gateway)
        assert footer is None or f"collection {COLLECTION_REPO} @ {commit[:12]}" in footer, footer
    finally:
        runner.send_signal(signal.SIGINT)
        assert runner.wait(60) == 0
        assert runner.stdout is not None
        runner.stdout.close()

    # Partial data: the runner says what is missing and the command that completes it, and starts nothing.
    (data / "embeddings" / "txt_emb_species.npy").unlink()
    partial = subprocess.run(
        [sys.executable, "-m", "stack", "--logs", str(tmp_path / "logs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert partial.returncode == 1
    assert f"labels: {data / 'embeddings' / 'txt_emb_species.npy'}" in partial.stderr + partial.stdout
    assert f"python -m collection download --data-dir {data} --only labels" in partial.stderr + partial.stdout
    assert LABELS_REPO not in [r.path for r in hub.requests[asked:]]
