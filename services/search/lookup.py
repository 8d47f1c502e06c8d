"""Record lookup, the search service's one interface to its metadata: which candidates may be hits, and
the hits' rows. Two implementations, chosen once at start-up (`open_lookup`):

- `SidecarLookup`: candidates are judged from the lookup sidecar's per-id arrays (written by
  `python -m collection sidecar`), and the hits' rows come from the sidecar too (or, for a sidecar
  made without records, from DuckDB without the columns the sidecar holds);
- `DuckDBLookup`: the candidates' whole rows are fetched from DuckDB and judged in Python.

Both apply the vocabulary's rules (scope predicates, `name_key` comparisons); tests check they agree.

The sidecar's layout (the writer is collection/sidecar.py):

    flags.npy    uint8 per id: present, the scope bits (the vocabulary's table), whether
                 in_bioclip2_training is known, whether the uuid is known
    taxon.npy    uint32 per id: a code into taxa.parquet (NO_TAXON where the id has no row)
    taxa.parquet the distinct (kingdom .. species, common_name) tuples, row i = code i
    manifest.json format, row count, id range, URL layout, the metadata file it was made from
    uuid.npy, source.npy, sources.parquet, strings.bin, blocks.npy, prefixes.parquet
                 with `records`: the rest of each row (see collection/sidecar.py)
"""

from __future__ import annotations

import json
import logging
import threading
import uuid as uuid_module
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from services.common.vocabulary import FILTER_RANKS, SCOPES, TaxonFilter, name_key, scientific_name
from services.search.filters import Criteria, row_matches, species_key
from services.search.metadata import MetadataStore, Row, complete_row

logger = logging.getLogger(__name__)

Lookup = Literal["sidecar", "duckdb"]

FORMAT = 1
NO_TAXON = np.uint32(0xFFFFFFFF)
NO_PREFIX = 0xFFFF
# Flag bits: the scopes' own (from the vocabulary's table), then two that say whether a value is known.
PRESENT, HAS_URL, TRAINING = SCOPES["all"].bit, SCOPES["url_only"].bit, SCOPES["bioclip2_training"].bit
TRAINING_KNOWN, UUID_KNOWN = 16, 32
if {TRAINING_KNOWN, UUID_KNOWN} & {rule.bit for rule in SCOPES.values()}:
    raise RuntimeError("a scope's flag bit overlaps the sidecar's own flag bits")
BLOCK = 128  # ids per compressed block of strings: a few KB, microseconds to inflate
SOURCE_FIELDS = ("source_dataset", "publisher", "img_type", "basis_of_record")
FIELD_SEP = "\x1f"
_NAME_CACHE_LIMIT = 65_536
BINOMIAL = "genus epithet"  # the key of binomial names among the ranks' names
# What name_key does to printable ASCII (nearly every TreeOfLife name), done by Arrow on a whole column:
# lower-case, space runs as one, trimmed. In printable ASCII the space is the only whitespace.
_PRINTABLE_ASCII = r"^[ -~]*$"


# Per filter rank, its distinct names (None: no name) with how many records carry each.
TaxonCounts = dict[str, list[tuple[str | None, int]]]
COUNT_CHUNK = 8_388_608  # ids counted at a time: 32 MB of codes, 64 MB as intp


class SidecarError(RuntimeError):
    """The sidecar is missing, unreadable or belongs to another metadata file."""


def sidecar_source(metadata: Path) -> dict[str, Any]:
    """What ties a sidecar to its metadata file."""
    stat = metadata.stat()
    return {"name": metadata.name, "size": stat.st_size}


def default_sidecar_path(metadata: Path) -> Path:
    """`duckdb/metadata.duckdb` -> `duckdb/metadata.lookup/`."""
    return metadata.with_suffix(".lookup")


@dataclass(frozen=True)
class _Names:
    """`name_key` of one rank's stored names: the distinct keys, and per taxon the index of its key."""

    keys: pa.Array  # distinct name keys (strings)
    indices: np.ndarray  # int32 per taxon: into `keys`; -1 where the name is null
    blank: np.ndarray  # bool per taxon: null or only whitespace (no part of a scientific name)


