"""The gateway with the real embedder (tiny model, known labels) and search service behind it, served on
127.0.0.1: the prediction follows the user's taxon filters, a record whose stored vector has no direction
is a clear 4xx naming it, and a query embedded before is labelled as this request gave it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pytest
from fastapi.testclient import TestClient

from collection.build import write_metadata
from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from services.embedder.app import create_app as create_embedder
from services.search.app import create_app as create_search
from services.search.settings import INDEX_FILE, METADATA_FILE, SearchSettings
from stack.tiny_model import TinyModel
from tests.conftest import ImageFactory, tiny_embedder_settings
from tests.embedder.conftest import write_labels
from tests.gateway.conftest import serving

DIM = 32  # the tiny model's embedding width
# One label per axis: (kingdom .. epithet), common name.
LABELS: list[tuple[tuple[str, ...], str]] = [
    (("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Danaus", "plexippus"), "monarch"),
    (("Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus", "bassanus"), "northern gannet"),
    (("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "alba"), "white mulberry"),
    (("Plantae", "Tracheophyta", "Magnoliopsida", "Fagales", "Fagaceae", "Quercus", "robur"), "oak"),
    (("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa", "canina"), "dog rose"),
]  # fmt: skip
NAN_RECORD, ZERO_RECORD = 1, 2


def _row(i: int, path: tuple[str, ...], common: str) -> dict:
    names = dict(zip(("kingdom", "phylum", "class", "order", "family", "genus", "species"), path, strict=True))
    return {**names, "url": f"https://example.org/{i}.jpg", "common_name": common, "source_dataset": "gbif",
            "source_id": str(i), "publisher": "Other", "img_type": "Image", "basisOfRecord": "HUMAN_OBSERVATION",
            "in_bioclip2_training": False}  # fmt: skip


@dataclass
class Services:
    gateway: TestClient
    checkpoint: str


@pytest.fixture(scope="module")
def services(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    work = tmp_path_factory.mktemp("gateway-services")
    labels = write_labels(
        work / "labels", np.eye(DIM, dtype=np.float32)[: len(LABELS)], [[list(p), c] for p, c in LABELS]
    )
    # Record 0 looks most like the monarch, then the mulberry, then the oak; 1 and 2 have no direction.
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(60, DIM)).astype(np.float32)
    vectors[0] = 0.0
    vectors[0, :4] = [3.0, 0.0, 1.0, 0.5]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[NAN_RECORD] = np.nan
    vectors[ZERO_RECORD] = 0.0
    rows = [_row(i, *LABELS[i % len(LABELS)]) for i in range(60)]
    folder = work / "collection"
    (folder / INDEX_FILE).parent.mkdir(parents=True)
    index = faiss.IndexFlatIP(DIM)
    index.add(vectors)
    faiss.write_index(index, str(folder / INDEX_FILE))
    write_metadata(rows, folder / METADATA_FILE)
    embedder_settings = tiny_embedder_settings(tiny_model).model_copy(update={"tree_of_life_dir": labels})
    search_settings = SearchSettings(data_dir=folder, blocking_threads=2)
    with (
        serving(create_embedder(embedder_settings)) as embedder_url,
        serving(create_search(search_settings)) as search_url,
    ):
        # No fetcher: these searches never ask for an image (its URL is the search service's, unused).
        settings = GatewaySettings(embedder_url=embedder_url, search_url=search_url, fetcher_url=search_url)
        with TestClient(create_gateway(settings)) as gateway:
            yield Services(gateway, str(tiny_model.checkpoint))


def _search(services: Services, **body: object) -> dict:
    response = services.gateway.post("/api/search", json={"record_id": 0, "top_n": 10, **body})
    assert response.status_code == 200, response.text
    return response.json()


def _filters(*texts: str) -> list[dict[str, str]]:
    return [dict(zip(("rank", "value"), text.split(":"), strict=True)) for text in texts]


def test_without_a_filter_the_prediction_is_over_every_label(services: Services) -> None:
    prediction = _search(services)["prediction"]
    assert prediction["predictions"][0]["name"] == "Danaus plexippus"
    assert prediction["within"] is None and prediction["filters_not_applied"] == []


def test_a_kingdom_filter_restricts_the_prediction_as_it_restricts_the_hits(services: Services) -> None:
    result = _search(services, filters=_filters("kingdom:Plantae"))
    assert result["hits"] and all(hit["taxonomy"]["kingdom"] == "Plantae" for hit in result["hits"])
    prediction = result["prediction"]
    assert prediction["within"] == {"rank": "kingdom", "value": "Plantae"}
    assert prediction["predictions"][0]["name"] == "Morus alba"
    assert {p["taxonomy"]["kingdom"] for p in prediction["predictions"]} == {"Plantae"}
    # The same from a query string (a permalink).
    linked = services.gateway.get("/api/search", params={"record": 0, "filter": "kingdom:plantae"}).json()
    assert linked["prediction"]["within"] == {"rank": "kingdom", "value": "plantae"}
    assert linked["prediction"]["predictions"][0]["name"] == "Morus alba"


def test_of_several_filters_the_most_specific_at_or_above_the_rank_restricts_it(services: Services) -> None:
    result = _search(services, rank="family", filters=_filters("kingdom:Plantae", "order:Rosales", "genus:Rosa"))
    prediction = result["prediction"]
    assert prediction["within"] == {"rank": "order", "value": "Rosales"}
    assert prediction["filters_not_applied"] == [{"rank": "genus", "value": "Rosa"}]
    assert [p["name"] for p in prediction["predictions"]] == ["Moraceae", "Rosaceae"]


def test_a_filter_at_the_rank_predicted_restricts_it_to_that_name(services: Services) -> None:
    prediction = _search(services, rank="genus", filters=_filters("genus:Morus"))["prediction"]
    assert prediction["within"] == {"rank": "genus", "value": "Morus"}
    assert {p["name"] for p in prediction["predictions"]} == {"Morus"}


@pytest.mark.parametrize(
    "filters", [["common_name:white mulberry"], ["species:alba"], ["genus:Morus"]], ids=["common", "species", "below"]
)
def test_filters_that_name_no_group_of_labels_do_not_restrict_it_and_it_says_so(
    services: Services, filters: list[str]
) -> None:
    result = _search(services, rank="family", filters=_filters(*filters))
    assert result["prediction"]["within"] is None
    assert result["prediction"]["filters_not_applied"] == _filters(*filters)
    assert result["prediction"]["predictions"][0]["name"] == "Nymphalidae"


def test_a_filter_the_labels_do_not_know_leaves_the_hits_and_says_why_there_is_no_prediction(
    services: Services,
) -> None:
    result = _search(services, filters=_filters("kingdom:Fungi"))
    assert result["hits"] == [] and result["prediction"] is None
    assert "Fungi" in result["prediction_error"]


@pytest.mark.parametrize(("record_id", "why"), [(NAN_RECORD, "NaN"), (ZERO_RECORD, "zeros")])
def test_searching_from_a_record_without_a_usable_vector_is_a_422_naming_it(
    services: Services, record_id: int, why: str
) -> None:
    for response in (
        services.gateway.post("/api/search", json={"record_id": record_id}),
        services.gateway.get("/api/search", params={"record": record_id}),
    ):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "unusable_vector" and f"record {record_id}" in error["message"]
        assert why in error["message"]


def test_a_query_embedded_before_is_labelled_as_this_request_gave_it(
    services: Services, make_image: ImageFactory
) -> None:
    photo = make_image(seed=7)
    labels, ids = [], set()
    for name in ("first-upload.jpg", "second-upload.jpg"):
        response = services.gateway.post("/api/search", files={"image": (name, photo, "image/jpeg")})
        assert response.status_code == 200, response.text
        labels.append(response.json()["label"])
        ids.add(response.json()["query_id"])
    # One vector (the second upload is not embedded again), but never another uploader's file name.
    assert len(ids) == 1 and labels == ["first-upload.jpg", "second-upload.jpg"]
    texts = [_search(services, record_id=None, text=text)["text"] for text in ("Morus alba", "  MORUS   alba")]
    assert texts == ["Morus alba", "MORUS alba"]


def test_info_names_the_checkpoint_by_its_file_name_only(services: Services) -> None:
    response = services.gateway.get("/api/info")
    assert response.status_code == 200
    model = response.json()["model"]
    assert model["checkpoint"] == "tiny-test-clip.pt" and model["model"] == "tiny-test-clip"
    assert services.checkpoint.startswith("/") and str(Path(services.checkpoint).parent) not in response.text
