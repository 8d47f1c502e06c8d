"""The download command, run in this process against the local hub."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from collection.__main__ import main
from tests.hub import LocalHub

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def download(hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run the command into tmp_path/data (model cache data/models, graph cache tmp_path/search-cache)."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("EMBEDDER_CACHE_DIR", raising=False)
    monkeypatch.setenv("SEARCH_COARSE_QUANTIZER", "hnsw")  # the tiny IVF has 8 lists: `auto` would skip the graph

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(
            ["download", "--data-dir", str(tmp_path / "data"), "--search-cache", str(tmp_path / "search-cache"), *args]
        )
        out, err = capsys.readouterr()
        return code, out, err

    return run
