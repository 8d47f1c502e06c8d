"""The lookup sidecar: per-id arrays that judge candidates without touching DuckDB.

A scoped or filtered search examines hundreds or thousands of candidate ids per query. Asking
DuckDB for their rows costs a block load per column per scattered row (and any filter beside
`id IN (...)` turns the lookup into a table scan), and how much it costs depends on how the table
is sorted. The sidecar sits beside the metadata file and is addressed by id alone:

    flags.npy    uint8 per id: present, has_url, inaturalist, in_bioclip2_training (+ whether known)
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

It is written by the builder, or made from any metadata file (the pre-built one included) with:

    python -m services.search.sidecar --metadata data/duckdb/metadata.duckdb --out DIR
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import sys
import threading
import time
import uuid as uuid_module
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from services.search.filters import RANKS, Criteria, TaxonFilter

logger = logging.getLogger(__name__)

FORMAT = 1
NO_TAXON = np.uint32(0xFFFFFFFF)
NO_PREFIX = 0xFFFF
PRESENT, HAS_URL, INATURALIST, TRAINING, TRAINING_KNOWN, UUID_KNOWN = 1, 2, 4, 8, 16, 32
BLOCK = 128  # ids per compressed block of strings: a few KB, microseconds to inflate
SOURCE_FIELDS = ("source_dataset", "publisher", "img_type", "basis_of_record")
_FIELD_SEP = "\x1f"
SCOPE_BITS = {"all": PRESENT, "url_only": HAS_URL, "inaturalist": INATURALIST, "bioclip2_training": TRAINING}
_NAME_CACHE_LIMIT = 65_536
BINOMIAL = "genus epithet"  # the key of binomial names among the ranks' names


class SidecarError(RuntimeError):
    """The sidecar is missing, unreadable or belongs to another metadata file."""


def sidecar_source(metadata: Path) -> dict[str, Any]:
    """What ties a sidecar to its metadata file."""
    stat = metadata.stat()
    return {"name": metadata.name, "size": stat.st_size}


@dataclass(frozen=True)
class _Columns:
    ranks: list[str]
    has_url: str
    inaturalist: str
    training: str
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
    ranks = [f'"{rank}"::VARCHAR' if rank in present else "NULL::VARCHAR" for rank in RANKS]
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
    inaturalist = f"coalesce(({has_url}) AND {source} = 'gbif' AND lower({publisher}) LIKE '%inaturalist%', false)"
    training = "coalesce(in_bioclip2_training, false)" if "in_bioclip2_training" in present else "false"
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
    return _Columns(ranks, has_url, inaturalist, training, known, sources, uuid_expr, text("source_id"), tail, layout)


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
    """Make the sidecar of a metadata file; written aside, then moved in place.

    One pass per band of `band_ids` ids (`WHERE id >= low AND id < high`, sorted by id within the
    band only), so memory is bounded by the band and DuckDB's `memory_limit` (it spills to a temp
    folder in the staging folder), not by the table: sorting all 234M TreeOfLife rows by id, or
    mapping ~6 GB of arrays written in random order, would not fit a 16 GB workstation.
    """
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
        names = ", ".join(f"r{i}" for i in range(len(RANKS)))
        con.execute(
            f"""CREATE TEMP TABLE taxa AS
                SELECT (row_number() OVER (ORDER BY {names}) - 1)::UINTEGER AS code, hash({names}) AS key, *
                FROM (SELECT DISTINCT {ranks} FROM metadata)"""
        )
        taxa_count, keys = con.execute("SELECT count(*), count(DISTINCT key) FROM taxa").fetchall()[0]
        if taxa_count != keys:
            raise SidecarError("two taxon tuples share a hash; cannot make the sidecar")
        columns = ", ".join(f'r{i} AS "{rank}"' for i, rank in enumerate(RANKS))
        taxa = con.sql(f"SELECT {columns} FROM taxa ORDER BY code")
        pq.write_table(taxa.to_arrow_table(), staging / "taxa.parquet")
        sources = _sources_table(con, cols, staging) if records else None
        flags = _NpyWriter(staging / "flags.npy", np.uint8, id_end)
        taxon = _NpyWriter(staging / "taxon.npy", np.uint32, id_end, fill=int(NO_TAXON))
        writers = [flags, taxon]
        uuid_known = f"{UUID_KNOWN} * ({cols.uuid} IS NOT NULL)::UTINYINT"
        select = f"""m.id::BIGINT AS id, t.code AS code,
                       ({PRESENT} + {HAS_URL} * ({cols.has_url})::UTINYINT
                        + {INATURALIST} * ({cols.inaturalist})::UTINYINT + {TRAINING} * ({cols.training})::UTINYINT
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


class LookupSidecar:
    """The sidecar, opened read-only; every method takes an array of ids and is safe from many threads."""

    def __init__(self, folder: Path) -> None:
        try:
            self.manifest = json.loads((folder / "manifest.json").read_text())
            if self.manifest.get("format") != FORMAT:
                raise SidecarError(f"{folder}: sidecar format {self.manifest.get('format')}, expected {FORMAT}")
            self.flags = np.load(folder / "flags.npy", mmap_mode="r")
            self.taxon = np.load(folder / "taxon.npy", mmap_mode="r")
            taxa = pq.read_table(folder / "taxa.parquet")
        except (OSError, ValueError, KeyError) as exc:
            raise SidecarError(f"could not read the sidecar at {folder}: {exc}") from exc
        self.folder = folder
        self.rows = int(self.manifest["rows"])
        self.id_end = int(self.manifest["id_end"])
        if len(self.flags) != self.id_end or len(self.taxon) != self.id_end or taxa.num_rows != self.manifest["taxa"]:
            raise SidecarError(f"{folder}: the sidecar's arrays disagree with its manifest")
        # The taxa stay Arrow arrays: a hit's names are taken by code when its row is built. As Python
        # lists, TreeOfLife's ~1M taxa cost ~0.5 GB of private memory and ~15 s of start-up.
        self._taxa = taxa.combine_chunks()
        # Per rank, made on the first filter at that rank: the distinct normalised names, and each
        # taxon's index into them. A filter then costs a lookup of its value, not a pass over all taxa.
        self._normalised: dict[str, tuple[pa.Array, np.ndarray]] = {}
        self._normalising = threading.Lock()
        self._name_indices: dict[tuple[str, str], int] = {}
        self._binomial_names: pa.ChunkedArray | None = None
        encoded = pc.dictionary_encode(self._binomial).combine_chunks()
        # -1: no species to count by, so max_per_species does not apply.
        self._species_keys = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        self._binomial_names = None  # made again if a binomial filter asks for it
        self.has_records = bool(self.manifest.get("records"))
        self.url_layout = str(self.manifest.get("url_layout", "none"))
        if self.has_records:
            try:
                self._uuids = np.load(folder / "uuid.npy", mmap_mode="r")
                self._source = np.load(folder / "source.npy", mmap_mode="r")
                self._blocks = np.load(folder / "blocks.npy")
                # np.memmap cannot map an empty file (a collection without strings).
                strings = folder / "strings.bin"
                self._strings = np.memmap(strings, dtype=np.uint8, mode="r") if self._blocks[-1] else None
                sources = pq.read_table(folder / "sources.parquet")
                columns = [sources.column(name).to_pylist() for name in sources.column_names]
                self._sources = list(zip(*columns, strict=True))
                self._prefixes: dict[int, str] = {}
                if (folder / "prefixes.parquet").is_file():
                    prefixes = pq.read_table(folder / "prefixes.parquet")
                    ids, texts = prefixes.column("prefix_id").to_pylist(), prefixes.column("prefix").to_pylist()
                    self._prefixes = dict(zip(ids, texts, strict=True))
            except (OSError, ValueError, KeyError) as exc:
                raise SidecarError(f"could not read the sidecar's records at {folder}: {exc}") from exc

    @property
    def _binomial(self) -> pa.ChunkedArray:
        """ "genus epithet" per taxon, lower case; null when either is unknown."""
        if self._binomial_names is None:
            genus = pc.utf8_lower(self._taxa.column("genus"))
            epithet = pc.utf8_lower(self._taxa.column("species"))
            self._binomial_names = pc.binary_join_element_wise(genus, epithet, " ")
        return self._binomial_names

    def _names(self, codes: np.ndarray) -> list[dict[str, Any]]:
        """The ranks of each taxon code (all valid), as row fields."""
        if not len(codes):
            return []
        taken = self._taxa.take(pa.array(codes, type=pa.uint32())).select(list(RANKS))
        return taken.to_pylist()

    @classmethod
    def open(cls, folder: Path, *, metadata: Path, rows: int) -> LookupSidecar:
        if not (folder / "manifest.json").is_file():
            raise SidecarError(f"no lookup sidecar at {folder}")
        sidecar = cls(folder)
        if sidecar.rows != rows or sidecar.manifest.get("source", {}).get("size") != metadata.stat().st_size:
            raise SidecarError(f"the sidecar at {folder} was made from another metadata file; make it again")
        return sidecar

    def _clip(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        inside = (ids >= 0) & (ids < self.id_end)
        return np.where(inside, ids, 0), inside

    def flags_of(self, ids: np.ndarray) -> np.ndarray:
        safe, inside = self._clip(ids)
        return np.where(inside, self.flags[safe], 0).astype(np.uint8)

    def codes_of(self, ids: np.ndarray) -> np.ndarray:
        safe, inside = self._clip(ids)
        return np.where(inside, self.taxon[safe], NO_TAXON).astype(np.uint32)

    def _rank_names(self, rank: str) -> tuple[pa.Array, np.ndarray]:
        """A rank's distinct normalised names and, per taxon, the index of its name (-1: none); made once."""
        found = self._normalised.get(rank)
        if found is None:
            with self._normalising:
                found = self._normalised.get(rank)
                if found is None:
                    column = self._binomial if rank == BINOMIAL else pc.utf8_lower(self._taxa.column(rank))
                    # Whitespace runs in stored names compare as one space, as in filters.normalise.
                    column = pc.utf8_trim_whitespace(pc.replace_substring_regex(column, r"\s+", " "))
                    encoded = pc.dictionary_encode(column).combine_chunks()
                    indices = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)
                    found = self._normalised[rank] = (encoded.dictionary, indices)
        return found

    def _name_index(self, taxon: TaxonFilter) -> tuple[np.ndarray, int]:
        """The taxa's name indices at the filter's rank, and the index of the filter's value (-1: no taxon)."""
        rank = BINOMIAL if taxon.binomial else taxon.rank
        names, indices = self._rank_names(rank)
        key = (rank, taxon.value)
        index = self._name_indices.get(key)
        if index is None:
            index = int(pc.index(names, taxon.value).as_py())
            if len(self._name_indices) >= _NAME_CACHE_LIMIT:
                self._name_indices.clear()
            self._name_indices[key] = index
        return indices, index

    def taxon_mask(self, taxon: TaxonFilter) -> np.ndarray:
        """Which taxa (by code) a filter keeps, as one boolean per taxon."""
        indices, index = self._name_index(taxon)
        return indices == index if index >= 0 else np.zeros(len(indices), dtype=bool)

    def screen(self, ids: np.ndarray, criteria: Criteria) -> np.ndarray:
        """A boolean per id: it has a row, is in the scope and passes every taxon filter."""
        flags = self.flags_of(ids)
        keep = (flags & SCOPE_BITS[criteria.scope]) != 0
        if criteria.filters and keep.any():
            codes = self.codes_of(ids)
            known = codes != NO_TAXON
            safe = np.where(known, codes, 0)
            for taxon in criteria.filters:
                # Only the candidates' taxa are compared: no pass over all taxa per query (~1M at full size).
                indices, index = self._name_index(taxon)
                keep &= known & (indices[safe] == index) if index >= 0 else False
        return keep

    def species_keys(self, ids: np.ndarray) -> np.ndarray:
        codes = self.codes_of(ids)
        known = codes != NO_TAXON
        return np.where(known, self._species_keys[np.where(known, codes, 0)], -1)

    def _block(self, block: int) -> bytes:
        start, stop = int(self._blocks[block]), int(self._blocks[block + 1])
        if self._strings is None or stop == start:
            return bytes(4 * (BLOCK + 1))
        return zlib.decompress(self._strings[start:stop].tobytes())

    @staticmethod
    def _slot(block: bytes, slot: int) -> str:
        start, stop = np.frombuffer(block, dtype=np.uint32, count=2, offset=4 * slot)
        header = 4 * (BLOCK + 1)
        return block[header + int(start) : header + int(stop)].decode()

    def records(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        """Whole rows (as the metadata table has them, URL rebuilt) without asking DuckDB; needs `records`."""
        wanted = np.asarray(sorted({int(i) for i in ids}), dtype=np.int64)
        flags = self.flags_of(wanted)
        wanted = wanted[(flags & PRESENT) != 0]
        flags = self.flags_of(wanted)
        codes = self.codes_of(wanted)
        sources = self._source[wanted] if len(wanted) else np.zeros(0, dtype=np.uint32)
        uuids = self._uuids[wanted] if len(wanted) else np.zeros((0, 16), dtype=np.uint8)
        names = self._names(codes)
        blocks: dict[int, bytes] = {}
        found: dict[int, dict[str, Any]] = {}
        for position, record_id in enumerate(wanted.tolist()):
            block = record_id // BLOCK
            if block not in blocks:
                blocks[block] = self._block(block)
            source_id, _, tail = self._slot(blocks[block], record_id % BLOCK).partition(_FIELD_SEP)
            dataset, publisher, img_type, basis, prefix_id = self._sources[int(sources[position])]
            flag = int(flags[position])
            if self.url_layout == "url_prefixes":
                prefix = self._prefixes.get(prefix_id) if prefix_id is not None else None
                url = prefix + tail if prefix is not None and tail else None
            else:
                url = tail or None
            row = names[position]
            row |= {
                "id": record_id,
                "uuid": str(uuid_module.UUID(bytes=uuids[position].tobytes())) if flag & UUID_KNOWN else None,
                "source_dataset": dataset,
                "source_id": source_id or None,
                "publisher": publisher,
                "img_type": img_type,
                "basis_of_record": basis,
                "url": url,
                "has_url": bool(flag & HAS_URL),
                "in_bioclip2_training": bool(flag & TRAINING) if flag & TRAINING_KNOWN else None,
            }
            found[record_id] = row
        return found

    def taxonomy(self, record_id: int) -> dict[str, Any] | None:
        """The ranks and the flag columns of one id, as a metadata row has them; None without a row."""
        flags = int(self.flags_of(np.asarray([record_id]))[0])
        if not flags & PRESENT:
            return None
        row = self._names(self.codes_of(np.asarray([record_id])))[0]
        row["has_url"] = bool(flags & HAS_URL)
        row["in_bioclip2_training"] = bool(flags & TRAINING) if flags & TRAINING_KNOWN else None
        return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.search.sidecar", description=__doc__.split("\n")[0])
    parser.add_argument("--metadata", type=Path, required=True, help="the DuckDB metadata file")
    parser.add_argument("--out", type=Path, required=True, help="the sidecar folder to write")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    parser.add_argument("--memory-limit", default=MEMORY_LIMIT, help="DuckDB's memory limit (it spills beyond)")
    parser.add_argument("--band-ids", type=int, default=BAND_IDS, help="ids per pass: bounds the writer's memory")
    parser.add_argument(
        "--no-records", action="store_true", help="scope flags and taxa only: hits' rows then come from DuckDB"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        manifest = write_sidecar(
            args.metadata, args.out, threads=args.threads, records=not args.no_records, band_ids=args.band_ids,
            memory_limit=args.memory_limit,
        )  # fmt: skip
    except (SidecarError, duckdb.Error, OSError) as exc:
        print(f"sidecar failed: {exc}", file=sys.stderr)
        return 1
    print(f"sidecar: {manifest['rows']} rows, {manifest['taxa']} taxa -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
