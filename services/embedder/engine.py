"""The embedder's core: the loaded model, its batcher and its label sets, behind the calls the routes make.

Decoding and preprocessing go through `offload`, the app's bounded thread pool, one torch thread each;
forward passes (batched across concurrent requests) and text passes run on one thread of their own with
all the model's torch threads, so that they never queue behind decoding for a pool slot and only one
team of torch threads computes at a time (docs/benchmarks/embedder.md has the profile behind this).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

from services.common.errors import InvalidInput
from services.common.images import InvalidImage, decode_image
from services.common.schemas.embedder import (
    Clade,
    ClassifyParameters,
    ClassifyResponse,
    ClassifyResult,
    ModelInfo,
    Prediction,
    Taxonomy,
)
from services.common.settings import setting
from services.common.vocabulary import RANKS, clean
from services.embedder import classify
from services.embedder.batching import Batcher
from services.embedder.errors import LabelsNotConfigured, ModelLoadError
from services.embedder.labels import LabelsError, LabelVectors, TreeOfLife, load_tree_of_life
from services.embedder.memory import keep_freed_memory
from services.embedder.model import LoadedModel, describe_transform, load_model
from services.embedder.settings import EmbedderSettings

logger = logging.getLogger(__name__)

Offload = Callable[..., Awaitable[Any]]
T = TypeVar("T")


class ModelThread:
    """The one thread that runs the model, with `threads` torch threads; everything else runs with one.

    torch's thread count is per calling thread (OpenMP), so each side sets its own before it computes: the
    decoding threads' tensor transforms then do not start a second team of threads beside the forward's on
    cores it already fills.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model")

    def _call(self, func: Callable[..., T], *args: Any) -> T:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return func(*args)

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run `func(*args)` on the model thread and await it from the event loop."""
        return await asyncio.wrap_future(self._executor.submit(self._call, func, *args))

    def call(self, func: Callable[..., T], *args: Any) -> T:
        """Run `func(*args)` on the model thread from another (blocking) thread and wait for it."""
        return self._executor.submit(self._call, func, *args).result()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def single_threaded(func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` with one torch thread in this (pool) thread: preprocessing beside the model's passes."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return func(*args)


def load_resources(settings: EmbedderSettings) -> tuple[LoadedModel, TreeOfLife | None]:
    """The model, then the TreeOfLife labels when configured; any failure is a ModelLoadError naming the setting."""
    keep_freed_memory(settings.malloc_threshold_mib)  # before the model's first allocations
    model = load_model(settings)
    tree = None
    if settings.tree_of_life_dir is not None:
        try:
            tree = load_tree_of_life(settings.tree_of_life_dir)
        except LabelsError as exc:
            raise ModelLoadError(f"{setting('tree_of_life_dir')}={settings.tree_of_life_dir}: {exc}") from exc
        if tree.dim != model.dim:
            raise ModelLoadError(
                f"{setting('tree_of_life_dir')}={settings.tree_of_life_dir} holds {tree.dim}-d text vectors but "
                f"{settings.model} makes {model.dim}-d ones: the labels were made with another model"
            )
    return model, tree


class Embedder:
    def __init__(
        self, model: LoadedModel, tree: TreeOfLife | None, settings: EmbedderSettings, offload: Offload
    ) -> None:
        self.model = model
        self.tree = tree
        self.settings = settings
        self.offload = offload
        self.model_thread = ModelThread(settings.torch_threads or torch.get_num_threads())
        self.batcher: Batcher[torch.Tensor, np.ndarray] = Batcher(
            self._run_batch, max_size=settings.max_batch_size, max_wait=settings.max_batch_wait_ms / 1000
        )
        self.labels = LabelVectors(self._embed_labels, settings.label_cache_size)

    async def warm_up(self) -> None:
        """The model's first, slow forward pass, on the model thread: requests that arrive meanwhile queue behind it."""
        await self.model_thread.run(self.model.warm_up)

    async def close(self) -> None:
        await self.batcher.close()
        self.model_thread.close()
        stats = self.batcher.stats
        if stats.batches:
            logger.info(
                "batching: %d images in %d forward passes, %.1f s (largest %d; passes by size: %s)",
                stats.items,
                stats.batches,
                stats.seconds,
                stats.largest,
                ", ".join(f"{size}: {count}" for size, count in sorted(stats.sizes.items())),
            )

    async def _run_batch(self, inputs: list[torch.Tensor]) -> list[np.ndarray]:
        return await self.model_thread.run(self.model.embed_batch, inputs)

    def _embed_labels(self, labels: list[str]) -> np.ndarray:
        # Called from a pool thread (classify's prediction): the text passes still run on the model thread.
        return self.model_thread.call(self.model.embed_labels, labels, self.settings.label_templates)

    def _prepare(self, data: bytes, name: str) -> torch.Tensor:
        try:
            # Both preprocessings resize so that the shortest side becomes the model's size: a large JPEG is
            # decoded straight at the smallest scale that still covers it.
            image = decode_image(data, name, self.settings.max_image_pixels, shortest_side=self.model.image_size)
        except InvalidImage as exc:
            raise exc.as_domain_error() from exc
        return self.model.prepare(image)

    async def embed_images(self, uploads: Sequence[tuple[str, bytes]]) -> np.ndarray:
        """(n, dim) unit vectors for (name, bytes) uploads, in order; each image decoded once, in the pool."""
        limit = self.settings.max_images_per_request
        if len(uploads) > limit:
            raise InvalidInput(f"{len(uploads)} images in one request; the limit is {limit}", code="too_many_images")
        # Announced before decoding, so that a forward pass about to start waits for these images.
        with self.batcher.incoming(len(uploads)) as reservation:
            inputs = [await self.offload(single_threaded, self._prepare, data, name) for name, data in uploads]
            return np.stack(await reservation.submit(inputs))

    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        # The vocabulary's cleaning: a text of only a BOM, zero-width or control characters is blank too.
        cleaned = [clean(text) for text in texts]
        if not all(cleaned):
            raise InvalidInput("texts must not be empty or blank", code="empty_text")
        return await self.model_thread.run(self.model.embed_texts, cleaned)

    def _check(self, params: ClassifyParameters) -> None:
        if params.labels is not None and len(params.labels) > self.settings.max_labels_per_request:
            raise InvalidInput(
                f"{len(params.labels)} labels; the limit is {self.settings.max_labels_per_request}",
                code="too_many_labels",
            )
        if params.labels is None and self.tree is None:
            raise LabelsNotConfigured("no TreeOfLife labels are loaded here: send `labels`")

    async def classify_vectors(
        self, params: ClassifyParameters, vectors: Sequence[Sequence[float]]
    ) -> ClassifyResponse:
        """Predictions for vectors already computed (by POST /v1/embed/image), so nothing is embedded twice."""
        self._check(params)
        array = classify.check_vectors(vectors, self.model.dim)
        return self._response(params, await self.offload(self._predict, array, params), None)

    async def classify_images(
        self, params: ClassifyParameters, uploads: Sequence[tuple[str, bytes]]
    ) -> ClassifyResponse:
        """Predictions for uploaded images; their vectors come back too, for a search without a second embedding."""
        self._check(params)
        vectors = await self.embed_images(uploads)
        return self._response(params, await self.offload(self._predict, vectors, params), vectors)

    def _response(
        self, params: ClassifyParameters, found: list[list[classify.Prediction]], vectors: np.ndarray | None
    ) -> ClassifyResponse:
        return ClassifyResponse(
            model=self.model.name,
            labels="request" if params.labels is not None else "tree_of_life",
            rank=None if params.labels is not None else params.rank or "species",
            k=params.k,
            clade=params.clade,
            results=[
                ClassifyResult(
                    predictions=[_prediction(p) for p in predictions],
                    vector=vectors[i].tolist() if vectors is not None else None,
                )
                for i, predictions in enumerate(found)
            ],
        )

    def _predict(self, vectors: np.ndarray, params: ClassifyParameters) -> list[list[classify.Prediction]]:
        scale = self.model.logit_scale
        if params.labels is not None:
            matrix = self.labels.matrix(params.labels)
            return classify.predict_labels(vectors, params.labels, matrix, scale, params.k)
        assert self.tree is not None
        clade: Clade | None = params.clade
        return classify.predict_tree_of_life(
            vectors,
            self.tree,
            scale,
            rank=params.rank or "species",
            k=params.k,
            clade=(clade.rank, clade.value) if clade else None,
        )

    def info(self) -> ModelInfo:
        model = self.model
        choice = model.choice
        return ModelInfo(
            model=model.name,
            architecture=model.architecture,
            checkpoint=str(model.checkpoint) if model.checkpoint else None,
            pretrained=model.pretrained,
            dim=model.dim,
            image_size=model.image_size,
            preprocessing=model.preprocessing,  # type: ignore[arg-type]
            preprocessing_steps=describe_transform(model),
            mean=model.mean,
            std=model.std,
            device=str(model.device),
            precision=model.precision,
            precision_requested=choice.requested if choice else None,
            precision_reason=choice.reason if choice else None,
            cpu_capability=choice.cpu_capability if choice else None,
            precision_probe_ms=choice.probe_ms or None if choice else None,
            precision_probe_seconds=choice.probe_seconds if choice and choice.probe_ms else None,
            parameters=model.parameters,
            torch_threads=self.model_thread.threads,
            max_batch_size=self.settings.max_batch_size,
            max_batch_wait_ms=self.settings.max_batch_wait_ms,
            logit_scale=model.logit_scale,
            tree_of_life_labels=len(self.tree) if self.tree is not None else None,
        )


def _prediction(found: classify.Prediction) -> Prediction:
    taxonomy = None
    if found.path is not None:
        taxonomy = Taxonomy.model_validate(
            {rank: (found.path[i] or None) if i < len(found.path) else None for i, rank in enumerate(RANKS)}
        )
    return Prediction(
        name=found.name,
        rank=found.rank,  # type: ignore[arg-type]
        taxonomy=taxonomy,
        common_name=found.common_name,
        probability=found.probability,
    )
