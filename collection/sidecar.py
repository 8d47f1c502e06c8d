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


def _write_records(
    con: duckdb.DuckDBPyConnection, cols: _Columns, staging: Path, id_end: int, rows: int, batch_rows: int
) -> int:
    """The rest of each row, by id: uuids and source codes as arrays, strings in compressed blocks."""
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
    uuids = np.lib.format.open_memmap(staging / "uuid.npy", mode="w+", dtype=np.uint8, shape=(id_end, 16))
    source = np.lib.format.open_memmap(staging / "source.npy", mode="w+", dtype=np.uint32, shape=(id_end,))
    blocks = np.zeros((id_end + BLOCK - 1) // BLOCK + 1, dtype=np.uint64)
    # Sorted by id, so each block of strings is complete when written; all work is per batch or per block.
    query = f"""SELECT m.id::BIGINT AS id, s.code AS code,
                       replace(coalesce({cols.uuid}, '00000000-0000-0000-0000-000000000000'), '-', '') AS hex,
                       coalesce({cols.source_id}, '') || chr(31) || coalesce({cols.tail}, '') AS text
                FROM metadata m JOIN sources s ON hash({", ".join(cols.sources)}) = s.key ORDER BY m.id"""
    state = {"block": 0, "written": 0}
    with (staging / "strings.bin").open("wb") as strings:

        def write_blocks(ids: np.ndarray, texts: pa.Array, upto: int) -> None:
            offsets, values = _string_values(texts)
            bounds = np.searchsorted(ids, np.arange(state["block"], upto + 1) * BLOCK)
            for number, (low, high) in enumerate(itertools.pairwise(bounds), start=state["block"]):
                # Slot offsets first, so a reader slices one slot instead of splitting the block.
                lengths = np.zeros(BLOCK, dtype=np.int64)
                lengths[ids[low:high] - number * BLOCK] = offsets[low + 1 : high + 1] - offsets[low:high]
                header = np.zeros(BLOCK + 1, dtype=np.uint32)
                header[1:] = np.cumsum(lengths)
                payload = values[int(offsets[low]) : int(offsets[high])].to_pybytes()
                data = zlib.compress(header.tobytes() + payload, 6)
                strings.write(data)
                state["written"] += len(data)
                blocks[number + 1] = state["written"]
            state["block"] = upto

        carry_ids, carry_texts = np.zeros(0, dtype=np.int64), pa.array([], pa.string())
        small = rows < 5_000_000
        with tqdm(total=rows, desc="records", unit="row", unit_scale=True, file=sys.stderr, disable=small) as bar:
            for batch in con.sql(query).to_arrow_reader(batch_rows):
                ids = batch.column("id").to_numpy()
                source[ids] = batch.column("code").to_numpy()
                hex_offsets, hex_values = _string_values(batch.column("hex"))
                hex_text = hex_values[int(hex_offsets[0]) : int(hex_offsets[-1])].to_pybytes().decode()
                uuids[ids] = np.frombuffer(bytes.fromhex(hex_text), dtype=np.uint8).reshape(-1, 16)
                all_ids = np.concatenate([carry_ids, ids])
                texts = pa.concat_arrays([carry_texts, batch.column("text").cast(pa.string())])
                last = int(all_ids[-1]) // BLOCK  # may still get rows from the next batch
                cut = int(np.searchsorted(all_ids, last * BLOCK))
                write_blocks(all_ids[:cut], texts[:cut], last)
                carry_ids, carry_texts = all_ids[cut:], texts[cut:]
                bar.update(len(ids))
            write_blocks(carry_ids, carry_texts, len(blocks) - 1)
    np.save(staging / "blocks.npy", blocks)
    uuids.flush()
    source.flush()
    del uuids, source
    return int(count)


def write_sidecar(
    metadata: Path, out: Path, *, threads: int = 2, batch_rows: int = 1_000_000, records: bool = True
) -> dict[str, Any]:
    """Make the sidecar of a metadata file in one pass over its table; written aside, then moved in place."""
    started = time.perf_counter()
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    con = duckdb.connect(str(metadata), read_only=True, config={"threads": threads})
    con.execute("SET enable_progress_bar = false")  # tqdm reports progress; DuckDB's bar would garble it
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
        flags = np.lib.format.open_memmap(staging / "flags.npy", mode="w+", dtype=np.uint8, shape=(id_end,))
        uuid_known = f"{UUID_KNOWN} * ({cols.uuid} IS NOT NULL)::UTINYINT"
        taxon = np.lib.format.open_memmap(staging / "taxon.npy", mode="w+", dtype=np.uint32, shape=(id_end,))
        taxon[:] = NO_TAXON
        query = f"""SELECT m.id::BIGINT AS id, t.code AS code,
                       ({cols.scope_flags}
                        + {TRAINING_KNOWN} * ({cols.training_known})::UTINYINT + {uuid_known})::UTINYINT AS flags
                    FROM metadata m JOIN taxa t ON {key} = t.key"""
        seen = 0
        with tqdm(
            total=rows, desc="sidecar", unit="row", unit_scale=True, file=sys.stderr, disable=rows < 5_000_000
        ) as bar:
            for batch in con.sql(query).to_arrow_reader(batch_rows):
                ids = batch.column("id").to_numpy()
                taxon[ids] = batch.column("code").to_numpy()
                flags[ids] = batch.column("flags").to_numpy()
                seen += len(ids)
                bar.update(len(ids))
        if seen != rows:
            raise SidecarError(f"the sidecar pass saw {seen} rows of {rows} (duplicate ids?)")
        flags.flush()
        taxon.flush()
        del flags, taxon
        sources = _write_records(con, cols, staging, id_end, rows, batch_rows) if records else None
        if records and cols.url_layout == "url_prefixes":
            prefixes = con.sql("SELECT prefix_id::INTEGER AS prefix_id, prefix::VARCHAR AS prefix FROM url_prefixes")
            pq.write_table(prefixes.to_arrow_table(), staging / "prefixes.parquet")
    finally:
        con.close()
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
    parser.add_argument(
        "--no-records", action="store_true", help="scope flags and taxa only: hits' rows then come from DuckDB"
    )


def run(args: argparse.Namespace) -> int:
    """Write the sidecar; a failure is a message on stderr and exit status 1."""
    try:
        manifest = write_sidecar(args.metadata, args.out, threads=args.threads, records=not args.no_records)
    except (SidecarError, duckdb.Error, OSError) as exc:
        print(f"sidecar failed: {exc}", file=sys.stderr)
        return 1
    print(f"sidecar: {manifest['rows']} rows, {manifest['taxa']} taxa -> {args.out}")
    return 0
