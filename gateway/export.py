"""Hits as CSV or JSON files, with their source links and what they can be cited by, for download."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode

from gateway.schemas import Export, HitView, Provenance, SearchParameters, SearchResult
from services.common.schemas.search import CollectionPin
from services.common.vocabulary import RANKS

logger = logging.getLogger(__name__)

Format = Literal["json", "csv"]

HIT_COLUMNS = (
    "rank", "similarity", "record_id", "uuid", *RANKS, "scientific_name", "common_name", "source_dataset",
    "source_id", "publisher", "img_type", "basis_of_record", "in_bioclip2_training", "license", "rights_holder",
    "rights", "image_url", "source_record_url",
)  # fmt: skip
# The same on every row, so that any row cut out of the file still says where it came from.
PROVENANCE_COLUMNS = (
    "query", "query_id", "label", "parameters", "model", "index", "collection", "exported_at",
)  # fmt: skip
COLUMNS = HIT_COLUMNS + PROVENANCE_COLUMNS


def provenance(result: SearchResult, found: dict[str, Any], now: datetime | None = None) -> Provenance:
    """What cites `result`: its query, the model and index (`found`, the gateway's `provenance()`), the
    collection's pin, and the time (UTC, to the second)."""
    at = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    pin = found.get("collection")
    return Provenance(
        exported_at=at.isoformat().replace("+00:00", "Z"),
        query=result.query,
        query_id=result.query_id,
        label=result.label,
        parameters=result.parameters,
        model=found.get("model"),
        index=found.get("index"),
        collection=CollectionPin.model_validate(pin) if pin else None,
    )


def parameters_text(params: SearchParameters) -> str:
    """The parameters as a query string (`top_n=24&scope=all&filter=genus:Danaus`), explicit ones only."""
    dumped = params.model_dump(mode="json", exclude={"filters"}, exclude_none=True)
    pairs = [(name, str(value).lower() if isinstance(value, bool) else str(value)) for name, value in dumped.items()]
    return urlencode(pairs + [("filter", str(f)) for f in params.filters])


def _row(hit: HitView) -> dict[str, Any]:
    dumped = hit.model_dump(mode="json", by_alias=True)
    flat = {**dumped, **dumped["taxonomy"]}
    return {column: flat.get(column) for column in HIT_COLUMNS}


def _cited(cited: Provenance) -> dict[str, Any]:
    pin = cited.collection
    return {
        "query": cited.query,
        "query_id": cited.query_id,
        "label": cited.label,
        "parameters": parameters_text(cited.parameters),
        "model": cited.model,
        "index": cited.index,
        "collection": f"{pin.repo}@{pin.commit}" if pin else None,
        "exported_at": cited.exported_at,
    }


def _safe(value: Any) -> Any:
    # A leading =, +, - or @ makes spreadsheets run the cell as a formula: quote it away.
    return f"'{value}" if isinstance(value, str) and value[:1] in "=+-@" else value


def hits_csv(hits: Sequence[HitView], cited: Provenance) -> str:
    """One row per hit (HIT_COLUMNS), each ending with the export's provenance (PROVENANCE_COLUMNS)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    tail = _cited(cited)
    for hit in hits:
        writer.writerow({k: _safe(v) for k, v in {**_row(hit), **tail}.items()})
    return out.getvalue()


def hits_json(result: SearchResult, cited: Provenance) -> str:
    """The search result with a `provenance` object."""
    return Export(**dict(result), provenance=cited).model_dump_json(indent=2, by_alias=True)


def negotiated(accept: str | None) -> Format:
    """csv when the Accept header prefers text/csv to application/json (RFC 9110 section 12.5.1 quality
    values: only a text/csv named outright counts; application/json may also come as `*/*` or
    `application/*`), else json. No Accept header, or `*/*` alone: json."""
    quality: dict[str, float] = {}
    for item in (accept or "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media:
            quality[media.lower()] = max(q, quality.get(media.lower(), 0.0))
    json_q = quality.get("application/json", max(quality.get("*/*", 0.0), quality.get("application/*", 0.0)))
    return "csv" if quality.get("text/csv", 0.0) > json_q else "json"
