"""The four services served on 127.0.0.1 for the contract tests: a small collection, the tiny model with labels,
a fetcher whose every host resolves to an address it refuses, and the gateway in front of them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from collection.build import write_index, write_metadata
from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from services.embedder.app import create_app as create_embedder
from services.fetcher.app import create_app as create_fetcher
from services.fetcher.settings import FetcherSettings
from services.search.app import create_app as create_search
from services.search.settings import INDEX_FILE, METADATA_FILE, SearchSettings
from stack.tiny_model import TinyModel
from tests.conftest import tiny_embedder_settings
from tests.embedder.conftest import write_labels
from tests.gateway.conftest import serving
from tests.search.conftest import rows_for

DIM = 32  # the tiny model's embedding width
LABELS = [
    [["Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Danaus", "plexippus"], "monarch"],
    [["Animalia", "Chordata", "Aves", "Passeriformes", "Paridae", "Parus", "major"], "great tit"],
    [["Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "alba"], "white mulberry"],
]
_outside: list[str] = []


def _is_loopback(host: object) -> bool:
    return str(host) in ("127.0.0.1", "::1", "localhost", "") or str(host).startswith("127.")


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Record (and refuse) any connection or name lookup that would leave 127.0.0.1."""
    if event == "socket.connect" and isinstance(args[1], tuple) and not _is_loopback(args[1][0]):
        _outside.append(f"connect {args[1][0]}")
        raise PermissionError(f"a contract test tried to connect to {args[1][0]}")
    if event == "socket.getaddrinfo" and not _is_loopback(args[0]):
        _outside.append(f"lookup {args[0]}")
        raise PermissionError(f"a contract test tried to look up {args[0]!r}")


sys.addaudithook(_audit)


async def _refused_address(host: str, port: int) -> list[str]:
    """Every source host is 127.0.0.1 to the fetcher, which it refuses: no fetch leaves the machine."""
    return ["127.0.0.1"]


@pytest.fixture(scope="session")
def urls(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    work = tmp_path_factory.mktemp("contract")
    labels = write_labels(work / "labels", np.eye(DIM, dtype=np.float32)[: len(LABELS)], LABELS)
    vectors = np.random.default_rng(1).normal(size=(120, DIM)).astype(np.float32)
    collection = work / "collection"
    write_index(vectors, "Flat", collection / INDEX_FILE)
    write_metadata(rows_for(120), collection / METADATA_FILE)
    embedder = create_embedder(tiny_embedder_settings(tiny_model).model_copy(update={"tree_of_life_dir": labels}))
    search = create_search(SearchSettings(data_dir=collection, blocking_threads=2))
    fetcher = create_fetcher(
        FetcherSettings(cache_dir=work / "fetcher-cache", budget_store=work / "budgets.sqlite"),
        resolver=_refused_address,
    )
    with serving(embedder) as embedder_url, serving(search) as search_url, serving(fetcher) as fetcher_url:
        gateway = create_gateway(
            GatewaySettings(
                embedder_url=embedder_url, search_url=search_url, fetcher_url=fetcher_url,
                searches_per_minute=100_000, images_per_minute=100_000,
            )
        )  # fmt: skip
        with serving(gateway) as gateway_url:
            yield {"embedder": embedder_url, "search": search_url, "fetcher": fetcher_url, "gateway": gateway_url}


@pytest.fixture
def nothing_left_the_machine() -> Iterator[None]:
    before = len(_outside)
    yield
    assert _outside[before:] == [], "a call left 127.0.0.1"
