"""The lookup sidecar's writer: per-id arrays that let the search judge candidates without touching DuckDB.

A scoped or filtered search examines hundreds or thousands of candidate ids per query. Asking
DuckDB for their rows costs a block load per column per scattered row (and any filter beside
`id IN (...)` turns the lookup into a table scan), and how much it costs depends on how the table
is sorted. The sidecar sits beside the metadata file and is addressed by id alone:

    flags.npy    uint8 per id: present, one bit per scope (the vocabulary's table, its SQL evaluated
                 here), whether in_bioclip2_training is known, whether the uuid is known
    taxon.npy    uint32 per id: a code into taxa.parquet (NO_TAXON where the id has no row)
    taxa.parquet the distinct (kingdom .. species, common_name) tuples, row i = code i
    manifest.json format, row count, id range, URL layout, the metadata file it was made from

Five bytes per id (about 1.2 GB for the 234M TreeOfLife rows), memory-mapped, so a candidate costs
a page-cache read whatever the table's order. With `records` (the default), the rest of each row is
there too, so the hits' rows need no DuckDB query at all (each costs ~1 ms of fixed overhead and a
block load per column per row):

    uuid.npy     16 bytes per id
    source.npy   uint32 per id: a code into sources.parquet (source_dataset, publisher, img_type,
                 basisOfRecord, url_prefix_id tuples)
    strings.bin  source_id and the URL suffix (or legacy identifier) of BLOCK ids at a time,
    blocks.npy   zlib-compressed, each block led by its slots' offsets; blocks.npy: where blocks start
    prefixes.parquet the url_prefixes table

The search service reads it (services/search/lookup.py). It is written by the builder, or made from
any metadata file (the pre-built one included) with:

    python -m collection sidecar --metadata data/duckdb/metadata.duckdb --out DIR
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from services.common.vocabulary import FILTER_RANKS, SCOPE_TABLE
from services.search.lookup import (
    BLOCK,
    FORMAT,
    NO_TAXON,
    SOURCE_FIELDS,
    TRAINING_KNOWN,
    UUID_KNOWN,
    SidecarError,
    sidecar_source,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Columns:
    ranks: list[str]
    scope_flags: str  # the sum of every scope's bit times its SQL
    training_known: str
    sources: list[str]  # SOURCE_FIELDS, then the URL prefix id
    uuid: str
    source_id: str
    tail: str  # the URL suffix, or the legacy identifier
    url_layout: str


def _columns(con: duckdb.DuckDBPyConnection) -> _Columns:
    present = {
        name
        for (name,) in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'metadata'"
        ).fetchall()
    }
    if "id" not in present:
        raise SidecarError("the metadata table has no `id` column")
    ranks = [f'"{rank}"::VARCHAR' if rank in present else "NULL::VARCHAR" for rank in FILTER_RANKS]
    if "has_url" in present:
        has_url = "coalesce(has_url, false)"
    elif "identifier_suffix" in present:
        has_url = "identifier_suffix IS NOT NULL"
    elif "identifier" in present:
        has_url = "coalesce(identifier, '') <> ''"
    else:
        has_url = "false"
    source = '"source_dataset"::VARCHAR' if "source_dataset" in present else "NULL"
    publisher = '"publisher"::VARCHAR' if "publisher" in present else "NULL"
    training = "in_bioclip2_training" if "in_bioclip2_training" in present else "NULL::BOOLEAN"
    # The columns a scope's SQL names, as this database can give them (older files lack some).
    scope_columns = {
        "has_url": has_url,
        "source_dataset": source,
        "publisher": publisher,
        "in_bioclip2_training": training,
    }
    scope_flags = " + ".join(f"{rule.bit} * ({rule.sql(scope_columns)})::UTINYINT" for rule in SCOPE_TABLE)
    known = "in_bioclip2_training IS NOT NULL" if "in_bioclip2_training" in present else "false"

    def text(column: str) -> str:
        return f'"{column}"::VARCHAR' if column in present else "NULL::VARCHAR"

    tables = {name for (name,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if {"url_prefix_id", "identifier_suffix"} <= present and "url_prefixes" in tables:
        layout, prefix, tail = "url_prefixes", "url_prefix_id::INTEGER", "identifier_suffix::VARCHAR"
    elif "identifier" in present:
        layout, prefix, tail = "identifier", "NULL::INTEGER", "nullif(identifier::VARCHAR, '')"
    else:
        layout, prefix, tail = "none", "NULL::INTEGER", "NULL::VARCHAR"
    sources = [text("source_dataset"), text("publisher"), text("img_type"), text("basisOfRecord"), prefix]
    uuid_expr = "uuid::VARCHAR" if "uuid" in present else "NULL::VARCHAR"
    return _Columns(ranks, scope_flags, known, sources, uuid_expr, text("source_id"), tail, layout)


def _string_values(array: pa.Array) -> tuple[np.ndarray, pa.Buffer]:
    """A string array's offsets and its values buffer (the strings back to back, in order)."""
    array = array.cast(pa.large_string())
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    return offsets, array.buffers()[2] or pa.py_buffer(b"")


