"""The DuckDB metadata file, read-only: rows by id with their URLs rebuilt (lookup.py decides who asks).

DuckDB sees one plain `id IN (...)` and nothing else: DuckDB uses the ART index on `id`
only for a single simple filter, and any other condition beside it (a scope, say) makes the same
lookup a table scan, hundreds of times slower at TreeOfLife scale.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import duckdb

from services.common.vocabulary import FILTER_RANKS, scientific_name
from services.search.errors import MetadataUnavailable

logger = logging.getLogger(__name__)

Row = dict[str, Any]
UrlLayout = Literal["url_prefixes", "identifier", "none"]

# Database column -> record field. Columns a database lacks are left out of the query.
COLUMNS: dict[str, str] = {
    "id": "id",
    "uuid": "uuid",
    **{rank: rank for rank in FILTER_RANKS},
    "source_dataset": "source_dataset",
    "source_id": "source_id",
    "publisher": "publisher",
    "img_type": "img_type",
    "basisOfRecord": "basis_of_record",
    "has_url": "has_url",
    "in_bioclip2_training": "in_bioclip2_training",
}
# The image's rights, when the metadata holds them (the published TreeOfLife file does not). Record field ->
# the column names taken for it, compared without case, the first present wins: Dublin Core's terms as Darwin
# Core, GBIF's multimedia extension and Audubon Core use them (dcterms:license, dcterms:rightsHolder,
# dcterms:rights; https://dwc.tdwg.org/terms/), with or without their namespace, and in snake_case.
RIGHTS_COLUMNS: dict[str, tuple[str, ...]] = {
    "license": ("license", "licence", "dcterms:license", "dc:license"),
    "rights_holder": ("rights_holder", "rightsHolder", "dcterms:rightsHolder", "dc:rightsHolder"),
    "rights": ("rights", "dcterms:rights", "dc:rights"),
}
RIGHTS_FIELDS = tuple(RIGHTS_COLUMNS)


def rights_columns(present: Iterable[str]) -> dict[str, str]:
    """Column -> record field for the rights columns among `present` (RIGHTS_COLUMNS' names, any case)."""
    by_lower = {name.lower(): name for name in present}
    found: dict[str, str] = {}
    for field, names in RIGHTS_COLUMNS.items():
        column = next((by_lower[name.lower()] for name in names if name.lower() in by_lower), None)
        if column is not None and column not in found:
            found[column] = field
    return found


# Columns the sidecar answers, so the sidecar path does not fetch them from DuckDB.
SIDECAR_COLUMNS = {*FILTER_RANKS, "has_url", "in_bioclip2_training"}
# Ids per `IN (...)`: DuckDB plans an index scan only up to `index_scan_max_count` (2048) rows.
IN_CHUNK = 1024


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class MetadataOpenError(RuntimeError):
    """The metadata file is missing or not in the expected schema."""


class MetadataStore:
    """A read-only DuckDB connection (each call takes its own cursor, so threads may share it)."""

    def __init__(self, path: Path, *, threads: int = 2, memory_limit: str | None = None) -> None:
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
        self._lock = threading.Lock()
        self._cursors: set[duckdb.DuckDBPyConnection] = set()
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
        # The rights columns this file has (none in the published one): the sidecar does not hold them, so the
        # sidecar lookup asks DuckDB for them, for the hits only (`rights`).
        self.rights_columns = rights_columns(present)
        self._columns |= self.rights_columns
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
        # The sidecar lookup leaves out what the sidecar holds; the ranks still come back, from it.
        narrow = {c: f for c, f in self._columns.items() if c not in SIDECAR_COLUMNS}
        self._select_all = ", ".join(f'"{column}"' for column in self._columns)
        self._select_narrow = ", ".join(f'"{column}"' for column in narrow)
        self._narrow_names = list(narrow.values())
        logger.info("opened %s: %d rows, URLs from %s", path, self.rows, self.url_layout)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of its own, interruptible by `interrupt`; DuckDB's failures leave as MetadataUnavailable."""
        cursor = self._conn.cursor()
        with self._lock:
            self._cursors.add(cursor)
        try:
            yield cursor
        except duckdb.OutOfMemoryException as exc:
            # At full size, lookups by id pin the id index's nodes (DuckDB keeps an ART index in memory once
            # read): a small memory limit runs out (docs/benchmarks/scale.md). Other lookups ending frees some.
            logger.warning("DuckDB is out of its memory limit: %s", _first_line(exc))
            raise MetadataUnavailable(
                "the metadata store (DuckDB) is out of its memory limit; try again shortly", retry_after=1
            ) from exc
        except duckdb.InterruptException as exc:
            raise MetadataUnavailable("the metadata store (DuckDB) is shutting down") from exc
        except duckdb.Error as exc:
            logger.warning("DuckDB failed: %s", _first_line(exc))
            raise MetadataUnavailable(f"the metadata store (DuckDB) failed: {_first_line(exc)}") from exc
        finally:
            with self._lock:
                self._cursors.discard(cursor)
            cursor.close()

    def interrupt(self) -> None:
        """Stop every query running now (at shutdown: a GROUP BY over 234M rows takes tens of seconds)."""
        with self._lock:
            running = list(self._cursors)
        for cursor in running:
            cursor.interrupt()

    def query(self, ids: list[int], *, narrow: bool = False) -> list[Row]:
        """Raw rows (URL parts not yet joined) for sorted ids; `narrow` leaves out what the sidecar holds."""
        select = self._select_narrow if narrow else self._select_all
        names = self._narrow_names if narrow else list(self._columns.values())
        rows: list[Row] = []
        with self._cursor() as cursor:
            for start in range(0, len(ids), IN_CHUNK):
                chunk = ids[start : start + IN_CHUNK]
                # One plain `id IN (...)` filter and nothing else, so DuckDB can use the id index.
                placeholders = ", ".join("?" for _ in chunk)
                result = cursor.execute(f"SELECT {select} FROM metadata WHERE id IN ({placeholders})", chunk)
                rows += [dict(zip(names, values, strict=True)) for values in result.fetchall()]
        return rows

    def rights(self, ids: list[int]) -> dict[int, Row]:
        """The rights fields (RIGHTS_FIELDS) of the given ids, for the rows the sidecar gives without them;
        empty when the file has no rights column. One `id IN (...)` per IN_CHUNK ids, as `query`."""
        if not self.rights_columns or not ids:
            return {}
        select = ", ".join(f'"{column}"::VARCHAR' for column in self.rights_columns)
        names = list(self.rights_columns.values())
        found: dict[int, Row] = {}
        with self._cursor() as cursor:
            for start in range(0, len(ids), IN_CHUNK):
                chunk = sorted(ids[start : start + IN_CHUNK])
                placeholders = ", ".join("?" for _ in chunk)
                result = cursor.execute(f"SELECT id, {select} FROM metadata WHERE id IN ({placeholders})", chunk)
                for record_id, *values in result.fetchall():
                    found[int(record_id)] = dict(zip(names, values, strict=True))
        return found

    def taxon_counts(self) -> dict[str, list[tuple[str | None, int]]]:
        """Each filter rank's distinct names with their record counts, grouped by DuckDB; a species is named
        by the vocabulary's rule (genus and epithet), so a row without a genus names no species. Ranks
        whose column is absent are left out. For the taxon-name index (services/search/taxa.py)."""
        counts: dict[str, list[tuple[str | None, int]]] = {}
        with self._cursor() as cursor:
            for rank in FILTER_RANKS:
                if rank not in self._columns:
                    continue
                if rank == "species":
                    if "genus" not in self._columns:
                        continue
                    found = cursor.execute('SELECT "genus", "species", count(*) FROM metadata GROUP BY ALL').fetchall()
                    counts[rank] = [(scientific_name(genus, epithet), int(n)) for genus, epithet, n in found]
                else:
                    found = cursor.execute(f'SELECT "{rank}", count(*) FROM metadata GROUP BY ALL').fetchall()
                    counts[rank] = [(value, int(n)) for value, n in found]
        return counts

    def fetch_plan(self, ids: Iterable[int], *, narrow: bool = False) -> str:
        """DuckDB's executed plan for a row lookup (tests and the benchmark check that it is an index scan).

        EXPLAIN ANALYZE, not EXPLAIN: DuckDB decides on an index scan when the scan starts.
        """
        wanted = sorted({int(i) for i in ids if i >= 0})[:IN_CHUNK]
        select = self._select_narrow if narrow else self._select_all
        literal = ", ".join(str(i) for i in wanted)
        with self._cursor() as cursor:
            plan = cursor.execute(f"EXPLAIN ANALYZE SELECT {select} FROM metadata WHERE id IN ({literal})").fetchall()
        return "\n".join(str(part) for row in plan for part in row)

    def fetch(self, ids: Iterable[int]) -> dict[int, Row]:
        """Whole rows (with `url`) for the given ids; ids with no row are absent."""
        wanted = sorted({int(i) for i in ids if i >= 0})
        if not wanted:
            return {}
        return {row["id"]: self.finish(row) for row in self.query(wanted)}

    def finish(self, row: Row) -> Row:
        """A raw row made a record row: URL rebuilt, non-string values made strings, missing columns null."""
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
        texts = ("uuid", "source_id", *FILTER_RANKS, "source_dataset", "publisher", "img_type", "basis_of_record")
        for name in (*texts, *RIGHTS_FIELDS):
            # ENUM and UUID columns come back as str already; other types (an integer source_id) are made str.
            if row.get(name) is not None and not isinstance(row[name], str):
                row[name] = str(row[name])
        return complete_row(row)


def complete_row(row: Row) -> Row:
    """Every record field present (a column the database lacks reads as unknown), and the scientific name."""
    for name in (*COLUMNS.values(), *RIGHTS_FIELDS):
        row.setdefault(name, None)
    row["scientific_name"] = scientific_name(row.get("genus"), row.get("species"))
    return row
