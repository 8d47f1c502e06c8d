"""What `make run` makes of a data folder: complete, partial (and the fix), a collection of one's own, nothing."""

from __future__ import annotations

from pathlib import Path

from collection.state import data_state
from tests.collection.conftest import Run
from tests.hub import MODEL_REPO
from tests.search.conftest import rows_for, unit_vectors, write_collection


def test_an_empty_folder_is_absent_and_a_collection_without_a_lock_file_is_ones_own(tmp_path: Path) -> None:
    assert data_state(tmp_path / "nothing").kind == "absent"
    write_collection(tmp_path / "own", unit_vectors(20, 8), rows_for(20))
    assert data_state(tmp_path / "own").kind == "own"


def test_a_complete_download_gives_the_settings_that_serve_it_offline(download: Run, tmp_path: Path) -> None:
    assert download()[0] == 0
    data = tmp_path / "data"
    state = data_state(data)
    assert state.kind == "complete" and state.missing == []
    assert state.env == {
        "SEARCH_DATA_DIR": str(data),
        "EMBEDDER_MODEL": f"hf-hub:{MODEL_REPO}",
        "EMBEDDER_CACHE_DIR": str(data / "models"),
        "EMBEDDER_TREE_OF_LIFE_DIR": str(data),
        "HF_HUB_OFFLINE": "1",
    }


def test_a_partial_download_names_each_missing_file_and_the_command_that_completes_it(
    download: Run, tmp_path: Path
) -> None:
    assert download("--only", "collection", "--only", "model")[0] == 0
    data = tmp_path / "data"
    (data / "faiss" / "index.index").unlink()
    state = data_state(data)
    assert state.kind == "partial"
    assert state.missing == [
        f"collection: {data / 'faiss' / 'index.index'}",
        "labels: not downloaded (imageomics/TreeOfLife-200M)",
    ]
    assert state.completion() == f"python -m collection download --data-dir {data} --only collection --only labels"
