"""A synthetic TreeOfLife-shaped collection at any size, in the pre-built layout, made fast enough for full scale.

    .venv/bin/python -m bench.scale_data --vectors 200000000 --out var/bench/scale/200000000

writes `faiss/index.index`, `duckdb/metadata.duckdb` and `queries.npz` under --out (the layout
`SEARCH_DATA_DIR` reads). Nothing is trained on real vectors and nothing is sorted:

- **Taxonomy**: `species` species (default ~1M at 200M vectors, scaled with the size) under
  genus (5 species), family (40), order (400), class (3,200), phylum (12,800) and kingdom
  (150,000), with zero-padded names so that name order is species order. Rows per species are
  Zipf-like (weight 1 / (rank + 10)^1.1, ranks shuffled over the species): the biggest species
  holds ~1.5% of the rows, the tail a few dozen each.
- **Metadata**: `rows` rows (234/200 of the vectors) generated inside DuckDB from `range()` in
  taxonomy order, the order the pre-built file is sorted in, so no sort is needed: row r gets
  the id `(r * A + B) mod rows` (a permutation, so ids are scattered over the table as FAISS ids
  are), a random UUID and, from a hash of r, the source columns: 58% iNaturalist through GBIF
  (with a URL), 22% other GBIF publishers, 15% EOL, 4% BIOSCAN, 1% FathomNet; 71.4% of the
  non-iNaturalist rows have a URL (88% overall); 85% in BioCLIP-2's training set. ENUM columns for
  kingdom .. family and the source columns, URLs split into `url_prefixes` + `identifier_suffix`,
  an ART index on `id`.
- **Index**: IVF65536,PQ16, inner product, 768-d. Centroids lie on a 48-d clustered structure
  (2,048 groups of 32 neighbouring lists); PQ16 is trained (6 k-means iterations) on 10,000 points around them. The
  inverted lists are written straight into the index file (the bytes `faiss.write_index` writes
  for an ArrayInvertedLists, so `IO_FLAG_MMAP` maps them) with random PQ codes: search cost
  depends on list lengths, nprobe and the code size, not on the code values. List lengths are
  lognormal (sigma 0.8: imbalance factor ~1.9, as k-means on embeddings gives). List l holds a
  taxonomy-contiguous run of the vector rows (neighbouring lists: neighbouring taxa, as BioCLIP
  embeddings cluster by taxon) with 30% of all entries then shuffled across lists. 200 of every
  234 rows have a vector.
- **Queries**: near a centroid (lifted from the latent space with noise), the list drawn with
  probability proportional to its length (queries come from where the data is), each with the
  class and genus of its list's middle row, for the taxon-filter measurements.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pyarrow as pa

from services.common.vocabulary import FILTER_RANKS, RANKS

logger = logging.getLogger("bench.scale_data")

ROOT = Path(__file__).resolve().parents[1]
SCALE_DIR = ROOT / "var" / "bench" / "scale"
DIM = 768
LATENT = 48
GROUP = 32  # neighbouring lists per latent group
FULL_VECTORS = 200_000_000
FULL_ROWS = 234_000_000
FULL_SPECIES = 1_000_000
MIXED = 0.3  # share of list entries shuffled across lists
SIGMA = 0.8  # lognormal sigma of list lengths
PERMUTE_A = 2_654_435_761  # prime: r -> (r * A + B) mod rows is a permutation when rows is not a multiple of it
PERMUTE_B = 1_234_567
RANK_SIZES = {"genus": 5, "family": 40, "order": 400, "class": 3_200, "phylum": 12_800, "kingdom": 150_000}
ENUM_RANKS = RANKS[:5]  # kingdom to family: few distinct names, stored as ENUMs
INAT_PREFIX = "https://inaturalist-open-data.s3.amazonaws.com"


@dataclass(frozen=True)
class ScaleShape:
    vectors: int
    rows: int
    species: int
    nlist: int = 65_536
    pq_m: int = 16
    queries: int = 4_000

    @classmethod
    def for_vectors(cls, vectors: int, **kwargs: int) -> ScaleShape:
        rows = round(vectors * FULL_ROWS / FULL_VECTORS)
        species = max(10_000, round(FULL_SPECIES * vectors / FULL_VECTORS))
        return cls(vectors=vectors, rows=rows, species=species, **kwargs)


@dataclass(frozen=True)
class Layout:
    folder: Path

    @property
    def index(self) -> Path:
        return self.folder / "faiss" / "index.index"

    @property
    def metadata(self) -> Path:
        return self.folder / "duckdb" / "metadata.duckdb"

    @property
    def sidecar(self) -> Path:
        return self.folder / "duckdb" / "metadata.lookup"

    @property
    def queries(self) -> Path:
        return self.folder / "queries.npz"

    @property
    def info(self) -> Path:
        return self.folder / "generated.json"


def species_counts(shape: ScaleShape) -> np.ndarray:
    """Rows per species (int64, summing to shape.rows), Zipf-like over shuffled ranks."""
    rank = np.random.default_rng(1).permutation(shape.species)
    weight = 1.0 / (rank + 10.0) ** 1.1
    exact = weight / weight.sum() * shape.rows
    counts = np.floor(exact).astype(np.int64)
    short = shape.rows - int(counts.sum())
    counts[np.argsort(counts - exact)[:short]] += 1
    return counts


def permutation_a(rows: int) -> int:
    a = PERMUTE_A
    while math.gcd(a, rows) != 1:
        a += 2
    return a


def row_ids(rows_in_order: np.ndarray, rows: int) -> np.ndarray:
    """The id of the row at each taxonomy-order position (the same formula as the SQL)."""
    return (rows_in_order.astype(np.int64) * permutation_a(rows) + PERMUTE_B) % rows


def _names(prefix: str, count: int) -> str:
    return f"'{prefix}' || lpad(({{value}})::VARCHAR, {len(str(max(count - 1, 1)))}, '0')"


def _rank_sql(rank: str, species: int) -> str:
    size = RANK_SIZES[rank]
    return _names(rank.capitalize(), (species + size - 1) // size).format(value=f"s // {size}")


def write_metadata(
    shape: ScaleShape, path: Path, *, memory_limit: str, threads: int, index_memory_limit: str = "5GB"
) -> dict[str, float]:
    """The DuckDB file: taxa, then rows streamed from range() in taxonomy order, then the id index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    counts = species_counts(shape)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    con = duckdb.connect(
        str(partial), config={"threads": threads, "memory_limit": memory_limit, "preserve_insertion_order": True}
    )
    timings: dict[str, float] = {}
    try:
        con.execute("SET enable_progress_bar = false")
        con.register("counts", pa.table({"s": np.arange(shape.species), "start": starts, "cnt": counts}))
        s = shape.species
        con.execute(
            f"""CREATE TEMP TABLE sp AS
                SELECT s, start, cnt,
                       {_rank_sql("kingdom", s)} AS kingdom, {_rank_sql("phylum", s)} AS phylum,
                       {_rank_sql("class", s)} AS class, {_rank_sql("order", s)} AS "order",
                       {_rank_sql("family", s)} AS family, {_rank_sql("genus", s)} AS genus,
                       {_names("epithet", s).format(value="s")} AS species,
                       CASE WHEN s % 2 = 0 THEN 'common name ' || s END AS common_name
                FROM counts WHERE cnt > 0 ORDER BY s"""
        )
        for rank in ENUM_RANKS:
            con.execute(f'CREATE TYPE {rank}_t AS ENUM (SELECT DISTINCT "{rank}" FROM sp ORDER BY 1)')
        con.execute("CREATE TYPE source_dataset_t AS ENUM ('bioscan', 'eol', 'fathomnet', 'gbif')")
        con.execute(
            "CREATE TYPE publisher_t AS ENUM (SELECT 'iNaturalist.org' UNION ALL "
            "SELECT 'Publisher ' || lpad(i::VARCHAR, 3, '0') FROM range(300) t(i))"
        )
        con.execute("CREATE TYPE img_type_t AS ENUM ('Image', 'StillImage')")
        con.execute(
            "CREATE TYPE basisOfRecord_t AS ENUM ('HUMAN_OBSERVATION', 'PRESERVED_SPECIMEN', 'MACHINE_OBSERVATION')"
        )
        con.execute(
            f"""CREATE TABLE url_prefixes AS
                SELECT 0::USMALLINT AS prefix_id, '{INAT_PREFIX}' AS prefix
                UNION ALL SELECT i::USMALLINT, 'https://media' || i || '.example.org/images' FROM range(1, 60) t(i)"""
        )
        started = time.perf_counter()
        a = permutation_a(shape.rows)
        # The broad ranks as ENUMs, as in the published file; the rest as text.
        names = ", ".join(f'"{rank}"' for rank in FILTER_RANKS)
        taxa = ", ".join(
            f'"{rank}"::{rank}_t AS "{rank}"' if rank in ENUM_RANKS else f'"{rank}"' for rank in FILTER_RANKS
        )
        con.execute(
            f"""CREATE TABLE metadata AS
            WITH ordered AS (
              SELECT {names}, unnest(range(start, start + cnt)) AS r
              FROM sp),
            drawn AS (
              SELECT *, hash(r) AS h, hash(r + {shape.rows}) AS h2, hash(r) % 100 AS src FROM ordered)
            SELECT ((r * {a} + {PERMUTE_B}) % {shape.rows})::INTEGER AS id, gen_random_uuid() AS uuid,
                   {taxa},
                   (CASE WHEN src < 80 THEN 'gbif' WHEN src < 95 THEN 'eol' WHEN src < 99 THEN 'bioscan'
                         ELSE 'fathomnet' END)::source_dataset_t AS source_dataset,
                   (h2 % 4000000000)::VARCHAR AS source_id,
                   (CASE WHEN src < 58 THEN 'iNaturalist.org'
                         ELSE 'Publisher ' || lpad((h2 % 300)::VARCHAR, 3, '0') END)::publisher_t AS publisher,
                   (CASE WHEN (h2 // 1000) % 10 < 9 THEN 'StillImage' ELSE 'Image' END)::img_type_t AS img_type,
                   (CASE WHEN src < 58 OR (h2 // 10000) % 10 < 6 THEN 'HUMAN_OBSERVATION'
                         ELSE 'PRESERVED_SPECIMEN' END)::basisOfRecord_t AS "basisOfRecord",
                   CASE WHEN src < 58 THEN 0::USMALLINT
                        WHEN (h2 // 100000) % 1000 < 714 THEN (1 + (h % 59))::USMALLINT END AS url_prefix_id,
                   CASE WHEN src < 58 THEN '/photos/' || (h // 100 % 500000000) || '/original.jpg'
                        WHEN (h2 // 100000) % 1000 < 714 THEN '/' || (h // 100 % 900000000) || '.jpg'
                   END AS identifier_suffix,
                   src < 58 OR (h2 // 100000) % 1000 < 714 AS has_url,
                   (h2 // 100000000) % 100 < 85 AS in_bioclip2_training
            FROM drawn"""
        )
        timings["rows_s"] = round(time.perf_counter() - started, 1)
        con.execute("CHECKPOINT")
        started = time.perf_counter()
        # An ART index is built in memory (~8+ bytes per key: ~2 GB at 234M rows) and cannot spill.
        con.execute(f"SET memory_limit = '{index_memory_limit}'")
        con.execute("CREATE UNIQUE INDEX metadata_id ON metadata(id)")
        con.execute("CHECKPOINT")
        timings["id_index_s"] = round(time.perf_counter() - started, 1)
    finally:
        con.close()
    partial.replace(path)
    wal = partial.with_name(partial.name + ".wal")
    wal.unlink(missing_ok=True)
    return timings


