"""`python -m collection download` against the local hub: plan, resume, verify, pins, errors.

The command runs in this process with HF_ENDPOINT at the local hub; huggingface_hub does every
request (repo info, paths-info, resolve HEAD, GET with Range) over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from collection.download import human, parse_size
from services.common.datalock import LOCK_FILE, read_pins
from tests.collection.conftest import Run
from tests.hub import COLLECTION_REPO, LABELS_REPO, MODEL_REPO, LocalHub, Release

WEIGHTS = "open_clip_model.safetensors"


def data_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def test_download_into_an_empty_folder_places_verified_files_pins_revisions_and_makes_derived_files(
    download: Run, hub: LocalHub, release: Release, tmp_path: Path
) -> None:
    code, out, _ = download()
    assert code == 0, out
    data = tmp_path / "data"
    for path, content in {**release.collection, **release.labels}.items():
        assert (data / path).read_bytes() == content
    assert out.index("Plan") < out.index("To download: 7.") < out.index("Free space at") < out.index("Done in")
    pins = read_pins(data)
    assert {name: (pin.repo, pin.commit) for name, pin in pins.items()} == {
        "collection": (COLLECTION_REPO, hub.repos[("model", COLLECTION_REPO)].commit),
        "labels": (LABELS_REPO, hub.repos[("dataset", LABELS_REPO)].commit),
        "model": (MODEL_REPO, hub.repos[("model", MODEL_REPO)].commit),
    }
    # The model lies in huggingface_hub's cache layout, where open_clip's hub loading finds it offline.
    model = data / "models" / "models--imageomics--bioclip-2"
    assert (model / "refs" / "main").read_text() == pins["model"].commit
    for name, content in release.model.items():
        assert (model / "snapshots" / pins["model"].commit / name).read_bytes() == content
    # Derived files, and nothing half-written left anywhere.
    assert json.loads((data / "duckdb/metadata.lookup/manifest.json").read_text())["rows"] == 400
    assert len(list((tmp_path / "search-cache").glob("coarse-hnsw-*.index"))) == 1
    assert not [p for p in data_files(data) if p.endswith((".part", ".partial", ".incomplete"))]
    assert not (data / ".download").exists()
    # LFS files come from where the hub's 302 sends them; small files straight from resolve.
    assert [r.path.split("/")[1] for r in hub.gets("faiss/index.index")] == ["cdn"]
    assert ["/resolve/" in r.path for r in hub.gets("open_clip_config.json")] == [True]


def test_running_twice_downloads_nothing_and_says_so(download: Run, hub: LocalHub, tmp_path: Path) -> None:
    assert download()[0] == 0
    before = len(hub.requests)
    code, out, _ = download()
    assert code == 0
    assert "Nothing to download" in out and "To download: 0 B" in out
    assert hub.requests[before:] == []  # the pins and the files' stats answer it: not even a HEAD


@pytest.fixture
def big_weights(hub: LocalHub) -> bytes:
    """Weights larger than huggingface_hub's 10 MB transfer chunk, so a cut halfway leaves whole chunks on disk."""
    content = np.random.default_rng(3).bytes(24 << 20)
    hub.repos[("model", MODEL_REPO)].files[WEIGHTS] = content
    return content


def test_a_transfer_cut_halfway_resumes_with_a_range_request_and_verifies(
    download: Run, hub: LocalHub, big_weights: bytes, tmp_path: Path
) -> None:
    hub.cut[WEIGHTS] = 1
    code, out, _ = download("--only", "model")
    assert code == 0, out
    first, second = hub.gets(WEIGHTS)
    assert first.range is None
    assert second.range is not None and 0 < int(second.range.removeprefix("bytes=").rstrip("-")) < len(big_weights)
    commit = read_pins(tmp_path / "data")["model"].commit
    assert (tmp_path / "data/models/models--imageomics--bioclip-2/snapshots" / commit / WEIGHTS).read_bytes() == (
        big_weights
    )


def test_an_interrupted_run_leaves_nothing_in_place_and_the_next_run_resumes_it(
    download: Run, hub: LocalHub, big_weights: bytes, tmp_path: Path
) -> None:
    hub.cut[WEIGHTS] = 99  # more cuts than huggingface_hub retries within one call
    code, _, err = download("--only", "model")
    assert code == 1
    assert f"{MODEL_REPO} (model repo, file {WEIGHTS}, revision main)" in err and "resumes" in err
    model = tmp_path / "data" / "models" / "models--imageomics--bioclip-2"
    assert not (model / "snapshots").exists() or not list((model / "snapshots").rglob(WEIGHTS))
    partial = next((tmp_path / "data" / "models" / ".download").rglob("*.part"))
    kept = partial.stat().st_size
    assert 0 < kept < len(big_weights)
    hub.cut.clear()
    code, out, _ = download("--only", "model")
    assert code == 0
    assert f"resume from {human(kept)}" in out
    assert hub.gets(WEIGHTS)[-1].range == f"bytes={kept}-"
    commit = read_pins(tmp_path / "data")["model"].commit
    assert (model / "snapshots" / commit / WEIGHTS).read_bytes() == big_weights


def test_a_corrupted_file_on_disk_is_detected_and_fetched_again(
    download: Run, hub: LocalHub, release: Release, tmp_path: Path
) -> None:
    assert download("--only", "labels")[0] == 0
    target = tmp_path / "data" / "embeddings" / "txt_emb_species.npy"
    with target.open("r+b") as handle:  # same size, different bytes: a flipped sector
        handle.seek(200)
        handle.write(b"\x00\xff" * 8)
    gets = len(hub.gets("embeddings/txt_emb_species.npy"))
    code, out, _ = download("--only", "labels")
    assert code == 0
    assert "corrupt on disk: fetch again" in out
    assert len(hub.gets("embeddings/txt_emb_species.npy")) == gets + 1
    assert target.read_bytes() == release.labels["embeddings/txt_emb_species.npy"]


