"""The synthetic TreeOfLife-shaped collection `make bench-search` measures, built once under var/bench/search.

Vectors: 768-d points on a low-dimensional clustered structure (as real embeddings are), in an
IVF65536,PQ16 index whose coarse centroids are set from the generating clusters rather than
trained (k-means over 65,536 centroids would take hours on two cores); PQ16 is trained on a small
sample of residuals, and vectors go straight into their lists with `add_core`. Exact top-k of the
benchmark queries is computed in the same pass, for recall.

Metadata: the DESIGN.md schema, generated inside DuckDB with SQL (range, hash, modulo onto a
species list), written twice: sorted by taxonomy (the original layout) and sorted by id.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import faiss
import numpy as np

from collection.sidecar import write_sidecar
from services.common.vocabulary import RANKS

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "var" / "bench" / "search"

DIM = 768
LATENT = 48
CHUNK = 50_000
TRUTH_K = 100
SPECIES = 200_000


@dataclass(frozen=True)
class Shape:
    vectors: int = 1_000_000
    nlist: int = 65_536
    pq_m: int = 16
    rows: int = 20_000_000
    queries: int = 200


@dataclass(frozen=True)
class BenchData:
    folder: Path
    shape: Shape

    @property
    def index(self) -> Path:
        return self.folder / f"ivf{self.shape.nlist}_pq{self.shape.pq_m}_{self.shape.vectors}.index"

    @property
    def queries(self) -> Path:
        return self.folder / f"queries_{self.shape.vectors}.npy"

    @property
    def truth(self) -> Path:
        return self.folder / f"truth_{self.shape.vectors}.npy"

    @property
    def quantizer_cache(self) -> Path:
        return self.folder / "quantizer-cache"

    def metadata(self, order: str) -> Path:
        return self.folder / f"metadata_{order}_{self.shape.rows}.duckdb"

    def sidecar(self, order: str) -> Path:
        return self.folder / f"metadata_{order}_{self.shape.rows}.lookup"


class _Generator:
    """Deterministic clustered vectors: genus centres -> 32 list centroids each -> points."""

    def __init__(self, shape: Shape) -> None:
        rng = np.random.default_rng(12345)
        self.shape = shape
        genera = max(1, shape.nlist // 32)
        centres = rng.standard_normal((genera, LATENT), dtype=np.float32)
        self.latent_centroids = centres[np.arange(shape.nlist) % genera] + 0.2 * rng.standard_normal(
            (shape.nlist, LATENT), dtype=np.float32
        )
        # Orthonormal rows: the 768-d geometry is the latent one plus a little isotropic noise.
        basis, _ = np.linalg.qr(rng.standard_normal((DIM, LATENT), dtype=np.float32))
        self.projection = np.ascontiguousarray(basis.T.astype(np.float32))
        self.centroids = self._lift(self.latent_centroids, rng, noise=0.0)
        self.ids = np.sort(rng.choice(shape.rows, size=shape.vectors, replace=False)).astype(np.int64)

    def _lift(self, latent: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
        vectors = latent @ self.projection
        if noise:
            vectors += noise * rng.standard_normal(vectors.shape, dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors

    def points(self, lists: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        latent = self.latent_centroids[lists] + 0.25 * rng.standard_normal((len(lists), LATENT), dtype=np.float32)
        return self._lift(latent, rng, noise=0.05)

    def chunk(self, number: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start = number * CHUNK
        stop = min(start + CHUNK, self.shape.vectors)
        lists = np.random.default_rng(10_000 + number).integers(0, self.shape.nlist, size=stop - start)
        return self.ids[start:stop], lists.astype(np.int64), self.points(lists, seed=20_000 + number)


def ensure_index(data: BenchData) -> None:
    """Write the IVF-PQ index, the queries and their exact top-k, unless already there."""
    if data.index.is_file() and data.queries.is_file() and data.truth.is_file():
        return
    data.folder.mkdir(parents=True, exist_ok=True)
    shape = data.shape
    started = time.perf_counter()
    gen = _Generator(shape)
    quantizer = faiss.IndexFlatIP(DIM)
    quantizer.add(gen.centroids)
    index = faiss.IndexIVFPQ(quantizer, DIM, shape.nlist, shape.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    # PQ on residuals of a small sample; the coarse centroids are the generating ones, not trained.
    _, sample_lists, sample = gen.chunk(0)
    residuals = sample[:40_000] - gen.centroids[sample_lists[:40_000]]
    index.pq.train(np.ascontiguousarray(residuals))
    index.is_trained = True
    logger.info("PQ%d trained in %.0f s", shape.pq_m, time.perf_counter() - started)
    # Queries: new points from the same distribution, not in the collection.
    query_lists = np.random.default_rng(7).integers(0, shape.nlist, size=shape.queries)
    queries = gen.points(query_lists, seed=99)
    best_sims = np.full((shape.queries, TRUTH_K), -np.inf, dtype=np.float32)
    best_ids = np.full((shape.queries, TRUTH_K), -1, dtype=np.int64)
    chunks = (shape.vectors + CHUNK - 1) // CHUNK
    agree = 0.0
    for number in range(chunks):
        ids, lists, points = gen.chunk(number)
        if number == 0:
            # How often the generating list is the nearest centroid (the assignment add_core trusts).
            _, nearest = quantizer.search(points[:2000], 1)
            agree = float(np.mean(nearest[:, 0] == lists[:2000]))
        index.add_core(
            len(points), faiss.swig_ptr(points), faiss.swig_ptr(ids), faiss.swig_ptr(np.ascontiguousarray(lists))
        )
        sims = queries @ points.T
        merged_sims = np.concatenate([best_sims, sims], axis=1)
        merged_ids = np.concatenate([best_ids, np.broadcast_to(ids, sims.shape)], axis=1)
        top = np.argpartition(-merged_sims, TRUTH_K - 1, axis=1)[:, :TRUTH_K]
        best_sims = np.take_along_axis(merged_sims, top, axis=1)
        best_ids = np.take_along_axis(merged_ids, top, axis=1)
        if number % 5 == 0:
            logger.info("vectors: chunk %d/%d, %.0f s", number + 1, chunks, time.perf_counter() - started)
    order = np.argsort(-best_sims, axis=1)
    np.save(data.truth, np.take_along_axis(best_ids, order, axis=1))
    np.save(data.queries, queries)
    faiss.write_index(index, str(data.index))
    info = {"generating_list_is_nearest": agree, "seconds": round(time.perf_counter() - started, 1)}
    (data.folder / "index_info.json").write_text(json.dumps(info))
    logger.info("index written: %s (%s)", data.index, info)


METADATA_SQL = """
CREATE TEMP TABLE sp AS
SELECT s AS sp, 'Kingdom' || (s // 76800) AS kingdom, 'Phylum' || (s // 12800) AS phylum,
       'Class' || (s // 3200) AS class,
       CASE WHEN s // 400 = 3 THEN 'Lepidoptera' ELSE 'Order' || (s // 400) END AS "order",
       'Family' || (s // 40) AS family, 'Genus' || (s // 5) AS genus, 'epithet' || s AS species,
       CASE WHEN s % 2 = 0 THEN 'common ' || s END AS common_name
FROM range({species}) t(s);
CREATE TYPE kingdom_t AS ENUM (SELECT DISTINCT kingdom FROM sp ORDER BY 1);
CREATE TYPE phylum_t AS ENUM (SELECT DISTINCT phylum FROM sp ORDER BY 1);
CREATE TYPE class_t AS ENUM (SELECT DISTINCT class FROM sp ORDER BY 1);
CREATE TYPE order_t AS ENUM (SELECT DISTINCT "order" FROM sp ORDER BY 1);
CREATE TYPE family_t AS ENUM (SELECT DISTINCT family FROM sp ORDER BY 1);
CREATE TYPE source_dataset_t AS ENUM ('bioscan', 'eol', 'fathomnet', 'gbif');
CREATE TYPE publisher_t AS ENUM (SELECT 'iNaturalist.org' UNION ALL SELECT 'Publisher ' || i FROM range(300) t(i));
CREATE TYPE img_type_t AS ENUM ('Image', 'StillImage');
CREATE TYPE basisOfRecord_t AS ENUM ('HUMAN_OBSERVATION', 'PRESERVED_SPECIMEN');
CREATE TABLE url_prefixes AS
SELECT i::USMALLINT AS prefix_id, 'https://host' || i || '.example.org/photos' AS prefix FROM range(50) t(i);
CREATE TABLE metadata AS
WITH base AS (SELECT i AS id, hash(i) AS h, hash(i + 7919) AS h2 FROM range({rows}) t(i)),
draws AS (
  SELECT id, h, h2,
         -- Skewed species frequencies, as in the real collection: a few species hold many rows.
         floor({species} * pow((h % 1000003) / 1000003.0, 2.5))::INTEGER AS spi,
         h2 % 100 AS r_source, (h2 // 100) % 100 AS r_publisher, (h2 // 10000) % 100 AS r_url,
         (h2 // 1000000) % 100 AS r_misc
  FROM base)
SELECT id::INTEGER AS id, gen_random_uuid() AS uuid,
       sp.kingdom::kingdom_t AS kingdom, sp.phylum::phylum_t AS phylum, sp.class::class_t AS class,
       sp."order"::order_t AS "order", sp.family::family_t AS family,
       sp.genus, sp.species, sp.common_name,
       (CASE WHEN r_source < 80 THEN 'gbif' WHEN r_source < 95 THEN 'eol' WHEN r_source < 99 THEN 'bioscan'
             ELSE 'fathomnet' END)::source_dataset_t AS source_dataset,
       (1000000000 + id // 2)::VARCHAR AS source_id,
       (CASE WHEN r_source < 80 AND r_publisher < 25 THEN 'iNaturalist.org'
             ELSE 'Publisher ' || (h2 % 300) END)::publisher_t AS publisher,
       (CASE WHEN r_misc < 90 THEN 'StillImage' ELSE 'Image' END)::img_type_t AS img_type,
       (CASE WHEN r_misc < 70 THEN 'HUMAN_OBSERVATION' ELSE 'PRESERVED_SPECIMEN' END)::basisOfRecord_t
           AS "basisOfRecord",
       CASE WHEN r_url < 50 THEN (h % 50)::USMALLINT END AS url_prefix_id,
       CASE WHEN r_url < 50 THEN '/' || id || '/original.jpg' END AS identifier_suffix,
       r_url < 50 AS has_url, r_misc < 85 AS in_bioclip2_training
FROM draws JOIN sp ON draws.spi = sp.sp
ORDER BY {order_by};
CREATE UNIQUE INDEX metadata_id ON metadata(id);
CHECKPOINT;
"""

ORDERS = {"taxonomy": ", ".join(f'"{rank}"' for rank in RANKS), "id": "id"}


def ensure_metadata(data: BenchData, order: str) -> None:
    """20M rows in the real schema (the inaturalist scope matches ~10%), and the lookup sidecar."""
    path = data.metadata(order)
    if not path.is_file():
        data.folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        con = duckdb.connect(str(partial), config={"threads": 2, "memory_limit": "6GB"})
        try:
            sql = METADATA_SQL.format(species=SPECIES, rows=data.shape.rows, order_by=ORDERS[order])
            for statement in filter(str.strip, sql.split(";")):
                con.execute(statement)
        finally:
            con.close()
        partial.replace(path)
        logger.info("metadata (%s order) written in %.0f s", order, time.perf_counter() - started)
    sidecar = data.sidecar(order)
    if not (sidecar / "manifest.json").is_file():
        started = time.perf_counter()
        write_sidecar(path, sidecar)
        logger.info("lookup sidecar for %s written in %.0f s", path.name, time.perf_counter() - started)