def _name_keys(column: pa.Array | pa.ChunkedArray) -> _Names:
    """`name_key` of every name in a column, each distinct name keyed once.

    Printable ASCII names are keyed by Arrow in one pass (see _PRINTABLE_ASCII); the others by name_key
    itself, so the keys are name_key's exactly. As Python strings, TreeOfLife's ~1M taxa cost ~0.5 GB
    and ~15 s of every start-up.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(column)
    distinct = encoded.dictionary.cast(pa.string())
    ascii_mask = pc.match_substring_regex(distinct, _PRINTABLE_ASCII).to_numpy(zero_copy_only=False)
    keys = pc.ascii_lower(pc.ascii_trim(pc.replace_substring_regex(distinct, " +", " "), " "))
    blank = pc.equal(keys, "").to_numpy(zero_copy_only=False)  # in printable ASCII, strip() drops spaces only
    others = np.flatnonzero(~ascii_mask)
    if len(others):
        texts = distinct.take(pa.array(others)).to_pylist()
        keys = pc.replace_with_mask(keys, pa.array(~ascii_mask), pa.array([name_key(t) for t in texts], pa.string()))
        blank[others] = [not t.strip() for t in texts]
    # Distinct names can share a key (case, Unicode form, spacing): number the keys, not the names.
    by_key = pc.dictionary_encode(keys)
    raw = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    key_of_raw = by_key.indices.to_numpy(zero_copy_only=False).astype(np.int32)
    known = raw >= 0
    safe = np.where(known, raw, 0)
    if not len(key_of_raw):  # every name null
        return _Names(by_key.dictionary, np.full(len(raw), -1, np.int32), np.ones(len(raw), dtype=bool))
    return _Names(
        by_key.dictionary,
        np.where(known, key_of_raw[safe], -1).astype(np.int32),
        np.where(known, blank[safe], True),
    )


def _binomial_keys(genus: _Names, epithet: _Names) -> _Names:
    """name_key of each taxon's scientific name (vocabulary.scientific_name): null unless genus and epithet
    are both there. name_key of "genus epithet" is the two keys joined by a space (a space blocks Unicode
    composition across it), less that space where one key is empty (a name of invisible characters)."""

    def keys_of(names: _Names) -> pa.Array:
        return (
            names.keys.take(pa.array(np.maximum(names.indices, 0)))
            if len(names.keys)
            else pa.nulls(len(names.indices), pa.string())
        )

    joined = pc.ascii_trim(pc.binary_join_element_wise(keys_of(genus), keys_of(epithet), " "), " ")
    missing = genus.blank | epithet.blank
    joined = pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), joined)
    by_key = pc.dictionary_encode(joined)
    indices = pc.fill_null(by_key.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)
    return _Names(by_key.dictionary, indices, missing)


@dataclass(frozen=True)
class Screened:
    """The verdict on a list of candidate ids, in their order."""

    keep: np.ndarray  # bool per id: has a row and satisfies the criteria
    species: list[Any]  # what max_per_species counts by; None = no cap applies
    rows: dict[int, Row]  # rows fetched on the way (the duckdb lookup), reusable for the hits


class RecordLookup(Protocol):
    """What the search engine asks of the metadata; safe from many threads."""

    name: Lookup
    store: MetadataStore  # the DuckDB file behind it (row count, URL layout; closed at shutdown)

    def screen(self, ids: np.ndarray, criteria: Criteria) -> Screened:
        """Which candidates may be hits, and their species (for max_per_species), in the ids' order."""
        ...

    def fetch(self, ids: Iterable[int]) -> dict[int, Row]:
        """Whole rows (with `url`) for the given ids; ids with no row are absent."""
        ...

    def fetch_plan(self, ids: Iterable[int]) -> str:
        """DuckDB's executed plan for this lookup's row query (an index scan, or nothing to ask)."""
        ...

    def taxon_counts(self) -> TaxonCounts:
        """Each filter rank's distinct names with their record counts (a species as "Genus epithet")."""
        ...

    def files(self) -> list[Path]:
        """The files its lookups read through the page cache, most needed first (for SEARCH_PREFETCH)."""
        ...


class DuckDBLookup:
    """Candidates' whole rows from DuckDB, judged in Python."""

    name: Lookup = "duckdb"

    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    def fetch(self, ids: Iterable[int]) -> dict[int, Row]:
        return self.store.fetch(ids)

    def fetch_plan(self, ids: Iterable[int]) -> str:
        return self.store.fetch_plan(ids)

    def taxon_counts(self) -> TaxonCounts:
        return self.store.taxon_counts()

    def files(self) -> list[Path]:
        # DuckDB reads its file through its own buffer pool, a block per lookup: none worth reading whole.
        return []

    def screen(self, ids: np.ndarray, criteria: Criteria) -> Screened:
        ids = np.asarray(ids, dtype=np.int64)
        rows = self.fetch(ids.tolist())
        keep = np.zeros(len(ids), dtype=bool)
        species: list[Any] = []
        for position, record_id in enumerate(ids.tolist()):
            row = rows.get(record_id)
            keep[position] = row is not None and row_matches(row, criteria)
            species.append(species_key(row) if row is not None else None)
        return Screened(keep=keep, species=species, rows=rows)


