"""The embedder app with the tiny checkpoint loaded through the production path."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torchvision.transforms import functional as F

from services.embedder.model import ModelLoadError, load_model
from services.embedder.settings import EmbedderSettings
from stack.tiny_model import TinyModel
from tests.conftest import ImageFactory
from tests.embedder.conftest import running


def _vectors(response) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["vectors"], dtype=np.float32)


def test_image_embedding_is_one_normalised_vector_per_image(client: TestClient, make_image: ImageFactory) -> None:
    response = client.post(
        "/v1/embed/image",
        files=[
            ("images", ("a.jpg", make_image(seed=1), "image/jpeg")),
            ("images", ("b.png", make_image(seed=2, fmt="PNG"), "image/png")),
        ],
    )
    vectors = _vectors(response)
    body = response.json()
    assert body["count"] == 2 and body["dim"] == 32 and body["model"] == "tiny-test-clip"
    assert vectors.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_several_images_give_the_same_vectors_as_one_at_a_time(client: TestClient, make_image: ImageFactory) -> None:
    images = [make_image(seed=seed) for seed in (3, 4, 5)]
    together = _vectors(
        client.post("/v1/embed/image", files=[("images", (f"{i}.jpg", d, "image/jpeg")) for i, d in enumerate(images)])
    )
    alone = np.stack(
        [_vectors(client.post("/v1/embed/image", files=[("images", ("x.jpg", d, "image/jpeg"))]))[0] for d in images]
    )
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_default_preprocessing_resizes_to_exactly_the_model_size_without_crop(
    client: TestClient, embedder_settings: EmbedderSettings, make_image: ImageFactory
) -> None:
    data = make_image(300, 120, seed=6, fmt="PNG")
    served = _vectors(client.post("/v1/embed/image", files=[("images", ("wide.png", data, "image/png"))]))[0]
    # The pybioclip recipe written out by hand: ToTensor -> Resize((224, 224)) bilinear antialias -> Normalize.
    pixels = F.to_tensor(Image.open(io.BytesIO(data)).convert("RGB"))
    pixels = F.resize(pixels, [224, 224], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    pixels = F.normalize(pixels, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    model = load_model(embedder_settings)
    expected = model.embed_pixels(pixels[None])[0]
    np.testing.assert_allclose(served, expected, atol=1e-5)
    info = client.get("/v1/model").json()
    assert info["preprocessing"] == "pybioclip"
    assert any("Resize(size=(224, 224)" in step for step in info["preprocessing_steps"])
    assert not any("CenterCrop" in step for step in info["preprocessing_steps"])


def test_open_clip_preprocessing_is_selectable_and_gives_other_vectors(
    embedder_settings: EmbedderSettings, make_image: ImageFactory
) -> None:
    data = make_image(300, 120, seed=6, fmt="PNG")
    files = [("images", ("wide.png", data, "image/png"))]
    with running(embedder_settings) as default:
        pybioclip = _vectors(default.post("/v1/embed/image", files=files))[0]
    with running(embedder_settings.model_copy(update={"preprocessing": "open_clip"})) as other:
        open_clip_vector = _vectors(other.post("/v1/embed/image", files=files))[0]
        info = other.get("/v1/model").json()
    assert info["preprocessing"] == "open_clip"
    assert any("CenterCrop" in step for step in info["preprocessing_steps"])
    # A crop and a squash of a wide picture are different inputs, so the vectors differ.
    assert np.abs(pybioclip - open_clip_vector).max() > 1e-3


def test_text_embedding_is_normalised_and_differs_per_text(client: TestClient) -> None:
    vectors = _vectors(client.post("/v1/embed/text", json={"texts": ["Danaus plexippus", "Quercus robur"]}))
    assert vectors.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_model_info_describes_what_is_loaded(client: TestClient, tiny_model: TinyModel) -> None:
    info = client.get("/v1/model").json()
    assert info["model"] == "tiny-test-clip"
    assert info["architecture"] == "tiny-test-clip"
    assert info["checkpoint"] == str(tiny_model.checkpoint)
    assert info["dim"] == 32 and info["image_size"] == 224
    assert info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["parameters"] > 0


@pytest.mark.parametrize(
    ("files", "status", "code"),
    [
        ([("images", ("notes.txt", b"just some text", "text/plain"))], 422, "not_an_image"),
        ([("images", ("empty.jpg", b"", "image/jpeg"))], 400, "empty_file"),
        ([("images", ("fake.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 64, "image/jpeg"))], 422, None),
        ([("other", ("a.jpg", b"abc", "image/jpeg"))], 422, "invalid_request"),
    ],
    ids=["not-an-image", "empty", "garbage-jpeg-header", "missing-field"],
)
def test_bad_uploads_get_a_clear_4xx(client: TestClient, files: list, status: int, code: str | None) -> None:
    response = client.post("/v1/embed/image", files=files)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if code:
        assert error["code"] == code


def test_truncated_image_is_refused_as_corrupt(client: TestClient, make_image: ImageFactory) -> None:
    data = make_image(400, 300, seed=9)
    response = client.post("/v1/embed/image", files=[("images", ("cut.jpg", data[: len(data) // 2], "image/jpeg"))])
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "corrupt_image"


def test_image_over_the_pixel_limit_is_refused(embedder_settings: EmbedderSettings, make_image: ImageFactory) -> None:
    settings = embedder_settings.model_copy(update={"max_image_pixels": 50 * 50})
    with running(settings) as client:
        response = client.post(
            "/v1/embed/image", files=[("images", ("big.png", make_image(100, 100, fmt="PNG"), "image/png"))]
        )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "image_too_large"


def test_request_body_over_the_limit_is_refused_with_413(
    embedder_settings: EmbedderSettings, make_image: ImageFactory
) -> None:
    settings = embedder_settings.model_copy(update={"max_request_bytes": 10_000})
    with running(settings) as client:
        big = make_image(600, 600, fmt="PNG")
        assert len(big) > 10_000
        response = client.post("/v1/embed/image", files=[("images", ("big.png", big, "image/png"))])
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


def test_too_many_images_in_one_request_is_refused(
    embedder_settings: EmbedderSettings, make_image: ImageFactory
) -> None:
    settings = embedder_settings.model_copy(update={"max_images_per_request": 2})
    with running(settings) as client:
        files = [("images", (f"{i}.jpg", make_image(seed=i), "image/jpeg")) for i in range(3)]
        response = client.post("/v1/embed/image", files=files)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_images"


@pytest.mark.parametrize(
    ("body", "status"),
    [({"texts": []}, 422), ({"texts": ["  "]}, 400), ({"texts": ["ok", "\ufeff\u200b\x00"]}, 400), ({}, 422),
     ({"texts": "x"}, 422)],
)  # fmt: skip
def test_bad_text_requests_get_a_clear_4xx(client: TestClient, body: dict, status: int) -> None:
    response = client.post("/v1/embed/text", json=body)
    assert response.status_code == status
    assert response.json()["error"]["message"]


def test_operations_endpoints_answer(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "service": "embedder"}
    assert client.get("/readyz").json()["ready"] is True
    client.get("/v1/model")
    metrics = client.get("/metrics").text
    assert 'http_requests_total{method="GET",route="/v1/model",service="embedder",status="200"}' in metrics


def test_architecture_without_weights_fails_naming_the_setting(tiny_model: TinyModel) -> None:
    settings = EmbedderSettings(model=tiny_model.name, architecture_config=tiny_model.config)
    with pytest.raises(ModelLoadError, match="checkpoint"):
        load_model(settings)


def test_random_weights_must_be_asked_for_and_then_load(tiny_model: TinyModel) -> None:
    settings = EmbedderSettings(model=tiny_model.name, architecture_config=tiny_model.config, random_weights=True)
    loaded = load_model(settings)
    assert loaded.pretrained is False
    assert loaded.dim == 32


def test_checkpoint_weights_are_the_ones_used(embedder_settings: EmbedderSettings, tiny_model: TinyModel) -> None:
    loaded = load_model(embedder_settings)
    saved = torch.load(tiny_model.checkpoint, weights_only=True)
    name, tensor = next(iter(saved.items()))
    assert torch.equal(loaded.model.state_dict()[name], tensor)