class _Space:
    """List centroids on a clustered 48-d structure lifted to 768-d; points and queries around them."""

    def __init__(self, nlist: int) -> None:
        rng = np.random.default_rng(12345)
        groups = max(1, nlist // GROUP)
        centres = rng.standard_normal((groups, LATENT), dtype=np.float32)
        # Lists l and l+1 share a group: neighbouring lists in space hold neighbouring taxa.
        self.latent = centres[np.arange(nlist) // GROUP % groups] + 0.2 * rng.standard_normal(
            (nlist, LATENT), dtype=np.float32
        )
        basis, _ = np.linalg.qr(rng.standard_normal((DIM, LATENT), dtype=np.float32))
        self.projection = np.ascontiguousarray(basis.T.astype(np.float32))
        self.centroids = self.lift(self.latent, rng, noise=0.0)

    def lift(self, latent: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
        vectors = latent @ self.projection
        if noise:
            vectors += noise * rng.standard_normal(vectors.shape, dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def around(self, lists: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        latent = self.latent[lists] + 0.25 * rng.standard_normal((len(lists), LATENT), dtype=np.float32)
        return self.lift(latent, rng, noise=0.05)


def list_sizes(shape: ScaleShape) -> np.ndarray:
    """Vectors per list: lognormal (sigma SIGMA), summing to shape.vectors."""
    weight = np.random.default_rng(2).lognormal(0.0, SIGMA, shape.nlist)
    exact = weight / weight.sum() * shape.vectors
    sizes = np.floor(exact).astype(np.int64)
    short = shape.vectors - int(sizes.sum())
    sizes[np.argsort(sizes - exact)[:short]] += 1
    return sizes


def _vector_ids(shape: ScaleShape) -> np.ndarray:
    """Every vector's id, list by list: taxonomy-contiguous runs with MIXED of the entries shuffled."""
    k = np.arange(shape.vectors, dtype=np.int64)
    k *= shape.rows
    k //= shape.vectors  # the taxonomy-order position of the k-th vector's row
    ids = row_ids(k, shape.rows)
    del k
    rng = np.random.default_rng(3)
    moved = np.flatnonzero(rng.random(shape.vectors, dtype=np.float32) < MIXED)
    ids[moved] = ids[rng.permutation(moved)]
    return ids


def write_index(shape: ScaleShape, path: Path) -> dict[str, float]:
    """The IVF-PQ file with random codes written straight into its inverted lists (see the module doc)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    space = _Space(shape.nlist)
    quantizer = faiss.IndexFlatIP(DIM)
    quantizer.add(space.centroids)
    index = faiss.IndexIVFPQ(quantizer, DIM, shape.nlist, shape.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    sample_lists = np.random.default_rng(4).integers(0, shape.nlist, 10_000)
    residuals = space.around(sample_lists, seed=5) - space.centroids[sample_lists]
    index.pq.cp.niter = 6  # codebooks only need a plausible shape: the codes are random anyway
    index.pq.train(np.ascontiguousarray(residuals))
    index.is_trained = True
    index.ntotal = shape.vectors
    trained = time.perf_counter() - started
    partial = path.with_suffix(".partial")
    faiss.write_index(index, str(partial))
    head = partial.read_bytes()
    cut = head.rfind(b"ilar")
    if cut < 0:
        raise RuntimeError("faiss wrote no ArrayInvertedLists section")
    sizes = list_sizes(shape)
    ids = _vector_ids(shape)
    code_size = int(index.code_size)
    rng = np.random.default_rng(6)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    with partial.open("r+b") as out:
        out.truncate(cut)
        out.seek(cut)
        # faiss's ArrayInvertedLists layout: fourcc, nlist, code_size, "full", the sizes vector, then
        # each non-empty list's codes followed by its ids.
        out.write(b"ilar" + struct.pack("<QQ", shape.nlist, code_size) + b"full")
        out.write(struct.pack("<Q", shape.nlist) + sizes.astype("<u8").tobytes())
        for number in range(shape.nlist):
            count = int(sizes[number])
            if count:
                out.write(rng.bytes(count * code_size))
                out.write(ids[offsets[number] : offsets[number + 1]].astype("<i8").tobytes())
    partial.replace(path)
    middle_rows = (offsets[:-1] + sizes // 2) * shape.rows // shape.vectors
    queries = shape.queries
    query_lists = np.random.default_rng(7).choice(shape.nlist, size=queries, p=sizes / sizes.sum())
    vectors = space.around(query_lists, seed=8)
    return {
        "pq_train_s": round(trained, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "query_lists": query_lists,
        "query_vectors": vectors,
        "middle_rows": middle_rows[query_lists],
        "imbalance": float(shape.nlist * np.sum(sizes.astype(np.float64) ** 2) / float(shape.vectors) ** 2),
        "max_list": int(sizes.max()),
    }


def taxon_of_rows(shape: ScaleShape, rows: np.ndarray) -> dict[str, list[str]]:
    """Class and genus names of taxonomy-order row positions, as the SQL names them."""
    counts = species_counts(shape)
    ends = np.cumsum(counts)
    species = np.searchsorted(ends, rows, side="right")
    out: dict[str, list[str]] = {}
    for rank in ("class", "genus"):
        size = RANK_SIZES[rank]
        width = len(str(max((shape.species + size - 1) // size - 1, 1)))
        out[rank] = [f"{rank.capitalize()}{int(s) // size:0{width}d}" for s in species]
    return out


def generate(
    shape: ScaleShape, folder: Path, *, memory_limit: str = "3GB", threads: int = 2, index_only: bool = False
) -> dict[str, object]:
    layout = Layout(folder)
    started = time.perf_counter()
    index = write_index(shape, layout.index)
    logger.info("index written in %.0f s", index["seconds"])
    taxa = taxon_of_rows(shape, index.pop("middle_rows"))
    np.savez(
        layout.queries, vectors=index.pop("query_vectors"), lists=index.pop("query_lists"),
        classes=np.asarray(taxa["class"]), genera=np.asarray(taxa["genus"]),
    )  # fmt: skip
    index_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if index_only:
        return {"index": index, "index_peak_rss_mb": round(index_rss)}
    metadata = write_metadata(shape, layout.metadata, memory_limit=memory_limit, threads=threads)
    logger.info("metadata written: %s", metadata)
    info = {
        "shape": asdict(shape),
        "index": index,
        "index_peak_rss_mb": round(index_rss),
        "metadata": metadata,
        "seconds": round(time.perf_counter() - started, 1),
        "bytes": {
            "index": layout.index.stat().st_size,
            "metadata": layout.metadata.stat().st_size,
        },
    }
    layout.info.write_text(json.dumps(info, indent=2))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_data", description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--memory-limit", default="3GB", help="DuckDB's memory limit")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    parser.add_argument("--index-only", action="store_true", help="the index and queries only (no metadata)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    os.nice(0)
    shape = ScaleShape.for_vectors(args.vectors)
    info = generate(shape, args.out, memory_limit=args.memory_limit, threads=args.threads, index_only=args.index_only)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