class SidecarLookup:
    """Candidates judged from the sidecar's arrays; the hits' rows from the sidecar (or narrow DuckDB rows)."""

    name: Lookup = "sidecar"

    def __init__(self, store: MetadataStore, sidecar: LookupSidecar) -> None:
        self.store = store
        self.sidecar = sidecar

    def fetch(self, ids: Iterable[int]) -> dict[int, Row]:
        wanted = sorted({int(i) for i in ids if i >= 0})
        if not wanted:
            return {}
        if self.sidecar.has_records:
            found = self.sidecar.records(wanted)
            # The sidecar holds no rights columns: a file that has them is asked for those alone, by id.
            for record_id, rights in self.store.rights(list(found)).items():
                found[record_id] |= rights
            return {record_id: complete_row(row) for record_id, row in found.items()}
        found: dict[int, Row] = {}
        for row in self.store.query(wanted, narrow=True):
            taxonomy = self.sidecar.taxonomy(row["id"])
            if taxonomy is None:
                logger.warning("id %d has a row but no sidecar entry; the sidecar is stale", row["id"])
                continue
            row.update(taxonomy)
            found[row["id"]] = self.store.finish(row)
        return found

    def fetch_plan(self, ids: Iterable[int]) -> str:
        return self.store.fetch_plan(ids, narrow=True)

    def taxon_counts(self) -> TaxonCounts:
        # From the sidecar's per-id codes, not a GROUP BY per rank in DuckDB: at 234M rows those took ~45 s of
        # both cores and up to 1 GB of DuckDB's memory, beside the first searches (docs/benchmarks/scale.md).
        return self.sidecar.taxon_counts()

    def files(self) -> list[Path]:
        return self.sidecar.files()

    def screen(self, ids: np.ndarray, criteria: Criteria) -> Screened:
        ids = np.asarray(ids, dtype=np.int64)
        keys = self.sidecar.species_keys(ids)
        return Screened(
            keep=self.sidecar.screen(ids, criteria),
            species=[None if key < 0 else int(key) for key in keys.tolist()],
            rows={},
        )


