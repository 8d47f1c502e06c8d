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

from services.common.settings import setting
from services.embedder import precision as precisions
from services.embedder.errors import ModelLoadError, one_line
from services.embedder.precision import INPUT_DTYPES, Int8Towers, PrecisionChoice, PrecisionError
from services.embedder.preprocess import Transform, describe, pybioclip_transform
from services.embedder.settings import EmbedderSettings

logger = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"


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
    choice: PrecisionChoice | None = None  # what `precision` was chosen from, and why
    int8: Int8Towers | None = None  # int8: the towers ONNX Runtime runs instead of `model`
    logit_scale: float = 100.0  # exp(the model's learned logit scale): softmax temperature for classify
    # One forward pass at a time: torch already spreads one pass over all its threads.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def dtype(self) -> torch.dtype:
        """What input tensors are cast to (float32 for int8, which quantizes activations inside each layer)."""
        return INPUT_DTYPES[self.precision]

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """One decoded RGB image as the model's input tensor (C, H, W), float32."""
        return self.transform(image)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self.prepare(image) for image in images])

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(B, C, H, W) input tensors -> (B, dim) unit vectors; vectors come back float32 whatever the precision."""
        with self._lock:
            if self.int8 is not None:
                vectors = self.int8.encode_image(pixels)
            else:
                vectors = self.model.encode_image(pixels.to(self.device, self.dtype))
        return _unit(vectors)

    def embed_batch(self, inputs: list[torch.Tensor]) -> list[np.ndarray]:
        """What the batcher runs: several callers' input tensors in one forward pass."""
        return list(self.embed_pixels(torch.stack(inputs)))

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.embed_pixels(self.preprocess(images))

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts).to(self.device)
        with self._lock:
            vectors = self.int8.encode_text(tokens) if self.int8 is not None else self.model.encode_text(tokens)
        return _unit(vectors)

    def embed_labels(self, labels: list[str], templates: str = "openai", per_pass: int = 256) -> np.ndarray:
        """One unit vector per label. `openai`: the mean of the label in the 80 OpenAI ImageNet prompts,
        renormalised (pybioclip's recipe for custom labels); `plain`: the label as written."""
        if templates == "plain":
            return self.embed_texts(labels)
        prompts = open_clip.OPENAI_IMAGENET_TEMPLATES
        texts = [prompt(label) for label in labels for prompt in prompts]
        # The text tower in bounded passes, so a long label list does not hold the model (or memory) at once.
        vectors = np.concatenate([self.embed_texts(texts[i : i + per_pass]) for i in range(0, len(texts), per_pass)])
        means = vectors.reshape(len(labels), len(prompts), -1).mean(axis=1)
        return means / np.linalg.norm(means, axis=1, keepdims=True)

    def warm_up(self) -> None:
        """One image through preprocessing and the image tower: the first pass is slow (allocations, kernel
        selection). The service runs it just after it says ready, on the model thread, so it adds nothing to
        restart-to-ready and the first request, queued behind it, does not pay it again."""
        self.embed_images([Image.new("RGB", (self.image_size, self.image_size))])

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _unit(vectors: torch.Tensor) -> np.ndarray:
    """L2-normalised float32 rows; normalised after the cast, so bf16/fp16 vectors are unit length too."""
    as_float = vectors.float()
    return torch.nn.functional.normalize(as_float, dim=-1).cpu().numpy().astype(np.float32, copy=False)


def _architecture_name(settings: EmbedderSettings) -> str:
    if settings.model.startswith(HF_HUB_PREFIX):
        return settings.model
    if settings.architecture_config is not None:
        return settings.architecture_config.stem
    return settings.model


def _check_device(settings: EmbedderSettings) -> torch.device:
    named = f"{setting('device')}={settings.device}"
    try:
        device = torch.device(settings.device)
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{named} is not a torch device; use cpu, cuda or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"{named} but torch sees no CUDA GPU; set {setting('device')}=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelLoadError(f"{named} but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"{named} but MPS is not available; set {setting('device')}=cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"{named} is not supported; use cpu, cuda or mps")
    if settings.precision != "auto":
        try:
            precisions.check(settings.precision, device)
        except PrecisionError as exc:
            raise ModelLoadError(exc.message) from exc
    return device


def _build_precision(setting: str, device: torch.device) -> str:
    """The precision open_clip builds the model in: int8 and `auto` on a CPU start from fp32 (the probe and the
    quantizer work on fp32 weights); auto on CUDA is fp16 without a probe."""
    if setting in ("fp32", "bf16", "fp16"):
        return setting
    if setting == "auto" and device.type == "cuda":
        return "fp16"
    return "fp32"