# Ids per pass of the writer. Each pass sorts only its band's rows, and the arrays are written band
# by band, so the writer's memory is bounded by the band, not by the table (234M rows for TreeOfLife).
BAND_IDS = 1 << 24
MEMORY_LIMIT = "2GB"


def _uuid_bytes(array: pa.Array) -> np.ndarray:
    """(n, 16) uint8 from a binary array of 16-byte values."""
    array = array.cast(pa.large_binary())
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    if array.null_count or int(offsets[-1] - offsets[0]) != 16 * len(array):
        raise SidecarError("a uuid is not 16 bytes (a malformed uuid text?)")
    values = np.frombuffer(array.buffers()[2] or b"", dtype=np.uint8)
    return values[int(offsets[0]) : int(offsets[-1])].reshape(-1, 16)


class _NpyWriter:
    """A .npy file of `length` rows written front to back in slices, never mapped or held whole."""

    def __init__(self, path: Path, dtype: Any, length: int, fill: int = 0) -> None:
        self.dtype = np.dtype(dtype)
        self.fill = fill
        self.length = length
        self.handle = path.open("wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (length,)}
        if self.dtype.shape:
            header = {
                "descr": np.lib.format.dtype_to_descr(self.dtype.base),
                "fortran_order": False,
                "shape": (length, *self.dtype.shape),
            }
        np.lib.format.write_array_header_1_0(self.handle, header)
        self.written = 0

    def band(self, size: int) -> np.ndarray:
        return (
            np.full(size, self.fill, dtype=self.dtype.base)
            if not self.dtype.shape
            else np.zeros((size, *self.dtype.shape), dtype=self.dtype.base)
        )

    def write(self, values: np.ndarray) -> None:
        self.handle.write(np.ascontiguousarray(values).tobytes())
        self.written += len(values)

    def close(self) -> None:
        self.handle.close()
        if self.written != self.length:
            raise SidecarError(f"{self.handle.name}: wrote {self.written} of {self.length} rows")


class _Blocks:
    """strings.bin and its block offsets: the strings of BLOCK ids at a time, zlib-compressed, in id order."""

    def __init__(self, path: Path, id_end: int) -> None:
        self.handle = path.open("wb")
        self.offsets = np.zeros((id_end + BLOCK - 1) // BLOCK + 1, dtype=np.uint64)
        self.block = 0
        self.written = 0
        self.carry_ids = np.zeros(0, dtype=np.int64)
        self.carry_texts: pa.Array = pa.array([], pa.string())

    def _write(self, ids: np.ndarray, texts: pa.Array, upto: int) -> None:
        offsets, values = _string_values(texts)
        bounds = np.searchsorted(ids, np.arange(self.block, upto + 1) * BLOCK)
        for number, (low, high) in enumerate(itertools.pairwise(bounds), start=self.block):
            # Slot offsets first, so a reader slices one slot instead of splitting the block.
            lengths = np.zeros(BLOCK, dtype=np.int64)
            lengths[ids[low:high] - number * BLOCK] = offsets[low + 1 : high + 1] - offsets[low:high]
            header = np.zeros(BLOCK + 1, dtype=np.uint32)
            header[1:] = np.cumsum(lengths)
            payload = values[int(offsets[low]) : int(offsets[high])].to_pybytes()
            data = zlib.compress(header.tobytes() + payload, 6)
            self.handle.write(data)
            self.written += len(data)
            self.offsets[number + 1] = self.written
        self.block = upto

    def add(self, ids: np.ndarray, texts: pa.Array) -> None:
        """Rows in ascending id order (across calls too); a block is written once no later row can fall in it."""
        all_ids = np.concatenate([self.carry_ids, ids])
        texts = pa.concat_arrays([self.carry_texts, texts.cast(pa.string())])
        if not len(all_ids):
            return
        last = int(all_ids[-1]) // BLOCK  # may still get rows from the next batch
        cut = int(np.searchsorted(all_ids, last * BLOCK))
        self._write(all_ids[:cut], texts[:cut], last)
        self.carry_ids, self.carry_texts = all_ids[cut:], texts[cut:]

    def close(self, folder: Path) -> None:
        self._write(self.carry_ids, self.carry_texts, len(self.offsets) - 1)
        self.handle.close()
        np.save(folder / "blocks.npy", self.offsets)


def _sources_table(con: duckdb.DuckDBPyConnection, cols: _Columns, staging: Path) -> int:
    """The distinct source tuples, coded in sort order, as the temp table `sources` and sources.parquet."""
    names = ", ".join(f"s{i}" for i in range(len(cols.sources)))
    con.execute(
        f"""CREATE TEMP TABLE sources AS
            SELECT (row_number() OVER (ORDER BY {names}) - 1)::UINTEGER AS code, hash({names}) AS key, *
            FROM (SELECT DISTINCT {", ".join(f"{e} AS s{i}" for i, e in enumerate(cols.sources))} FROM metadata)"""
    )
    count, keys = con.execute("SELECT count(*), count(DISTINCT key) FROM sources").fetchall()[0]
    if count != keys:
        raise SidecarError("two source tuples share a hash; cannot make the sidecar")
    table = con.sql(f"SELECT {names} FROM sources ORDER BY code").to_arrow_table()
    table = table.rename_columns([*SOURCE_FIELDS, "url_prefix_id"])
    pq.write_table(table, staging / "sources.parquet")
    return int(count)


def write_sidecar(
    metadata: Path,
    out: Path,
    *,
    threads: int = 2,
    batch_rows: int = 1_000_000,
    records: bool = True,
    band_ids: int = BAND_IDS,
    memory_limit: str = MEMORY_LIMIT,
) -> dict[str, Any]:
    """Make the sidecar of a metadata file; written aside, then moved in place. Returns the manifest.

    One scan of the table splits its rows by band of `band_ids` ids into temporary Parquet files;
    each band is then sorted by id alone and its slice of every array written, front to back. So
    memory is bounded by the band and DuckDB's `memory_limit` (it spills to a temp folder in the
    staging folder), not by the table: sorting all 234M TreeOfLife rows by id, or mapping ~6 GB of
    arrays written in random order, would not fit a 16 GB workstation (docs/benchmarks/scale.md).

    Raises SidecarError (malformed metadata), duckdb.Error and OSError.
    """
    if band_ids < 1:
        raise SidecarError(f"band_ids must be at least 1, not {band_ids}")
    started = time.perf_counter()
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    config = {"threads": threads, "memory_limit": memory_limit, "temp_directory": str(staging / "duckdb.tmp")}
    con = duckdb.connect(str(metadata), read_only=True, config=config)
    con.execute("SET enable_progress_bar = false")  # tqdm reports progress; DuckDB's bar would garble it
    writers: list[_NpyWriter] = []
    try:
        cols = _columns(con)
        rows, low, high = con.execute("SELECT count(*), min(id), max(id) FROM metadata").fetchall()[0]
        if rows and low < 0:
            raise SidecarError("the metadata has negative ids")
        id_end = int(high) + 1 if rows else 0
        ranks = ", ".join(f"{expr} AS r{i}" for i, expr in enumerate(cols.ranks))
        key = f"hash({', '.join(cols.ranks)})"
        # Distinct taxon tuples, keyed by a hash of all eight ranks (NULLs included) for the join below.
        names = ", ".join(f"r{i}" for i in range(len(FILTER_RANKS)))
        con.execute(
            f"""CREATE TEMP TABLE taxa AS
                SELECT (row_number() OVER (ORDER BY {names}) - 1)::UINTEGER AS code, hash({names}) AS key, *
                FROM (SELECT DISTINCT {ranks} FROM metadata)"""
        )
        taxa_count, keys = con.execute("SELECT count(*), count(DISTINCT key) FROM taxa").fetchall()[0]
        if taxa_count != keys:
            raise SidecarError("two taxon tuples share a hash; cannot make the sidecar")
        columns = ", ".join(f'r{i} AS "{rank}"' for i, rank in enumerate(FILTER_RANKS))
        taxa = con.sql(f"SELECT {columns} FROM taxa ORDER BY code")
        pq.write_table(taxa.to_arrow_table(), staging / "taxa.parquet")
        sources = _sources_table(con, cols, staging) if records else None
        flags = _NpyWriter(staging / "flags.npy", np.uint8, id_end)
        taxon = _NpyWriter(staging / "taxon.npy", np.uint32, id_end, fill=int(NO_TAXON))
        writers = [flags, taxon]
        uuid_known = f"{UUID_KNOWN} * ({cols.uuid} IS NOT NULL)::UTINYINT"
        select = f"""m.id::BIGINT AS id, t.code AS code,
                       ({cols.scope_flags}
                        + {TRAINING_KNOWN} * ({cols.training_known})::UTINYINT + {uuid_known})::UTINYINT AS flags"""
        joins = f"JOIN taxa t ON {key} = t.key"
        if records:
            uuids = _NpyWriter(staging / "uuid.npy", np.dtype((np.uint8, (16,))), id_end)
            source = _NpyWriter(staging / "source.npy", np.uint32, id_end)
            writers += [uuids, source]
            strings = _Blocks(staging / "strings.bin", id_end)
            select += f""", s.code AS source,
                       unhex(replace(coalesce({cols.uuid}, '00000000-0000-0000-0000-000000000000'), '-', '')) AS uuid,
                       coalesce({cols.source_id}, '') || chr(31) || coalesce({cols.tail}, '') AS text"""
            joins += f" JOIN sources s ON hash({', '.join(cols.sources)}) = s.key"
        bands = range(0, id_end, band_ids)
        parts = staging / "bands"
        if len(bands) > 1:
            # One scan of the table, its rows split by band into temporary Parquet files; a query per
            # band on the table itself would scan all of it once per band (14 times for TreeOfLife).
            con.execute(
                f"""COPY (SELECT m.id // {band_ids} AS band, {select} FROM metadata m {joins})
                    TO '{parts}' (FORMAT parquet, PARTITION_BY (band))"""
            )
        seen = 0
        with tqdm(
            total=rows, desc="sidecar", unit="row", unit_scale=True, file=sys.stderr, disable=rows < 5_000_000
        ) as bar:
            for band_low in bands:
                band_high = min(band_low + band_ids, id_end)
                size = band_high - band_low
                band = {"flags": flags.band(size), "code": taxon.band(size)}
                if records:
                    band |= {"uuid": uuids.band(size), "source": source.band(size)}
                # Only the strings need id order (within the band); the fixed-width columns are placed by id.
                order = " ORDER BY id" if records else ""
                if len(bands) == 1:
                    query = f"SELECT {select} FROM metadata m {joins}{order}"
                else:
                    files = parts / f"band={band_low // band_ids}"
                    query = f"SELECT * EXCLUDE (band) FROM read_parquet('{files}/*.parquet'){order}"
                    if not files.is_dir():
                        query = ""  # no row has an id in this band
                for batch in con.sql(query).to_arrow_reader(batch_rows) if query else []:
                    ids = batch.column("id").to_numpy()
                    local = ids - band_low
                    band["code"][local] = batch.column("code").to_numpy()
                    band["flags"][local] = batch.column("flags").to_numpy()
                    if records:
                        band["source"][local] = batch.column("source").to_numpy()
                        band["uuid"][local] = _uuid_bytes(batch.column("uuid"))
                        strings.add(ids, batch.column("text"))
                    seen += len(ids)
                    bar.update(len(ids))
                flags.write(band["flags"])
                taxon.write(band["code"])
                if records:
                    uuids.write(band["uuid"])
                    source.write(band["source"])
                del band
                if len(bands) > 1:
                    shutil.rmtree(parts / f"band={band_low // band_ids}", ignore_errors=True)
        if seen != rows:
            raise SidecarError(f"the sidecar pass saw {seen} rows of {rows} (duplicate ids?)")
        for writer in writers:
            writer.close()
        if records:
            strings.close(staging)
        if records and cols.url_layout == "url_prefixes":
            prefixes = con.sql("SELECT prefix_id::INTEGER AS prefix_id, prefix::VARCHAR AS prefix FROM url_prefixes")
            pq.write_table(prefixes.to_arrow_table(), staging / "prefixes.parquet")
    finally:
        for writer in writers:
            writer.handle.close()
        con.close()
    shutil.rmtree(staging / "duckdb.tmp", ignore_errors=True)
    shutil.rmtree(staging / "bands", ignore_errors=True)
    manifest = {
        "format": FORMAT,
        "rows": int(rows),
        "id_end": id_end,
        "taxa": int(taxa_count),
        "records": records,
        "sources": sources,
        "url_layout": cols.url_layout,
        "source": sidecar_source(metadata),
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    logger.info(
        "sidecar for %s: %d rows, %d taxa, in %.1f s", metadata, rows, taxa_count, time.perf_counter() - started
    )
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metadata", type=Path, required=True, help="the DuckDB metadata file")
    parser.add_argument("--out", type=Path, required=True, help="the sidecar folder to write")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    parser.add_argument("--memory-limit", default=MEMORY_LIMIT, help="DuckDB's memory limit (it spills beyond)")
    parser.add_argument("--band-ids", type=int, default=BAND_IDS, help="ids per pass: bounds the writer's memory")
    parser.add_argument(
        "--no-records", action="store_true", help="scope flags and taxa only: hits' rows then come from DuckDB"
    )


def run(args: argparse.Namespace) -> int:
    """Write the sidecar; a failure is a message on stderr and exit status 1."""
    try:
        manifest = write_sidecar(
            args.metadata,
            args.out,
            threads=args.threads,
            records=not args.no_records,
            band_ids=args.band_ids,
            memory_limit=args.memory_limit,
        )
    except (SidecarError, duckdb.Error, OSError) as exc:
        print(f"sidecar failed: {exc}", file=sys.stderr)
        return 1
    print(f"sidecar: {manifest['rows']} rows, {manifest['taxa']} taxa -> {args.out}")
    return 0
