"""The DuckDB side of a search: metadata rows by id, with each row's source URL rebuilt."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import duckdb

logger = logging.getLogger(__name__)

Row = dict[str, Any]
UrlLayout = Literal["url_prefixes", "identifier", "none"]

# Database column -> record field. Columns a database lacks are left out of the query.
COLUMNS: dict[str, str] = {
    "id": "id",
    "uuid": "uuid",
    "kingdom": "kingdom",
    "phylum": "phylum",
    "class": "class",
    "order": "order",
    "family": "family",
    "genus": "genus",
    "species": "species",
    "common_name": "common_name",
    "source_dataset": "source_dataset",
    "source_id": "source_id",
    "publisher": "publisher",
    "img_type": "img_type",
    "basisOfRecord": "basis_of_record",
    "has_url": "has_url",
    "in_bioclip2_training": "in_bioclip2_training",
}


class MetadataOpenError(RuntimeError):
    """The metadata file is missing or not in the expected schema."""


def in_scope(row: Row, scope: str) -> bool:
    """Whether a metadata row may be a hit under a scope (see SCOPES in the search schema)."""
    if scope == "all":
        return True
    if scope == "url_only":
        return bool(row.get("has_url"))
    if scope == "inaturalist":
        publisher = (row.get("publisher") or "").lower()
        return bool(row.get("has_url")) and row.get("source_dataset") == "gbif" and "inaturalist" in publisher
    if scope == "bioclip2_training":
        return bool(row.get("in_bioclip2_training"))
    raise ValueError(f"unknown scope {scope}")


class MetadataStore:
    """A read-only DuckDB connection; each call takes its own cursor, so threads may share it."""

    def __init__(self, path: Path, *, threads: int = 2) -> None:
        if not path.is_file():
            raise MetadataOpenError(f"no DuckDB metadata file at {path}")
        try:
            self._conn = duckdb.connect(str(path), read_only=True, config={"threads": threads})
        except duckdb.Error as exc:
            raise MetadataOpenError(f"could not open {path}: {exc}") from exc
        self.path = path
        tables = {name for (name,) in self._conn.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "metadata" not in tables:
            raise MetadataOpenError(f"{path} has no `metadata` table")
        present = {
            name
            for (name,) in self._conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'metadata'"
            ).fetchall()
        }
        if "id" not in present:
            raise MetadataOpenError(f"{path}: the metadata table has no `id` column")
        self._columns = {column: field for column, field in COLUMNS.items() if column in present}
        self._prefixes: dict[int, str] = {}
        if {"url_prefix_id", "identifier_suffix"} <= present and "url_prefixes" in tables:
            self.url_layout: UrlLayout = "url_prefixes"
            self._prefixes = dict(self._conn.execute("SELECT prefix_id, prefix FROM url_prefixes").fetchall())
            self._columns |= {"url_prefix_id": "_prefix_id", "identifier_suffix": "_suffix"}
        elif "identifier" in present:
            self.url_layout = "identifier"
            self._columns["identifier"] = "_identifier"
        else:
            self.url_layout = "none"
        self._select = ", ".join(f'"{column}"' for column in self._columns)
        self.rows = int(self._conn.execute("SELECT count(*) FROM metadata").fetchone()[0])  # type: ignore[index]
        logger.info("opened %s: %d rows, URLs from %s", path, self.rows, self.url_layout)

    def close(self) -> None:
        self._conn.close()

    def fetch(self, ids: Iterable[int]) -> dict[int, Row]:
        """Rows for the given ids; ids with no row are absent from the answer."""
        wanted = sorted({int(i) for i in ids if i >= 0})
        if not wanted:
            return {}
        # One plain `id IN (...)` filter and nothing else, so DuckDB can use the id index.
        placeholders = ", ".join("?" for _ in wanted)
        cursor = self._conn.cursor()
        try:
            result = cursor.execute(f"SELECT {self._select} FROM metadata WHERE id IN ({placeholders})", wanted)
            names = list(self._columns.values())
            rows = [dict(zip(names, values, strict=True)) for values in result.fetchall()]
        finally:
            cursor.close()
        return {row["id"]: self._finish(row) for row in rows}

    def get(self, record_id: int) -> Row | None:
        return self.fetch([record_id]).get(record_id)

    def _finish(self, row: Row) -> Row:
        if self.url_layout == "url_prefixes":
            prefix = self._prefixes.get(row.pop("_prefix_id"))
            suffix = row.pop("_suffix")
            row["url"] = prefix + suffix if prefix is not None and suffix else None
        elif self.url_layout == "identifier":
            row["url"] = row.pop("_identifier") or None
        else:
            row["url"] = None
        if "has_url" not in row:
            row["has_url"] = row["url"] is not None
        if row.get("uuid") is not None:
            row["uuid"] = str(row["uuid"])
        if row.get("source_id") is not None:
            row["source_id"] = str(row["source_id"])
        genus, epithet = row.get("genus"), row.get("species")
        row["scientific_name"] = f"{genus} {epithet}" if genus and epithet else None
        return row
