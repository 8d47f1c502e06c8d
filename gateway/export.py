"""Hits as CSV or JSON files, with their source links, for download."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from typing import Any

from gateway.schemas import HitView, SearchResult
from services.common.vocabulary import RANKS

logger = logging.getLogger(__name__)

COLUMNS = (
    "rank", "similarity", "record_id", *RANKS, "scientific_name", "common_name", "source_dataset", "source_id",
    "publisher", "img_type", "basis_of_record", "image_url", "source_record_url",
)  # fmt: skip


def _row(hit: HitView) -> dict[str, Any]:
    dumped = hit.model_dump(mode="json", by_alias=True)
    flat = {**dumped, **dumped["taxonomy"]}
    return {column: flat.get(column) for column in COLUMNS}


def hits_csv(hits: Sequence[HitView]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for hit in hits:
        # A leading =, +, - or @ makes spreadsheets run the cell as a formula: quote it away.
        writer.writerow({k: f"'{v}" if isinstance(v, str) and v[:1] in "=+-@" else v for k, v in _row(hit).items()})
    return out.getvalue()


def hits_json(result: SearchResult) -> str:
    return result.model_dump_json(indent=2, by_alias=True)
