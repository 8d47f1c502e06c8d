"""SEARCH_PREFETCH: the collection's files read once after start-up, so that the first queries after a cold
start find them in the page cache; a shutdown stops the reading."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.search.app import create_app
from services.search.lookup import LookupSidecar, default_sidecar_path
from services.search.prefetch import prefetch
from services.search.settings import INDEX_FILE, METADATA_FILE
from tests.search.conftest import Collection, rows_for, unit_vectors, write_collection


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    return write_collection(tmp_path_factory.mktemp("prefetch"), unit_vectors(500, 16), rows_for(500), "IVF4,Flat")


def test_every_byte_of_every_readable_file_is_read_in_chunks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = []
    for size in (0, 1, 4096, 10_000):
        path = tmp_path / f"f{size}"
        path.write_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))
        files.append(path)
    missing = tmp_path / "gone"
    with caplog.at_level(logging.WARNING):
        done = prefetch([*files[:2], missing, *files[2:]], stop=threading.Event(), chunk=1000)
    assert done.bytes == 0 + 1 + 4096 + 10_000
    assert done.files == 4 and not done.stopped
    assert "could not prefetch" in caplog.text and "gone" in caplog.text


def test_a_set_stop_reads_nothing_more(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * 100_000)
    stop = threading.Event()
    stop.set()
    done = prefetch([path], stop=stop, chunk=1000)
    assert done.stopped and done.bytes == 0 and done.files == 0


def _sidecar_bytes(collection: Collection) -> int:
    folder = default_sidecar_path(collection.folder / METADATA_FILE)
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


@pytest.mark.parametrize(("mode", "mmap"), [("index", True), ("all", True), ("all", False)])
def test_the_service_reads_the_memory_mapped_index_and_with_all_the_sidecar(
    collection: Collection, mode: str, mmap: bool, caplog: pytest.LogCaptureFixture
) -> None:
    index_bytes = (collection.folder / INDEX_FILE).stat().st_size
    expected = (index_bytes if mmap else 0) + (_sidecar_bytes(collection) if mode == "all" else 0)
    settings = collection.settings(prefetch=mode, mmap=mmap, similarity_scale_samples=0)
    with caplog.at_level(logging.INFO, logger="services.search.app"), TestClient(create_app(settings)) as client:
        for _ in range(200):
            if "page cache prefetch" in caplog.text:
                break
            time.sleep(0.02)
        assert client.get("/readyz").status_code == 200
    line = next(record.getMessage() for record in caplog.records if "page cache prefetch" in record.getMessage())
    assert line.startswith("page cache prefetch read ")
    assert f"{expected / 1e9:.2f} GB" in line
    files = (1 if mmap else 0) + (
        len(list(default_sidecar_path(collection.folder / METADATA_FILE).iterdir())) if mode == "all" else 0
    )
    assert f"({files} of {files} files)" in line


def test_the_index_in_ram_and_no_sidecar_leave_nothing_to_read(
    collection: Collection, caplog: pytest.LogCaptureFixture
) -> None:
    settings = collection.settings(prefetch="index", mmap=False, similarity_scale_samples=0)
    with caplog.at_level(logging.INFO, logger="services.search.app"), TestClient(create_app(settings)):
        for _ in range(200):
            if "SEARCH_PREFETCH" in caplog.text:
                break
            time.sleep(0.02)
    assert "SEARCH_PREFETCH=index: nothing to read" in caplog.text


def test_an_unknown_mode_is_refused(collection: Collection) -> None:
    with pytest.raises(ValueError, match="prefetch"):
        collection.settings(prefetch="everything")


def test_a_stop_while_reading_ends_it_within_a_chunk(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * 2_000_000)
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    done = prefetch([path, path], stop=stop, chunk=16)  # 16-byte reads: far longer than 50 ms for 4 MB
    assert done.stopped and 0 < done.bytes < 4_000_000 and done.files < 2


def test_a_sidecar_folder_that_cannot_be_listed_leaves_its_open_arrays_to_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder readable by name but not listable (mode 711), or moved since it was opened, made the prefetch
    raise in the event loop and the shutdown that awaits it fail with a traceback ("Application shutdown
    failed"). Moved here (a mode would not stop root): the arrays it has open are still listed, and nothing
    raises."""
    folder = tmp_path / "c"
    collection = write_collection(folder, unit_vectors(64, 8), rows_for(64), "Flat")
    sidecar = LookupSidecar(default_sidecar_path(collection.folder / METADATA_FILE))
    moved = sidecar.folder.rename(tmp_path / "moved.lookup")
    assert not sidecar.folder.exists() and moved.is_dir()
    with caplog.at_level(logging.WARNING, logger="services.search.lookup"):
        files = sidecar.files()
    assert [path.name for path in files] == ["flags.npy", "taxon.npy"]
    assert "could not list the sidecar" in caplog.text
    done = prefetch(files, stop=threading.Event())
    assert done.files == 0 and not done.stopped  # gone with the folder: skipped with a warning, as any unreadable file
