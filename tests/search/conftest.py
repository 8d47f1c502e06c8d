"""Hand-built collections with known vectors, written with the builder's own writers; the search API's tests run
on both backends (`backend`): the FAISS file, and the same collection loaded into one milvus-lite per session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from fastapi.testclient import TestClient

from collection.build import write_index, write_metadata
from collection.milvus_load import load_collection
from services.search.app import create_app
from services.search.settings import INDEX_FILE, METADATA_FILE, SearchSettings

BACKENDS = ("faiss", "milvus")


@dataclass
class Collection:
    folder: Path
    vectors: np.ndarray
    rows: list[dict[str, Any]]

    def settings(self, **overrides: Any) -> SearchSettings:
        return SearchSettings(**{"data_dir": self.folder, "blocking_threads": 2, **overrides})


def unit_vectors(count: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def rows_for(count: int, *, url_every: int = 20) -> list[dict[str, Any]]:
    """Rows where one in `url_every` has a URL (the iNaturalist-style ones), the rest none."""
    rows = []
    for i in range(count):
        has_url = i % url_every == 0
        rows.append(
            {
                "url": f"https://inaturalist-open-data.s3.amazonaws.com/photos/{i}/original.jpg" if has_url else None,
                "kingdom": "Animalia", "phylum": "Arthropoda", "class": "Insecta",
                "order": "Lepidoptera" if i % 2 else "Coleoptera", "family": f"Family{i % 7}",
                "genus": f"Genus{i % 11}", "species": f"epithet{i}", "common_name": f"common {i}",
                "source_dataset": "gbif" if i % 3 else "eol", "source_id": str(1000 + i),
                "publisher": "iNaturalist.org" if i % 3 == 1 else "Other", "img_type": "Image",
                "basisOfRecord": "HUMAN_OBSERVATION", "in_bioclip2_training": i % 2 == 0,
            }
        )  # fmt: skip
    return rows


def write_collection(
    folder: Path, vectors: np.ndarray, rows: list[dict[str, Any]], factory: str = "Flat"
) -> Collection:
    write_index(vectors, factory, folder / INDEX_FILE)
    write_metadata(rows, folder / METADATA_FILE)
    return Collection(folder, vectors, rows)


@pytest.fixture(scope="session", autouse=True)
def one_faiss_thread() -> None:
    """FAISS's OpenMP threads spin while they wait; on two shared cores one thread is faster for tiny indexes."""
    faiss.omp_set_num_threads(1)


class MilvusLite:
    """One milvus-lite folder for the session (the embedded Milvus starts once per process and path); each
    collection is loaded into it once, by the loader `python -m collection milvus-load` runs."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._loaded: dict[tuple[Path, str, str], str] = {}

    def settings(self, collection: Collection, index_type: str = "FLAT", **params: Any) -> dict[str, Any]:
        """The search settings that serve `collection` from Milvus (loaded on first use)."""
        key = (collection.folder, index_type, repr(sorted(params.items())))
        name = self._loaded.get(key)
        if name is None:
            name = f"c{len(self._loaded)}_{index_type.lower()}"
            load_collection(
                metadata=collection.folder / METADATA_FILE, uri=self.uri, collection=name,
                index=collection.folder / INDEX_FILE, index_type=index_type, index_params=params,
            )  # fmt: skip
            self._loaded[key] = name
        return {"backend": "milvus", "milvus_uri": self.uri, "milvus_collection": name}


@pytest.fixture(scope="session")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> MilvusLite:
    return MilvusLite(str(tmp_path_factory.mktemp("milvus") / "search.db"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def on(backend: str, milvus: MilvusLite) -> Any:
    """`on(collection, **overrides)`: settings serving the collection from this test's backend."""

    def settings(collection: Collection, *, index_type: str = "FLAT", **overrides: Any) -> SearchSettings:
        chosen = milvus.settings(collection, index_type) if backend == "milvus" else {}
        return collection.settings(**chosen, **overrides)

    return settings


@pytest.fixture(scope="session")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    """Read-only for every test that shares it."""
    return write_collection(tmp_path_factory.mktemp("collection"), unit_vectors(200, 16), rows_for(200))


@pytest.fixture
def client(collection: Collection, on: Any) -> Iterator[TestClient]:
    """The search app on `collection`, once per backend."""
    with TestClient(create_app(on(collection))) as test_client:
        yield test_client
