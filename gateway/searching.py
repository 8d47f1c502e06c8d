"""A search as the gateway runs it: resolve the query to a vector (embedding it at most once),
search, predict, and summarise the hits."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import IO
from urllib.parse import urlencode

import anyio

from gateway.clients import ServiceClients
from gateway.errors import QueryExpired
from gateway.previews import query_preview
from gateway.query_cache import (
    CachedQuery,
    QueryCache,
    image_query_id_of_digests,
    mean_direction,
    record_query_id,
    text_query_id,
)
from gateway.schemas import Identity, Prediction, PredictionResult, SearchParameters, SearchResult
from gateway.served import ServedImages
from gateway.summaries import consensus, taxonomy_tree
from gateway.views import hit_view
from services.common.errors import DomainError, InvalidInput
from services.common.schemas.search import SearchRequest
from services.common.vocabulary import CLADE_RANKS, RANKS, TaxonFilter, clean

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upload:
    """One uploaded photo, held where the upload put it (a spooled temporary file: memory up to
    1 MB, then disk), never copied whole into memory: `digest` (SHA-256, hex) and `size` (bytes)
    were computed while it was read once, and `file` streams on to the embedder."""

    name: str
    file: IO[bytes]
    size: int
    digest: str
    content_type: str


class Searcher:
    def __init__(
        self,
        clients: ServiceClients,
        cache: QueryCache,
        *,
        max_images: int,
        predictions: int,
        served: ServedImages | None = None,
    ) -> None:
        self.clients = clients
        self.cache = cache
        self.max_images = max_images
        self.predictions = predictions
        self.served = served if served is not None else ServedImages(0)

    async def image_query(self, uploads: list[Upload]) -> CachedQuery:
        if not uploads:
            raise InvalidInput("attach the photo as the multipart field `image`", code="missing_image")
        if len(uploads) > self.max_images:
            raise InvalidInput(
                f"{len(uploads)} photos; one query takes at most {self.max_images}", code="too_many_images"
            )
        for upload in uploads:
            if not upload.size:
                raise InvalidInput(f"{upload.name}: the uploaded file is empty", code="empty_file")
        query_id = image_query_id_of_digests([upload.digest for upload in uploads])
        label = ", ".join(upload.name for upload in uploads)
        if cached := self.cache.get(query_id):
            # The vector is the photos'; the label is this request's: the same photo uploaded by someone
            # else under another file name must not show (or leak) theirs.
            return replace(cached, label=label)
        embedded = await self.clients.embed_images([(u.name, u.file, u.content_type) for u in uploads])
        # After the embedder has streamed the file and accepted the photo: read again from the spool.
        first = uploads[0]
        preview = await anyio.to_thread.run_sync(query_preview, first.file, first.name)
        return self.cache.put(CachedQuery(query_id, "image", mean_direction(embedded.vectors), label, preview))

    async def text_query(self, text: str) -> CachedQuery:
        text = clean(text)  # the vocabulary's cleaning, so a BOM or zero-width characters alone are blank
        if not text:
            raise InvalidInput("the text is blank", code="empty_text")
        query_id = text_query_id(text)
        if cached := self.cache.get(query_id):
            # Texts equal up to case and spacing share a vector, but the result echoes the text as typed.
            return replace(cached, label=text)
        embedded = await self.clients.embed_texts([text])
        return self.cache.put(CachedQuery(query_id, "text", mean_direction(embedded.vectors), text))

    async def record_query(self, record_id: int) -> CachedQuery:
        query_id = record_query_id(record_id)
        if cached := self.cache.get(query_id):
            return cached
        vector = await self.clients.record_vector(record_id)
        return self.cache.put(CachedQuery(query_id, "record", mean_direction([vector]), f"record {record_id}"))

    async def known_query(self, query_id: str) -> CachedQuery:
        if cached := self.cache.get(query_id):
            return cached
        if query_id.startswith("rec-") and query_id[4:].isdigit():
            return await self.record_query(int(query_id[4:]))
        raise QueryExpired(
            "this query is no longer held by the gateway (it keeps recent queries only); upload the photo again"
        )

    async def run(self, query: CachedQuery, params: SearchParameters) -> SearchResult:
        started = time.perf_counter()
        request = SearchRequest(**dict(params.search()), vectors=[query.vector.tolist()])
        prediction_task = (
            asyncio.ensure_future(self._predict(query, params.rank, params.filters)) if params.predict else None
        )
        found, identity = await asyncio.gather(self.clients.search(request), self.clients.identity())
        prediction, prediction_error = await prediction_task if prediction_task else (None, None)
        result = found.results[0]
        hits = [hit_view(hit) for hit in result.hits]
        self.served.remember(hits)
        agreed = consensus(hits, params.rank)
        top = prediction.predictions[0].name if prediction and prediction.predictions else None
        return SearchResult(
            **result.search.model_dump(),  # what the search did for this query: nprobe, stopped, rounds...
            query=query.kind,  # type: ignore[arg-type]
            query_id=query.query_id,
            label=query.label,
            text=query.label if query.kind == "text" else None,
            parameters=params,
            exhausted=result.exhausted,
            hits=hits,
            prediction=prediction,
            prediction_error=prediction_error,
            consensus=agreed,
            agreement=None if top is None or agreed is None else top == agreed.name,
            tree=taxonomy_tree(hits),
            identity=Identity(**identity),
            permalink=permalink(query, params, identity),
            timings=found.timings,
            took_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    async def _predict(
        self, query: CachedQuery, rank: str, filters: list[TaxonFilter]
    ) -> tuple[PredictionResult | None, str | None]:
        """A prediction, or why there is none: a prediction never fails the search it rides with.

        The query's filters restrict it as they restrict the hits, where the labels allow (`prediction_clade`)."""
        within, not_applied = prediction_clade(filters, rank)
        try:
            answer = await self.clients.classify(query.vector.tolist(), rank, self.predictions, within)
        except DomainError as exc:
            return None, exc.message
        predictions = [
            Prediction(
                name=p.name,
                rank=p.rank or rank,
                probability=p.probability,
                common_name=p.common_name,  # type: ignore[arg-type]
                taxonomy=p.taxonomy,
            )
            for p in (answer.results[0].predictions if answer.results else [])
        ]
        result = PredictionResult(rank=rank, predictions=predictions, within=within, filters_not_applied=not_applied)  # type: ignore[arg-type]
        return result, None


