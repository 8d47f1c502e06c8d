"""Hits as CSV or JSON files, with their source links, for download."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

COLUMNS = (
    "rank", "similarity", "record_id", "kingdom", "phylum", "class", "order", "family", "genus", "species",
    "scientific_name", "common_name", "source_dataset", "source_id", "publisher", "img_type", "basis_of_record",
    "image_url", "source_record_url",
)  # fmt: skip


def _row(hit: dict[str, Any]) -> dict[str, Any]:
    flat = {**hit, **hit["taxonomy"]}
    return {column: flat.get(column) for column in COLUMNS}


def hits_csv(hits: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for hit in hits:
        # A leading =, +, - or @ makes spreadsheets run the cell as a formula: quote it away.
        writer.writerow({k: f"'{v}" if isinstance(v, str) and v[:1] in "=+-@" else v for k, v in _row(hit).items()})
    return out.getvalue()


def hits_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, ensure_ascii=False)
