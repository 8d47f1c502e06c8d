"""The DuckDB side of a search: which candidates may be hits, and the hits' rows with their URLs rebuilt.

Two access paths, chosen at start-up:

- **sidecar** (when the metadata file has a lookup sidecar, see sidecar.py): candidates are judged
  from per-id arrays, and DuckDB is asked only for the rows of the hits, without the columns the
  sidecar already holds (taxonomy, has_url, in_bioclip2_training);
- **duckdb**: candidates' whole rows are fetched and judged in Python.

Either way DuckDB sees one plain `id IN (...)` and nothing else: DuckDB uses the ART index on `id`
only for a single simple filter, and any other condition beside it (a scope, say) makes the same
lookup a table scan, hundreds of times slower at TreeOfLife scale.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np

from services.search.filters import RANKS, Criteria, row_matches, species_key
from services.search.sidecar import LookupSidecar, SidecarError

logger = logging.getLogger(__name__)

Row = dict[str, Any]
UrlLayout = Literal["url_prefixes", "identifier", "none"]
Lookup = Literal["sidecar", "duckdb"]

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
# Columns the sidecar answers, so the sidecar path does not fetch them from DuckDB.
SIDECAR_COLUMNS = {*RANKS, "has_url", "in_bioclip2_training"}
# Ids per `IN (...)`: DuckDB plans an index scan only up to `index_scan_max_count` (2048) rows.
IN_CHUNK = 1024


class MetadataOpenError(RuntimeError):
    """The metadata file is missing or not in the expected schema."""


@dataclass(frozen=True)
class Screened:
    """The verdict on a list of candidate ids, in their order."""

    keep: np.ndarray  # bool per id: has a row and satisfies the criteria
    species: list[Any]  # what max_per_species counts by; None = no cap applies
    rows: dict[int, Row]  # rows fetched on the way (the duckdb path), reusable for the hits


class MetadataStore:
    """A read-only DuckDB connection (each call takes its own cursor, so threads may share it) and its sidecar."""

    def __init__(
        self,
        path: Path,
        *,
        threads: int = 2,
        memory_limit: str | None = None,
        sidecar: Path | None = None,
        use_sidecar: bool = True,
    ) -> None:
        if not path.is_file():
            raise MetadataOpenError(f"no DuckDB metadata file at {path}")
        config: dict[str, Any] = {"threads": threads}
        if memory_limit:
            config["memory_limit"] = memory_limit
        try:
            self._conn = duckdb.connect(str(path), read_only=True, config=config)
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
        self.rows = int(self._conn.execute("SELECT count(*) FROM metadata").fetchall()[0][0])
        self.sidecar: LookupSidecar | None = None
        if use_sidecar:
            folder = sidecar or default_sidecar_path(path)
            try:
                self.sidecar = LookupSidecar.open(folder, metadata=path, rows=self.rows)
            except SidecarError as exc:
                logger.warning("%s; candidates will be judged from DuckDB rows (slower)", exc)
        # The sidecar path leaves out what the sidecar holds; the ranks still come back, from it.
        narrow = {c: f for c, f in self._columns.items() if c not in SIDECAR_COLUMNS}
        self._select_all = ", ".join(f'"{column}"' for column in self._columns)
        self._select_narrow = ", ".join(f'"{column}"' for column in narrow)
        self._narrow_names = list(narrow.values())
        logger.info(
            "opened %s: %d rows, URLs from %s, candidates judged by %s", path, self.rows, self.url_layout, self.lookup
        )

    @property
    def lookup(self) -> Lookup:
        return "sidecar" if self.sidecar is not None else "duckdb"

    def close(self) -> None:
        self._conn.close()

    def _query(self, select: str, names: list[str], ids: list[int]) -> list[Row]:
        rows: list[Row] = []
        cursor = self._conn.cursor()
        try:
            for start in range(0, len(ids), IN_CHUNK):
                chunk = ids[start : start + IN_CHUNK]
                # One plain `id IN (...)` filter and nothing else, so DuckDB can use the id index.
                placeholders = ", ".join("?" for _ in chunk)
                result = cursor.execute(f"SELECT {select} FROM metadata WHERE id IN ({placeholders})", chunk)
                rows += [dict(zip(names, values, strict=True)) for values in result.fetchall()]
        finally:
            cursor.close()
        return rows

    def fetch_plan(self, ids: Iterable[int]) -> str:
        """DuckDB's executed plan for a row lookup (tests and the benchmark check that it is an index scan).

        EXPLAIN ANALYZE, not EXPLAIN: DuckDB decides on an index scan when the scan starts.
        """
        wanted = sorted({int(i) for i in ids if i >= 0})[:IN_CHUNK]
        select = self._select_narrow if self.sidecar is not None else self._select_all
        literal = ", ".join(str(i) for i in wanted)
        cursor = self._conn.cursor()
        try:
            plan = cursor.execute(f"EXPLAIN ANALYZE SELECT {select} FROM metadata WHERE id IN ({literal})").fetchall()
        finally:
            cursor.close()
        return "\n".join(str(part) for row in plan for part in row)

    def fetch(self, ids: Iterable[int]) -> dict[int, Row]:
        """Whole rows (with `url` and `scientific_name`) for the given ids; ids with no row are absent."""
        wanted = sorted({int(i) for i in ids if i >= 0})
        if not wanted:
            return {}
        if self.sidecar is None:
            rows = self._query(self._select_all, list(self._columns.values()), wanted)
            return {row["id"]: self._finish(row) for row in rows}
        if self.sidecar.has_records:
            return {record_id: self._complete(row) for record_id, row in self.sidecar.records(wanted).items()}
        found: dict[int, Row] = {}
        for row in self._query(self._select_narrow, self._narrow_names, wanted):
            taxonomy = self.sidecar.taxonomy(row["id"])
            if taxonomy is None:
                logger.warning("id %d has a row but no sidecar entry; the sidecar is stale", row["id"])
                continue
            row.update(taxonomy)
            found[row["id"]] = self._finish(row)
        return found

    def get(self, record_id: int) -> Row | None:
        return self.fetch([record_id]).get(record_id)

    def screen(self, ids: np.ndarray, criteria: Criteria) -> Screened:
        """Which candidates may be hits, and their species (for max_per_species), in the ids' order."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.sidecar is not None:
            keys = self.sidecar.species_keys(ids)
            return Screened(
                keep=self.sidecar.screen(ids, criteria),
                species=[None if key < 0 else int(key) for key in keys.tolist()],
                rows={},
            )
        rows = self.fetch(ids.tolist())
        keep = np.zeros(len(ids), dtype=bool)
        species: list[Any] = []
        for position, record_id in enumerate(ids.tolist()):
            row = rows.get(record_id)
            keep[position] = row is not None and row_matches(row, criteria)
            species.append(species_key(row) if row is not None else None)
        return Screened(keep=keep, species=species, rows=rows)

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
        for name in ("uuid", "source_id", *RANKS, "source_dataset", "publisher", "img_type", "basis_of_record"):
            # ENUM and UUID columns come back as str already; other types (an integer source_id) are made str.
            if row.get(name) is not None and not isinstance(row[name], str):
                row[name] = str(row[name])
        return self._complete(row)

    def _complete(self, row: Row) -> Row:
        for name in COLUMNS.values():
            row.setdefault(name, None)  # a column the database lacks reads as unknown, on both paths
        genus, epithet = row.get("genus"), row.get("species")
        row["scientific_name"] = f"{genus} {epithet}" if genus and epithet else None
        return row


def default_sidecar_path(metadata: Path) -> Path:
    """`duckdb/metadata.duckdb` -> `duckdb/metadata.lookup/`."""
    return metadata.with_suffix(".lookup")