def load_model(settings: EmbedderSettings) -> LoadedModel:
    """The one place a model is loaded, for the service, the tests and the benchmarks alike."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = _check_device(settings)
    if settings.architecture_config is not None:
        if not settings.architecture_config.is_file():
            raise ModelLoadError(f"{setting('architecture_config')}={settings.architecture_config} does not exist")
        open_clip.add_model_config(settings.architecture_config)
    name = _architecture_name(settings)
    from_hub = name.startswith(HF_HUB_PREFIX)
    if settings.checkpoint is not None and not settings.checkpoint.is_file():
        raise ModelLoadError(f"{setting('checkpoint')}={settings.checkpoint} does not exist")
    if not from_hub and settings.checkpoint is None and not settings.random_weights:
        raise ModelLoadError(
            f"{setting('model')}={name} is an architecture without weights: set {setting('checkpoint')} to a "
            f"weights file, use an hf-hub: name, or set {setting('random_weights')}=true for benchmarks"
        )
    if not from_hub and name not in open_clip.list_models():
        raise ModelLoadError(
            f"{setting('model')}={name} is not an open_clip architecture; set {setting('architecture_config')} "
            "to its config JSON or use an hf-hub: name"
        )
    built = _build_precision(settings.precision, device)
    model, open_clip_preprocess, tokenizer = _create(settings, name, device, built)
    try:
        choice = precisions.choose(settings.precision, device, model, auto_int8=settings.auto_int8)
    except PrecisionError as exc:
        raise ModelLoadError(exc.message) from exc
    precision = choice.precision
    if precision == "bf16" and built != "bf16":
        # auto chose bf16 on the probe: open_clip builds bf16 models itself (layer norms kept in fp32).
        del model
        model, open_clip_preprocess, tokenizer = _create(settings, name, device, "bf16")
    visual = model.visual
    size = visual.image_size
    image_size = int(size[0] if isinstance(size, tuple | list) else size)
    mean = tuple(float(v) for v in (getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in (getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD))
    if settings.preprocessing == "pybioclip":
        transform = pybioclip_transform(image_size, mean, std)
    else:
        transform = open_clip_preprocess
    int8 = None
    if precision == "int8":
        context = int(getattr(model, "context_length", None) or 77)
        int8 = Int8Towers(model, image_size, context, settings.cache_dir, torch.get_num_threads())
        logger.info("int8 towers ready in %.1f s (%s)", int8.seconds, int8.folder or "not cached: no cache_dir")
    with torch.inference_mode():
        dim = int(model.encode_text(tokenizer(["warm-up"]).to(device)).shape[-1])
    scale = getattr(model, "logit_scale", None)
    logit_scale = float(scale.detach().float().exp().item()) if isinstance(scale, torch.Tensor) else 100.0
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
        precision=precision,
        choice=choice,
        int8=int8,
        logit_scale=logit_scale,
    )
    logger.info(
        "loaded %s (%s, dim %d, %s preprocessing, %s) on %s with %d torch threads",
        name,
        settings.checkpoint or ("random weights" if settings.random_weights and not from_hub else "hub"),
        dim,
        settings.preprocessing,
        precision if settings.precision != "auto" else f"{precision} (auto: {choice.reason})",
        device,
        torch.get_num_threads(),
    )
    return loaded


def _create(
    settings: EmbedderSettings, name: str, device: torch.device, precision: str
) -> tuple[torch.nn.Module, Transform, open_clip.tokenizer.SimpleTokenizer]:
    """open_clip's model (in eval mode), its own transform and its tokenizer; any failure is a ModelLoadError."""
    from_hub = name.startswith(HF_HUB_PREFIX)
    cache_dir = str(settings.cache_dir) if settings.cache_dir else None
    try:
        model, _, open_clip_preprocess = open_clip.create_model_and_transforms(
            name,
            pretrained=str(settings.checkpoint) if settings.checkpoint else None,
            device=device,
            precision=precision,
            cache_dir=cache_dir,
        )
        tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except Exception as exc:
        hint = (
            f"the weights could not be had from the hub (offline, or a wrong name): set {setting('cache_dir')} to "
            f"a model cache that holds them, or download them and set {setting('model')}=<architecture> with "
            f"{setting('checkpoint')}=<file>"
            if from_hub
            else f"check that {setting('checkpoint')} holds weights for {setting('model')}"
        )
        raise ModelLoadError(
            f"could not load {settings.model}: {hint} ({type(exc).__name__}: {one_line(exc)})"
        ) from exc
    model.eval()
    return model, open_clip_preprocess, tokenizer


def describe_transform(loaded: LoadedModel) -> list[str]:
    return describe(loaded.transform)
