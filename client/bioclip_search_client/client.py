"""`Client`: one httpx connection pool to a gateway, and a method per API call."""

from __future__ import annotations

import logging
import mimetypes
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

import httpx

from bioclip_search_client.errors import ApiError
from bioclip_search_client.results import Record, SearchResult

logger = logging.getLogger(__name__)

DEFAULT_URL = os.environ.get("BIOCLIP_SEARCH_URL", "http://127.0.0.1:8000")
USER_AGENT = "bioclip-search-client/0.1"

Photo = str | os.PathLike[str] | bytes | BinaryIO
Size = Literal["thumb", "medium", "full"]


def _upload(photo: Photo, n: int) -> tuple[str, bytes, str]:
    """A photo as a multipart file: (name, bytes, content type)."""
    if isinstance(photo, bytes):
        return f"photo-{n + 1}", photo, "application/octet-stream"
    if isinstance(photo, str | os.PathLike):
        path = Path(photo)
        return path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    name = Path(getattr(photo, "name", f"photo-{n + 1}")).name
    return name, photo.read(), "application/octet-stream"


def _filters(value: Iterable[str | Mapping[str, str]]) -> list[str]:
    """Taxon filters as the API's `rank:value` words, from words or `{"rank", "value"}` dicts."""
    return [item if isinstance(item, str) else f"{item['rank']}:{item['value']}" for item in value]


class Client:
    """The gateway at `url` (default: $BIOCLIP_SEARCH_URL, else http://127.0.0.1:8000).

    `timeout`: seconds for each call (an upload's embedding included). `rate_limit_retries`: how many
    times a `429 rate_limited` answer is waited out (its Retry-After, at most 60 s) and asked again
    before `ApiError` is raised. Use as a context manager, or call `close()`.
    Errors: `ApiError` for the API's error answers; httpx's `TransportError` when the gateway cannot be
    reached.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 120.0,
        rate_limit_retries: int = 0,
        http: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.rate_limit_retries = rate_limit_retries
        self._http = http or httpx.Client(
            base_url=self.url, timeout=httpx.Timeout(timeout, connect=10.0), headers={"User-Agent": USER_AGENT}
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.rate_limit_retries + 1):
            response = self._http.request(method, path, **kwargs)
            if response.is_success:
                return response
            error = ApiError.from_response(response)
            if error.code != "rate_limited" or attempt == self.rate_limit_retries:
                raise error
            wait = min(error.retry_after or 1.0, 60.0)
            logger.info("rate limited; asking again in %.0f s", wait)
            time.sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _search(
        self,
        photo: Photo | Sequence[Photo] | None,
        text: str | None,
        record: int | None,
        query_id: str | None,
        params: dict[str, Any],
        accept: str,
    ) -> httpx.Response:
        given = [name for name, v in (("photo", photo), ("text", text), ("record", record), ("query_id", query_id))
                 if v is not None]  # fmt: skip
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of photo, text, record or query_id (given: {', '.join(given) or 'none'})"
            )
        headers = {"Accept": accept}
        filters = _filters(params.pop("filters", []) or [])
        params = {name: value for name, value in params.items() if value is not None}
        if photo is not None:
            photos = list(photo) if isinstance(photo, list | tuple) else [photo]
            files = [("image", _upload(p, n)) for n, p in enumerate(photos)]
            data: dict[str, Any] = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
            if filters:
                data["filter"] = filters
            return self._send("POST", "/api/search", files=files, data=data, headers=headers)
        # A word without `:` goes as it is, for the API to refuse in its own words.
        pairs = [f.partition(":") for f in filters]
        body: dict[str, Any] = {**params, "filters": [{"rank": rank, "value": value} for rank, _, value in pairs]}
        if text is not None:
            body["text"] = text
        elif record is not None:
            body["record_id"] = record
        else:
            body["query_id"] = query_id
        return self._send("POST", "/api/search", json=body, headers=headers)

    def search(
        self,
        photo: Photo | Sequence[Photo] | None = None,
        *,
        text: str | None = None,
        record: int | None = None,
        query_id: str | None = None,
        **params: Any,
    ) -> SearchResult:
        """Nearest records to a photo (a path, bytes or a file; a list of them: several photos of one
        organism), a `text` (taxon or common name), a `record` id, or an earlier result's `query_id`.

        `params`: the API's search parameters, e.g. `top_n=20`, `scope="inaturalist"`,
        `filters=["order:Lepidoptera"]`, `min_similarity=0.2`, `rank="genus"`, `predict=False`
        (docs/api.md, POST /api/search). A name the API does not know is `ApiError(422, "invalid_request")`.
        """
        response = self._search(photo, text, record, query_id, params, "application/json")
        return SearchResult.from_json(response.json())

    def search_csv(
        self,
        photo: Photo | Sequence[Photo] | None = None,
        *,
        text: str | None = None,
        record: int | None = None,
        query_id: str | None = None,
        **params: Any,
    ) -> str:
        """As `search`, answered as the API's CSV export: one row per hit, each with the export's
        provenance (query, parameters, model, index, collection, date)."""
        return self._search(photo, text, record, query_id, params, "text/csv").text

    def record(self, record_id: int) -> Record:
        """One record's metadata. `ApiError(404, "unknown_record")` when there is none."""
        return Record.from_json(self._send("GET", f"/api/records/{int(record_id)}").json())

    def image(self, record_id: int, size: Size = "thumb") -> bytes:
        """A record's image, fetched from its source by the gateway: `thumb` (256 px), `medium` (768 px) or
        `full`, as WebP (or JPEG, as the gateway is set). `ApiError(404, "no_image")` when it has none."""
        return self._send("GET", f"/api/images/{int(record_id)}", params={"size": size}).content

    def vocabulary(self) -> dict[str, Any]:
        """The API's terms: ranks, scopes, image sizes, and the search parameters with their bounds."""
        return self._send("GET", "/api/vocabulary").json()
