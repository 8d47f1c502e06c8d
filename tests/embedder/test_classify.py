"""POST /v1/classify against a small hand-built TreeOfLife label file whose answers are known in advance.

The label vectors are orthonormal axes, one per species, and the query vector is built so that
softmax(logit_scale * vector @ labels) gives exactly the probabilities in SPECIES below.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.embedder.settings import EmbedderSettings
from tests.conftest import ImageFactory
from tests.embedder.conftest import running, write_labels

DIM = 32
# (kingdom, phylum, class, order, family, genus, epithet), common name, the probability the query gives it.
SPECIES: list[tuple[tuple[str, ...], str, float]] = [
    (("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Danaus", "plexippus"), "monarch", 0.20),
    (("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Vanessa", "cardui"), "painted lady", 0.18),
    (("Animalia", "Arthropoda", "Insecta", "Coleoptera", "Coccinellidae", "Coccinella", "septempunctata"),
     "seven-spot ladybird", 0.16),
    (("Animalia", "Chordata", "Aves", "Passeriformes", "Paridae", "Parus", "major"), "great tit", 0.25),
    (("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax"), "common raven", 0.05),
    (("Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus", "bassanus"), "northern gannet", 0.06),
    (("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "alba"), "white mulberry", 0.07),
    (("Plantae", "Tracheophyta", "Magnoliopsida", "Fagales", "Fagaceae", "Quercus", "robur"), "", 0.03),
]  # fmt: skip
PROBABILITIES = np.array([p for _, _, p in SPECIES])


def _entries() -> list[list[object]]:
    return [[list(path), common] for path, common, _ in SPECIES]


@pytest.fixture(scope="module")
def tree_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    axes = np.eye(DIM, dtype=np.float32)[: len(SPECIES)]
    return write_labels(tmp_path_factory.mktemp("tol"), axes, _entries())


@pytest.fixture(scope="module")
def tol_client(module_settings: EmbedderSettings, tree_dir: Path) -> Iterator[TestClient]:
    with running(module_settings.model_copy(update={"tree_of_life_dir": tree_dir})) as client:
        yield client


def _query(scale: float) -> list[float]:
    """A unit vector whose logits against the axes are log(p) + c: its softmax is exactly PROBABILITIES."""
    vector = np.zeros(DIM)
    vector[: len(SPECIES)] = np.log(PROBABILITIES) / scale + 0.3
    vector[-1] = math.sqrt(1 - float(vector @ vector))  # an axis no label uses takes up the rest of the norm
    return vector.tolist()


def _classify(client: TestClient, **body: object) -> dict:  # type: ignore[type-arg]
    scale = client.get("/v1/model").json()["logit_scale"]
    response = client.post("/v1/classify", json={"vector": _query(scale), **body})
    assert response.status_code == 200, response.text
    return response.json()


def _names_and_probabilities(body: dict) -> list[tuple[str, float]]:  # type: ignore[type-arg]
    return [(p["name"], round(p["probability"], 4)) for p in body["results"][0]["predictions"]]


def test_species_prediction_is_the_softmax_over_the_label_file(tol_client: TestClient) -> None:
    body = _classify(tol_client, rank="species", k=3)
    assert body["labels"] == "tree_of_life" and body["rank"] == "species" and body["k"] == 3
    assert _names_and_probabilities(body) == [
        ("Parus major", 0.25),
        ("Danaus plexippus", 0.2),
        ("Vanessa cardui", 0.18),
    ]
    top = body["results"][0]["predictions"][0]
    assert top["rank"] == "species" and top["common_name"] == "great tit"
    assert top["taxonomy"] == {
        "kingdom": "Animalia", "phylum": "Chordata", "class": "Aves", "order": "Passeriformes",
        "family": "Paridae", "genus": "Parus", "species": "major",
    }  # fmt: skip
    assert body["results"][0]["vector"] is None


def test_species_is_the_default_rank_and_all_probabilities_sum_to_one(tol_client: TestClient) -> None:
    body = _classify(tol_client, k=100)
    predictions = body["results"][0]["predictions"]
    assert body["rank"] == "species" and len(predictions) == len(SPECIES)
    assert sum(p["probability"] for p in predictions) == pytest.approx(1.0, abs=1e-6)
    oak = next(p for p in predictions if p["name"] == "Quercus robur")
    assert oak["common_name"] is None  # an empty common name in the file is no name


@pytest.mark.parametrize(
    ("rank", "expected"),
    [
        ("kingdom", [("Animalia", 0.9), ("Plantae", 0.1)]),
        ("class", [("Insecta", 0.54), ("Aves", 0.36), ("Magnoliopsida", 0.1)]),
        ("order", [("Lepidoptera", 0.38), ("Passeriformes", 0.3), ("Coleoptera", 0.16)]),
        ("family", [("Nymphalidae", 0.38), ("Paridae", 0.25)]),
    ],
)
def test_ranks_above_species_sum_their_species_probabilities(
    tol_client: TestClient, rank: str, expected: list[tuple[str, float]]
) -> None:
    body = _classify(tol_client, rank=rank, k=len(expected))
    assert _names_and_probabilities(body) == expected
    for prediction in body["results"][0]["predictions"]:
        assert prediction["rank"] == rank and prediction["common_name"] is None
        taxonomy = prediction["taxonomy"]
        assert taxonomy[rank] == prediction["name"]
        assert taxonomy["species"] is None  # ranks below the one predicted are not part of the answer


def test_one_genus_name_in_two_kingdoms_stays_two_genera(tol_client: TestClient) -> None:
    body = _classify(tol_client, rank="genus", k=8)
    morus = [p for p in body["results"][0]["predictions"] if p["name"] == "Morus"]
    assert {(p["taxonomy"]["kingdom"], round(p["probability"], 4)) for p in morus} == {
        ("Plantae", 0.07),
        ("Animalia", 0.06),
    }


def test_a_clade_restriction_changes_the_answer(tol_client: TestClient) -> None:
    unrestricted = _classify(tol_client, rank="species", k=1)
    insects = _classify(tol_client, rank="species", k=3, clade={"rank": "class", "value": "insecta"})
    assert _names_and_probabilities(unrestricted)[0][0] == "Parus major"
    # Within Insecta the softmax is over the three insects alone: 0.20, 0.18, 0.16 out of 0.54.
    assert _names_and_probabilities(insects) == [
        ("Danaus plexippus", 0.3704),
        ("Vanessa cardui", 0.3333),
        ("Coccinella septempunctata", 0.2963),
    ]
    assert insects["clade"] == {"rank": "class", "value": "insecta"}


def test_a_clade_given_as_text_works_at_a_higher_rank(tol_client: TestClient) -> None:
    body = _classify(tol_client, rank="order", k=5, clade="class:Aves")
    assert _names_and_probabilities(body) == [("Passeriformes", 0.8333), ("Suliformes", 0.1667)]


def test_a_homonym_clade_takes_every_group_of_that_name(tol_client: TestClient) -> None:
    body = _classify(tol_client, rank="species", k=5, clade={"rank": "genus", "value": "Morus"})
    assert _names_and_probabilities(body) == [("Morus alba", 0.5385), ("Morus bassanus", 0.4615)]


def test_a_clade_at_the_rank_predicted_predicts_among_the_groups_of_that_name(tol_client: TestClient) -> None:
    # A user's filter at the prediction's rank: Morus is a genus of plants and one of birds.
    body = _classify(tol_client, rank="genus", k=5, clade={"rank": "genus", "value": "Morus"})
    assert [name for name, _ in _names_and_probabilities(body)] == ["Morus", "Morus"]
    assert sum(p["probability"] for p in body["results"][0]["predictions"]) == pytest.approx(1.0)
    assert {p["taxonomy"]["kingdom"] for p in body["results"][0]["predictions"]} == {"Plantae", "Animalia"}
    aves = _classify(tol_client, rank="class", k=5, clade="class:Aves")
    assert _names_and_probabilities(aves) == [("Aves", 1.0)]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"clade": {"rank": "class", "value": "Mammalia"}}, 422, "unknown_clade"),
        ({"rank": "class", "clade": {"rank": "genus", "value": "Morus"}}, 422, "invalid_clade"),
        ({"clade": "Insecta"}, 422, "invalid_request"),
        ({"rank": "subspecies"}, 422, "invalid_request"),
        ({"k": 0}, 422, "invalid_request"),
        ({"labels": ["a", "b"], "rank": "genus"}, 422, "invalid_request"),
    ],
    ids=["unknown-clade", "clade-below-rank", "clade-without-rank", "bad-rank", "k-zero",
         "rank-with-labels"],
)  # fmt: skip
def test_bad_classify_parameters_are_refused_with_a_reason(
    tol_client: TestClient, body: dict, status: int, code: str
) -> None:
    scale = tol_client.get("/v1/model").json()["logit_scale"]
    response = tol_client.post("/v1/classify", json={"vector": _query(scale), **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"vector": [0.1] * 31}, "dimension_mismatch"),
        ({"vector": [0.0] * 32}, "invalid_vector"),
        ({"vectors": [[0.1] * 32, [0.1] * 16]}, "dimension_mismatch"),
        ({"vector": [0.1] * 32, "vectors": [[0.1] * 32]}, "invalid_request"),
        ({}, "invalid_request"),
    ],
    ids=["short", "zeros", "one-short-of-two", "both-inputs", "no-input"],
)
def test_bad_vectors_are_refused(tol_client: TestClient, body: dict, code: str) -> None:
    response = tol_client.post("/v1/classify", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code


def test_several_vectors_get_one_result_each_in_order(tol_client: TestClient) -> None:
    axes = np.eye(DIM)
    response = tol_client.post("/v1/classify", json={"vectors": [axes[6].tolist(), axes[2].tolist()], "k": 1})
    assert response.status_code == 200
    names = [result["predictions"][0]["name"] for result in response.json()["results"]]
    assert names == ["Morus alba", "Coccinella septempunctata"]


def test_label_files_in_the_datasets_embeddings_folder_are_found(
    embedder_settings: EmbedderSettings, tmp_path: Path
) -> None:
    folder = write_labels(tmp_path / "TreeOfLife-200M", np.eye(DIM, dtype=np.float32)[:8], _entries(), nested=True)
    with running(embedder_settings.model_copy(update={"tree_of_life_dir": folder})) as client:
        assert client.get("/v1/model").json()["tree_of_life_labels"] == 8
        response = client.post("/v1/classify", json={"vector": np.eye(DIM)[7].tolist(), "k": 1})
    assert response.json()["results"][0]["predictions"][0]["name"] == "Quercus robur"


def test_an_uploaded_image_is_classified_and_its_vector_returned(
    embedder_settings: EmbedderSettings, tmp_path: Path, make_image: ImageFactory
) -> None:
    images = [make_image(seed=seed) for seed in range(3)]
    with running(embedder_settings) as plain:
        files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
        vectors = np.asarray(plain.post("/v1/embed/image", files=files).json()["vectors"], dtype=np.float32)
    # Each species' text vector is one test image's own vector, so that image must come out on top.
    folder = write_labels(tmp_path / "tol", vectors, [[list(path), common] for path, common, _ in SPECIES[:3]])
    with running(embedder_settings.model_copy(update={"tree_of_life_dir": folder})) as client:
        upload = client.post(
            "/v1/classify",
            files=[("images", ("second.jpg", images[1], "image/jpeg"))],
            data={"k": "3", "rank": "species"},
        )
        assert upload.status_code == 200, upload.text
        result = upload.json()["results"][0]
        assert result["predictions"][0]["name"] == "Vanessa cardui"
        np.testing.assert_allclose(result["vector"], vectors[1], atol=1e-5)
        # The gateway's way: the vector it already has, no second embedding, the same answer.
        again = client.post("/v1/classify", json={"vector": result["vector"], "k": 3}).json()["results"][0]
    assert [p["name"] for p in again["predictions"]] == [p["name"] for p in result["predictions"]]
    for mine, theirs in zip(again["predictions"], result["predictions"], strict=True):
        assert mine["probability"] == pytest.approx(theirs["probability"], abs=1e-5)


def test_classify_needs_labels_when_no_tree_of_life_is_configured(client: TestClient) -> None:
    response = client.post("/v1/classify", json={"vector": [0.1] * 32})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "labels_not_configured" and "EMBEDDER_TREE_OF_LIFE_DIR" in error["message"]


def test_request_labels_are_plain_text_vectors_when_so_configured(embedder_settings: EmbedderSettings) -> None:
    labels = ["Danaus plexippus", "Quercus robur", "Parus major"]
    with running(embedder_settings.model_copy(update={"label_templates": "plain"})) as client:
        texts = np.asarray(client.post("/v1/embed/text", json={"texts": labels}).json()["vectors"])
        scale = client.get("/v1/model").json()["logit_scale"]
        query = texts[2] * 0.8 + texts[0] * 0.6
        body = client.post("/v1/classify", json={"vector": query.tolist(), "labels": labels, "k": 3}).json()
    logits = scale * texts @ (query / np.linalg.norm(query))
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    got = {p["name"]: p["probability"] for p in body["results"][0]["predictions"]}
    assert body["labels"] == "request" and body["rank"] is None
    assert got == pytest.approx(dict(zip(labels, expected, strict=True)), abs=1e-5)
    assert all(p["taxonomy"] is None and p["rank"] is None for p in body["results"][0]["predictions"])


def test_request_labels_average_the_openai_prompts_and_are_embedded_once(client: TestClient) -> None:
    import open_clip

    labels = ["monarch butterfly", "oak tree"]
    prompts = [prompt("oak tree") for prompt in open_clip.OPENAI_IMAGENET_TEMPLATES]
    prompt_vectors = np.asarray(client.post("/v1/embed/text", json={"texts": prompts}).json()["vectors"])
    oak = prompt_vectors.mean(axis=0)
    oak /= np.linalg.norm(oak)
    embedder = client.app.state.embedder  # type: ignore[attr-defined]
    before = embedder.labels.embedded
    first = client.post("/v1/classify", json={"vector": oak.tolist(), "labels": labels, "k": 2}).json()
    after_first = embedder.labels.embedded
    second = client.post("/v1/classify", json={"vector": oak.tolist(), "labels": labels[::-1], "k": 2}).json()
    assert first["results"][0]["predictions"][0]["name"] == "oak tree"
    assert after_first == before + 2  # both labels went through the text tower once
    assert embedder.labels.embedded == after_first  # and the second request reused their cached vectors
    assert first["results"][0]["predictions"] == second["results"][0]["predictions"]


@pytest.mark.parametrize(
    ("labels", "code", "status"),
    [(["a", " a "], "invalid_request", 422), (["a", ""], "invalid_request", 422), (["only"], "invalid_request", 422)],
    ids=["duplicates", "blank", "one-label"],
)
def test_bad_label_lists_are_refused(client: TestClient, labels: list[str], code: str, status: int) -> None:
    response = client.post("/v1/classify", json={"vector": [0.1] * 32, "labels": labels})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_too_many_labels_are_refused(embedder_settings: EmbedderSettings) -> None:
    with running(embedder_settings.model_copy(update={"max_labels_per_request": 3})) as client:
        response = client.post("/v1/classify", json={"vector": [0.1] * 32, "labels": ["a", "b", "c", "d"]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_labels"


def test_classify_takes_json_or_multipart_only(client: TestClient) -> None:
    assert client.post("/v1/classify", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    broken = client.post("/v1/classify", content=b"{", headers={"content-type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    # Nesting past the parser's recursion limit is a RecursionError, not a ValueError: still not JSON.
    deep = client.post("/v1/classify", content=b"[" * 100_000, headers={"content-type": "application/json"})
    assert deep.status_code == 400 and deep.json()["error"]["code"] == "invalid_json"
    no_image = client.post("/v1/classify", data={"k": "3"}, files=[("other", ("a.txt", b"x", "text/plain"))])
    assert no_image.status_code == 400 and no_image.json()["error"]["code"] == "missing_image"


def test_multipart_labels_repeat_the_field(client: TestClient, make_image: ImageFactory) -> None:
    response = client.post(
        "/v1/classify",
        files=[("images", ("a.jpg", make_image(seed=2), "image/jpeg"))],
        data={"labels": ["cat", "dog", "bird"], "k": "2"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["labels"] == "request" and len(body["results"][0]["predictions"]) == 2
    assert {p["name"] for p in body["results"][0]["predictions"]} <= {"cat", "dog", "bird"}