def test_a_truncated_file_is_fetched_again_with_verify(download: Run, release: Release, tmp_path: Path) -> None:
    assert download("--only", "labels")[0] == 0
    target = tmp_path / "data" / "embeddings" / "txt_emb_species.json"
    target.write_bytes(target.read_bytes()[:100])
    code, out, _ = download("--only", "labels", "--verify")
    assert code == 0 and "corrupt on disk" in out
    assert target.read_bytes() == release.labels["embeddings/txt_emb_species.json"]


def test_a_wrong_checksum_from_the_hub_is_an_error_and_installs_nothing(
    download: Run, hub: LocalHub, tmp_path: Path
) -> None:
    hub.wrong_sha256.add("faiss/index.index")
    code, _, err = download("--only", "collection")
    assert code == 1
    assert "checksum mismatch" in err and f"{COLLECTION_REPO} (model repo, file faiss/index.index" in err
    assert not (tmp_path / "data" / "faiss" / "index.index").exists()
    assert not list((tmp_path / "data").rglob("*.part"))


def test_a_disk_too_small_is_refused_before_any_byte_is_written(download: Run, hub: LocalHub, tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    code, out, err = download("--reserve", str(free))  # keep all that is free: nothing may be written
    assert code == 1
    assert "Free space at" in out and "not enough disk space" in err and "Nothing was downloaded" in err
    assert [r for r in hub.requests if "/resolve/" in r.path] == []
    assert data_files(tmp_path / "data") == [] if (tmp_path / "data").exists() else True


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_names_the_file_and_the_fix_and_installs_nothing(
    download: Run, hub: LocalHub, tmp_path: Path
) -> None:
    # The partial file is /dev/full, so every write fails with the kernel's ENOSPC.
    content = hub.repos[("dataset", LABELS_REPO)].files["embeddings/txt_emb_species.npy"]
    etag = hashlib.sha256(content).hexdigest()
    partial = tmp_path / "data" / ".download" / "labels" / f"embeddings/txt_emb_species.npy.{etag[:16]}.part"
    partial.parent.mkdir(parents=True)
    partial.symlink_to("/dev/full")
    code, _, err = download("--only", "labels")
    assert code == 1
    assert f"{LABELS_REPO} (dataset repo, file embeddings/txt_emb_species.npy, revision main)" in err
    assert "the disk is full; free space" in err
    assert not (tmp_path / "data" / "embeddings" / "txt_emb_species.npy").exists()


def test_only_downloads_the_named_part(download: Run, tmp_path: Path) -> None:
    code, out, _ = download("--only", "labels")
    assert code == 0
    assert data_files(tmp_path / "data") == [
        "embeddings/txt_emb_species.json", "embeddings/txt_emb_species.npy", LOCK_FILE,
    ]  # fmt: skip
    assert set(read_pins(tmp_path / "data")) == {"labels"}
    assert COLLECTION_REPO not in out


def test_a_private_repo_needs_hf_token(download: Run, hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.repos[("dataset", LABELS_REPO)].token = "hf_secret"
    code, _, err = download("--only", "labels")
    assert code == 1
    assert f"{LABELS_REPO} (dataset repo, revision main): 401" in err and "set HF_TOKEN" in err
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert download("--only", "labels")[0] == 0


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("gated", "403: the repo is gated; accept its conditions"),
        ("missing repo", "404: repo not found or not readable without a token"),
        ("missing file", "no file open_clip_model.safetensors or open_clip_pytorch_model.bin"),
        ("no network", "cannot reach http://127.0.0.1:"),
    ],
)
def test_hub_errors_name_the_repo_and_the_fix_and_exit_non_zero(
    download: Run,
    hub: LocalHub,
    monkeypatch: pytest.MonkeyPatch,
    free_port: Callable[[], int],
    fault: str,
    expected: str,
) -> None:
    repo = hub.repos[("model", MODEL_REPO)]
    if fault == "gated":
        repo.gated = True
    elif fault == "missing repo":
        del hub.repos[("model", MODEL_REPO)]
    elif fault == "missing file":
        del repo.files["open_clip_model.safetensors"]
    else:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    code, _, err = download("--only", "model")
    assert code == 1
    assert err.startswith(f"error: {MODEL_REPO} (model repo")
    assert expected in err


def test_offline_after_a_download_checks_the_files_and_asks_nothing(
    download: Run, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert download()[0] == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.requests)
    code, out, _ = download("--verify")
    assert code == 0 and "Nothing to download" in out
    assert hub.requests[before:] == []


def test_offline_without_the_files_says_what_is_missing(download: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = download("--only", "labels")
    assert code == 1
    assert f"{LABELS_REPO}: HF_HUB_OFFLINE is set" in err and "unset HF_HUB_OFFLINE" in err


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["", "k", "M", "G", "T"]), st.booleans())
def test_sizes_parse_in_decimal_and_binary_units(number: int, unit: str, binary: bool) -> None:
    suffix = unit + ("i" if binary and unit else "") + "B"
    power = " kMGT".index(unit or " ")
    assert parse_size(f"{number}{suffix}") == number * (1024 if binary and unit else 1000) ** power