def prediction_clade(filters: list[TaxonFilter], rank: str) -> tuple[TaxonFilter | None, list[TaxonFilter]]:
    """(the filter to predict within, the filters that cannot restrict a prediction at `rank`).

    A filter at or above `rank` on a rank the labels group by (kingdom .. genus) restricts the prediction; of
    several, the most specific (it lies within the broader ones, names shared across kingdoms aside). A filter
    below `rank`, on species or on common_name names no group of labels to predict among, so it does not."""
    depth = RANKS.index(rank)
    usable = [f for f in filters if f.rank in CLADE_RANKS and RANKS.index(f.rank) <= depth]
    within = max(usable, key=lambda f: RANKS.index(f.rank), default=None)
    return within, [f for f in filters if f not in usable]


def permalink(query: CachedQuery, params: SearchParameters, identity: dict[str, str | None]) -> str:
    """A page URL that reproduces the search: the query, every parameter, and what answered it."""
    pairs: list[tuple[str, str]] = []
    if query.kind == "text":
        pairs.append(("text", query.label))
    elif query.kind == "record":
        pairs.append(("record", query.query_id.removeprefix("rec-")))
    else:
        pairs.append(("q", query.query_id))
    defaults = SearchParameters()
    for name in SearchParameters.model_fields:
        value = getattr(params, name)
        if name in ("filters", "predict") or value is None:
            continue
        # top_n always: the page's Results box shows it, so a reloaded link must say it, default or not.
        if name == "top_n" or value != getattr(defaults, name):
            pairs.append((name, str(value)))
    if not params.predict:
        pairs.append(("predict", "false"))
    pairs += [("filter", str(f)) for f in params.filters]
    pairs += [(key, value) for key, value in identity.items() if value]
    return "/?" + urlencode(pairs)
