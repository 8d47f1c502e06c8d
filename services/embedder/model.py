"""Load an open_clip model once and run it: images and texts in, L2-normalised float32 vectors out."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from services.embedder.preprocess import Transform, describe, pybioclip_transform
from services.embedder.settings import EmbedderSettings

logger = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says which setting to change."""


@dataclass
class LoadedModel:
    name: str
    architecture: str
    checkpoint: Path | None
    pretrained: bool
    model: torch.nn.Module
    tokenizer: open_clip.tokenizer.SimpleTokenizer
    transform: Transform
    preprocessing: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dim: int
    device: torch.device
    precision: str = "fp32"
    # One forward pass at a time: torch already spreads one pass over all its threads.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images])

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        with self._lock:
            vectors = self.model.encode_image(pixels.to(self.device), normalize=True)
        return vectors.float().cpu().numpy().astype(np.float32)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.embed_pixels(self.preprocess(images))

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts).to(self.device)
        with self._lock:
            vectors = self.model.encode_text(tokens, normalize=True)
        return vectors.float().cpu().numpy().astype(np.float32)

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _architecture_name(settings: EmbedderSettings) -> str:
    if settings.model.startswith(HF_HUB_PREFIX):
        return settings.model
    if settings.architecture_config is not None:
        return settings.architecture_config.stem
    return settings.model


def load_model(settings: EmbedderSettings) -> LoadedModel:
    """The one place a model is loaded, for the service, the tests and the benchmarks alike."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    if settings.architecture_config is not None:
        if not settings.architecture_config.is_file():
            raise ModelLoadError(f"EMBEDDER_ARCHITECTURE_CONFIG={settings.architecture_config} does not exist")
        open_clip.add_model_config(settings.architecture_config)
    name = _architecture_name(settings)
    from_hub = name.startswith(HF_HUB_PREFIX)
    if settings.checkpoint is not None and not settings.checkpoint.is_file():
        raise ModelLoadError(f"EMBEDDER_CHECKPOINT={settings.checkpoint} does not exist")
    if not from_hub and settings.checkpoint is None and not settings.random_weights:
        raise ModelLoadError(
            f"EMBEDDER_MODEL={name} is an architecture without weights: set EMBEDDER_CHECKPOINT to a "
            "weights file, use an hf-hub: name, or set EMBEDDER_RANDOM_WEIGHTS=true for benchmarks"
        )
    if not from_hub and name not in open_clip.list_models():
        raise ModelLoadError(
            f"EMBEDDER_MODEL={name} is not an open_clip architecture; set EMBEDDER_ARCHITECTURE_CONFIG "
            "to its config JSON or use an hf-hub: name"
        )
    device = torch.device(settings.device)
    cache_dir = str(settings.cache_dir) if settings.cache_dir else None
    try:
        model, _, open_clip_preprocess = open_clip.create_model_and_transforms(
            name,
            pretrained=str(settings.checkpoint) if settings.checkpoint else None,
            device=device,
            cache_dir=cache_dir,
        )
        tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except Exception as exc:
        hint = (
            "the hub could not be reached or the name is wrong; download the weights and set "
            "EMBEDDER_MODEL=<architecture> with EMBEDDER_CHECKPOINT=<file>, or set EMBEDDER_CACHE_DIR to a "
            "cache that holds them"
            if from_hub
            else "check EMBEDDER_CHECKPOINT matches EMBEDDER_MODEL"
        )
        raise ModelLoadError(f"could not load {name}: {type(exc).__name__}: {exc} ({hint})") from exc
    model.eval()
    visual = model.visual
    size = visual.image_size
    image_size = int(size[0] if isinstance(size, tuple | list) else size)
    mean = tuple(float(v) for v in (getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in (getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD))
    if settings.preprocessing == "pybioclip":
        transform = pybioclip_transform(image_size, mean, std)
    else:
        transform = open_clip_preprocess
    with torch.inference_mode():
        dim = int(model.encode_text(tokenizer(["warm-up"]).to(device)).shape[-1])
    loaded = LoadedModel(
        name=settings.model,
        architecture=name,
        checkpoint=settings.checkpoint,
        pretrained=from_hub or settings.checkpoint is not None,
        model=model,
        tokenizer=tokenizer,
        transform=transform,
        preprocessing=settings.preprocessing,
        image_size=image_size,
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        dim=dim,
        device=device,
    )
    # The first forward pass is slow (allocations, kernel selection): pay it before serving.
    loaded.embed_images([Image.new("RGB", (image_size, image_size))])
    logger.info(
        "loaded %s (%s, dim %d, %s preprocessing) on %s",
        name,
        settings.checkpoint or "hub",
        dim,
        settings.preprocessing,
        device,
    )
    return loaded


def describe_transform(loaded: LoadedModel) -> list[str]:
    return describe(loaded.transform)
