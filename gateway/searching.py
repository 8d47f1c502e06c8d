"""A search as the gateway runs it: resolve the query to a vector (embedding it at most once),
search, predict, and summarise the hits."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlencode

from gateway.clients import ServiceClients
from gateway.errors import QueryExpired
from gateway.query_cache import (
    CachedQuery,
    QueryCache,
    image_query_id,
    mean_direction,
    record_query_id,
    text_query_id,
)
from gateway.schemas import HitView, Identity, SearchParameters, SearchResult
from gateway.summaries import consensus, taxonomy_tree
from gateway.views import hit_view
from services.common.errors import DomainError, InvalidInput
from services.common.schemas.search import SearchRequest

logger = logging.getLogger(__name__)

Upload = tuple[str, bytes, str]  # file name, bytes, content type


class Searcher:
    def __init__(self, clients: ServiceClients, cache: QueryCache, *, max_images: int, predictions: int) -> None:
        self.clients = clients
        self.cache = cache
        self.max_images = max_images
        self.predictions = predictions

    async def image_query(self, uploads: list[Upload]) -> CachedQuery:
        if not uploads:
            raise InvalidInput("attach the photo as the multipart field `image`", code="missing_image")
        if len(uploads) > self.max_images:
            raise InvalidInput(
                f"{len(uploads)} photos; one query takes at most {self.max_images}", code="too_many_images"
            )
        for name, data, _ in uploads:
            if not data:
                raise InvalidInput(f"{name}: the uploaded file is empty", code="empty_file")
        query_id = image_query_id([data for _, data, _ in uploads])
        if cached := self.cache.get(query_id):
            return cached
        embedded = await self.clients.embed_images(uploads)
        label = ", ".join(name for name, _, _ in uploads)
        return self.cache.put(CachedQuery(query_id, "image", mean_direction(embedded.vectors), label))

    async def text_query(self, text: str) -> CachedQuery:
        text = text.strip()
        if not text:
            raise InvalidInput("the text is blank", code="empty_text")
        query_id = text_query_id(text)
        if cached := self.cache.get(query_id):
            return cached
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
        request = SearchRequest.model_validate(
            {
                "vectors": [query.vector.tolist()],
                "top_n": params.top_n,
                "nprobe": params.nprobe,
                "scope": params.scope,
                "filters": [f.model_dump() for f in params.filters],
                "min_similarity": params.min_similarity,
                "max_per_source": params.max_per_source,
                "max_per_species": params.max_per_species,
            }
        )
        prediction_task = asyncio.ensure_future(self._predict(query, params.rank)) if params.predict else None
        found, identity = await asyncio.gather(self.clients.search(request), self.clients.identity())
        prediction, prediction_error = await prediction_task if prediction_task else (None, None)
        result = found.results[0]
        hits = [hit_view(hit) for hit in result.hits]
        plain = [_plain(hit) for hit in hits]
        agreed = consensus(plain, params.rank)
        top = prediction["predictions"][0]["name"] if prediction and prediction["predictions"] else None
        # Everything the search service said about how it searched, without the hits themselves.
        details = {**found.model_dump(exclude={"results"}), **result.model_dump(exclude={"hits"})}
        return SearchResult.model_validate(
            {
                "query": query.kind,
                "query_id": query.query_id,
                "label": query.label,
                "text": query.label if query.kind == "text" else None,
                "parameters": params,
                "nprobe": found.nprobe,
                "exhausted": result.exhausted,
                "hits": hits,
                "prediction": prediction,
                "prediction_error": prediction_error,
                "consensus": agreed,
                "agreement": None if top is None or agreed is None else top == agreed["name"],
                "tree": taxonomy_tree(plain),
                "identity": Identity(**identity),
                "permalink": permalink(query, params, identity),
                "search": details,
                "took_ms": round((time.perf_counter() - started) * 1000, 1),
            }
        )

    async def _predict(self, query: CachedQuery, rank: str) -> tuple[dict[str, Any] | None, str | None]:
        """A prediction, or why there is none: a prediction never fails the search it rides with."""
        try:
            answer = await self.clients.classify(query.vector.tolist(), rank, self.predictions)
        except DomainError as exc:
            return None, exc.message
        predictions = [
            {
                "name": p.name,
                "rank": p.rank or rank,
                "probability": p.probability,
                "common_name": p.common_name,
                "taxonomy": p.taxonomy.model_dump(by_alias=True) if p.taxonomy else None,
            }
            for p in (answer.results[0].predictions if answer.results else [])
        ]
        return {"rank": rank, "predictions": predictions}, None


def _plain(hit: HitView) -> dict[str, Any]:
    return {"similarity": hit.similarity, "taxonomy": hit.taxonomy.model_dump(by_alias=True)}


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
    for name in ("top_n", "nprobe", "scope", "min_similarity", "max_per_source", "max_per_species", "rank"):
        value = getattr(params, name)
        if value is not None and value != getattr(defaults, name):
            pairs.append((name, str(value)))
    if not params.predict:
        pairs.append(("predict", "false"))
    pairs += [("filter", str(f)) for f in params.filters]
    pairs += [(key, value) for key, value in identity.items() if value]
    return "/?" + urlencode(pairs)