def open_lookup(store: MetadataStore, *, sidecar: Path | None = None, use_sidecar: bool = True) -> RecordLookup:
    """The sidecar lookup when the metadata file has a sidecar that belongs to it; else DuckDB rows."""
    if use_sidecar:
        folder = sidecar or default_sidecar_path(store.path)
        try:
            return SidecarLookup(store, LookupSidecar.open(folder, metadata=store.path, rows=store.rows))
        except SidecarError as exc:
            logger.warning("%s; candidates will be judged from DuckDB rows (slower)", exc)
    return DuckDBLookup(store)


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
        # The taxa stay Arrow arrays: a hit's names are taken by code when its row is built.
        self._taxa = taxa.combine_chunks()
        # Per rank, made on the first filter at that rank: the distinct name keys (vocabulary.name_key, the
        # rule filters use) and each taxon's index into them. A filter then costs a lookup of its key and a
        # comparison of the candidates' indices, not a pass over all taxa (~1M at full size).
        self._normalised: dict[str, _Names] = {}
        self._normalising = threading.RLock()  # the binomial names are made from two ranks' names
        self._name_indices: dict[tuple[str, str], int] = {}
        binomial = self._rank_names(BINOMIAL)
        # -1: no species to count by, so max_per_species does not apply.
        self._species_keys = binomial.indices.astype(np.int64)
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

    def _rank_names(self, rank: str) -> _Names:
        """A rank's name keys (or the scientific names', for BINOMIAL); made once, on first use."""
        found = self._normalised.get(rank)
        if found is None:
            with self._normalising:
                found = self._normalised.get(rank)
                if found is None:
                    if rank == BINOMIAL:
                        found = _binomial_keys(self._rank_names("genus"), self._rank_names("species"))
                    else:
                        found = _name_keys(self._taxa.column(rank))
                    self._normalised[rank] = found
        return found

    def name_keys(self, rank: str) -> tuple[list[str], np.ndarray]:
        """One rank's distinct name keys (BINOMIAL: the scientific names') and, per taxon code, the index of its
        key (-1: no name); for the Milvus loader, which codes the keys per record."""
        names = self._rank_names(rank)
        return names.keys.to_pylist(), names.indices

    def _name_index(self, taxon: TaxonFilter) -> tuple[np.ndarray, int]:
        """The taxa's key indices at the filter's rank, and the index of the filter's key (-1: no taxon has it)."""
        rank = BINOMIAL if taxon.binomial else taxon.rank
        names = self._rank_names(rank)
        cache_key = (rank, taxon.key)
        index = self._name_indices.get(cache_key)
        if index is None:
            index = int(pc.index(names.keys, taxon.key).as_py())
            if len(self._name_indices) >= _NAME_CACHE_LIMIT:
                self._name_indices.clear()
            self._name_indices[cache_key] = index
        return names.indices, index

    def taxon_mask(self, taxon: TaxonFilter) -> np.ndarray:
        """Which taxa (by code) a filter keeps, as one boolean per taxon."""
        indices, index = self._name_index(taxon)
        return indices == index if index >= 0 else np.zeros(len(indices), dtype=bool)

    def files(self) -> list[Path]:
        """Its files, the per-id arrays every screening reads first, then the records' (a hit's row)."""
        first = [self.folder / name for name in ("flags.npy", "taxon.npy")]
        try:
            rest = sorted(path for path in self.folder.iterdir() if path.is_file() and path not in first)
        except OSError as exc:
            # A folder that may be read by name but not listed (mode 711), or gone since it was opened: the arrays
            # it has open are still worth reading; the rest is read as hits need it.
            logger.warning("could not list the sidecar at %s: %s", self.folder, exc)
            rest = []
        return first + rest

    def taxon_counts(self, *, chunk: int = COUNT_CHUNK) -> TaxonCounts:
        """Each filter rank's distinct names with their record counts, from the per-id taxon codes: one pass over
        taxon.npy (4 bytes an id, `chunk` ids at a time) and a group-by over the taxa (~1M at full size).

        The same counts as `MetadataStore.taxon_counts` (a GROUP BY per rank): a species is named by the
        vocabulary's rule (genus and epithet), so a taxon without a genus names no species."""
        per_code = np.zeros(len(self._taxa), dtype=np.int64)
        for start in range(0, self.id_end, chunk):
            codes = np.asarray(self.taxon[start : start + chunk])
            codes = codes[codes != NO_TAXON]
            per_code += np.bincount(codes, minlength=len(per_code))[: len(per_code)]
        table = self._taxa.append_column("records", pa.array(per_code))
        counts: TaxonCounts = {}
        for rank in FILTER_RANKS:
            if rank == "species":
                grouped = table.group_by(["genus", "species"]).aggregate([("records", "sum")])
                names = [
                    scientific_name(genus, epithet)
                    for genus, epithet in zip(
                        grouped.column("genus").to_pylist(), grouped.column("species").to_pylist(), strict=True
                    )
                ]
            else:
                grouped = table.group_by(rank).aggregate([("records", "sum")])
                names = grouped.column(rank).to_pylist()
            found = grouped.column("records_sum").to_pylist()
            counts[rank] = [(name, int(n)) for name, n in zip(names, found, strict=True) if n]
        return counts

    def _names(self, codes: np.ndarray) -> list[dict[str, Any]]:
        """The ranks of each taxon code (all valid), as row fields."""
        if not len(codes):
            return []
        return self._taxa.take(pa.array(codes, type=pa.uint32())).select(list(FILTER_RANKS)).to_pylist()

    def screen(self, ids: np.ndarray, criteria: Criteria) -> np.ndarray:
        """A boolean per id: it has a row, is in the scope and passes every taxon filter."""
        flags = self.flags_of(ids)
        keep = (flags & SCOPES[criteria.scope].bit) != 0
        if criteria.filters and keep.any():
            codes = self.codes_of(ids)
            known = codes != NO_TAXON
            safe = np.where(known, codes, 0)
            for taxon in criteria.filters:
                # Only the candidates' taxa are compared: no pass over all taxa per query.
                indices, index = self._name_index(taxon)
                keep &= (known & (indices[safe] == index)) if index >= 0 else False
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
            source_id, _, tail = self._slot(blocks[block], record_id % BLOCK).partition(FIELD_SEP)
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
