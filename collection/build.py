"""The collection builder: a manifest of images in, a FAISS index, a DuckDB metadata file and its sidecar out.

    python -m collection build --manifest photos.csv --embedder http://127.0.0.1:8001 --out data/
    python -m collection build --manifest rows.parquet --embeddings vectors.npy --out data/

The manifest (CSV or Parquet) has one row per image: `url` (where the image is published) and/or
`path` (a local copy to embed instead of downloading), plus any of the taxonomy and source columns
of the metadata schema, and the images' rights when known (`license`, `rights_holder`, `rights`, or
their Darwin Core names: services/search/metadata.py RIGHTS_COLUMNS). Images are embedded by the
embedder service, as the search will embed queries, so the index and the queries always share one
model and one preprocessing; or the vectors come ready-made (`--embeddings`, a .npy of one row per manifest row).

Embedding is the slow part and is resumable: vectors are saved in chunks under
`OUT/.building/embedding/`, and running the same command again carries on from the last chunk.
The index type follows the collection's size (exact below 100,000 vectors, IVF with PQ codes
above) unless `--index` says otherwise; it is trained on a sample and filled in chunks. The
metadata is written in the optimised form: URL prefixes split out, ENUM types for the
low-cardinality columns, rows sorted by taxonomy, a unique index on `id`, and the lookup sidecar.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import faiss
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from tqdm import tqdm

from collection.sidecar import SidecarError, write_sidecar
from services.common.vocabulary import FILTER_RANKS, RANKS
from services.search.index import AUTO_HNSW_FROM_NLIST, hnsw_over_centroids
from services.search.lookup import default_sidecar_path
from services.search.metadata import RIGHTS_FIELDS, rights_columns
from services.search.settings import INDEX_FILE, METADATA_FILE, MILVUS_COLLECTION

logger = logging.getLogger(__name__)

USER_AGENT = "bioclip-image-search-builder/0.1 (+https://github.com/imageomics/bioclip-image-search)"
TEXT_COLUMNS = (*FILTER_RANKS, "source_dataset", "source_id", "publisher", "img_type", "basisOfRecord")
# Few distinct values (kingdom .. family, and the source columns): stored as DuckDB ENUMs (a byte or two per
# row instead of a string).
ENUM_COLUMNS = (*RANKS[: RANKS.index("genus")], "source_dataset", "publisher", "img_type", "basisOfRecord")
TAXONOMY_ORDER = RANKS
EXACT_BELOW = 100_000
MAX_PREFIXES = 65_535
CHUNK_ROWS = 4096
ADD_CHUNK = 100_000
TRAIN_SAMPLE_MAX = 1_000_000


class BuildError(RuntimeError):
    """The input cannot make a collection; the message says why."""


@dataclass
class Embedded:
    rows: list[dict[str, Any]]
    vectors: np.ndarray  # (rows, dim) float32; a memory map of the saved chunks for large inputs
    skipped: list[tuple[int, str]]


def read_manifest(path: Path, *, needs_images: bool = True) -> list[dict[str, Any]]:
    if not path.is_file():
        raise BuildError(f"no manifest at {path}")
    if path.suffix.lower() == ".parquet":
        table = pq.read_table(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        convert = pa_csv.ConvertOptions(strings_can_be_null=True, column_types={"source_id": pa.string()})
        table = pa_csv.read_csv(path, parse_options=pa_csv.ParseOptions(delimiter=delimiter), convert_options=convert)
    else:
        raise BuildError(f"{path}: a manifest is .csv, .tsv or .parquet")
    if needs_images and "url" not in table.column_names and "path" not in table.column_names:
        raise BuildError(f"{path}: the manifest needs a `url` or a `path` column")
    rows = table.to_pylist()
    if not rows:
        raise BuildError(f"{path}: the manifest has no rows")
    return rows


def _load_image(row: dict[str, Any], base: Path, client: httpx.Client) -> bytes:
    local = row.get("path")
    if local:
        file = Path(local) if Path(local).is_absolute() else base / local
        return file.read_bytes()
    response = client.get(row["url"])
    response.raise_for_status()
    return response.content


def _embed_batch(client: httpx.Client, embedder: str, images: list[tuple[int, bytes]]) -> np.ndarray:
    files = [("images", (f"row-{index}", data, "application/octet-stream")) for index, data in images]
    response = client.post(f"{embedder}/v1/embed/image", files=files)
    if response.status_code >= 400:
        raise httpx.HTTPStatusError(response.text, request=response.request, response=response)
    return np.asarray(response.json()["vectors"], dtype=np.float32)


def _embed_rows(
    client: httpx.Client, embedder: str, rows: list[dict[str, Any]], indices: range, base: Path
) -> tuple[list[int], list[np.ndarray], list[tuple[int, str]]]:
    """One batch: (kept row indices, their vectors, skipped rows with reasons)."""
    kept: list[int] = []
    vectors: list[np.ndarray] = []
    skipped: list[tuple[int, str]] = []
    batch: list[tuple[int, bytes]] = []
    for index in indices:
        try:
            batch.append((index, _load_image(rows[index], base, client)))
        except (OSError, httpx.HTTPError) as exc:
            skipped.append((index, f"could not read the image: {exc}"))
    if not batch:
        return kept, vectors, skipped
    try:
        found = _embed_batch(client, embedder, batch)
        pairs = list(zip(batch, found, strict=True))
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code >= 500:
            raise BuildError(f"the embedder failed: {exc.response.status_code} {exc.response.text}") from exc
        # One bad image refuses the whole batch: embed the batch one by one to keep the rest.
        pairs = []
        for item in batch:
            try:
                pairs.append((item, _embed_batch(client, embedder, [item])[0]))
            except httpx.HTTPStatusError as single:
                skipped.append((item[0], single.response.text))
    except httpx.TransportError as exc:
        raise BuildError(f"the embedder at {embedder} could not be reached: {exc}") from exc
    for (index, _), vector in pairs:
        kept.append(index)
        vectors.append(vector)
    return kept, vectors, skipped


def manifest_fingerprint(rows: list[dict[str, Any]]) -> str:
    """What ties saved embeddings to a manifest: every row's url and path, in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row.get('url') or ''}\t{row.get('path') or ''}\n".encode())
    return digest.hexdigest()


def _check_saved(work: Path, rows: list[dict[str, Any]], chunk_rows: int) -> None:
    state_file = work / "state.json"
    state = {"rows": len(rows), "fingerprint": manifest_fingerprint(rows), "chunk_rows": chunk_rows}
    if state_file.is_file():
        saved = json.loads(state_file.read_text())
        if saved.get("rows") != len(rows):
            raise BuildError(
                f"the manifest has {len(rows)} rows but the embeddings saved in {work} by an earlier run are for "
                f"{saved.get('rows')} rows; use the same manifest, or pass --restart to embed from scratch"
            )
        if saved.get("fingerprint") != state["fingerprint"] or saved.get("chunk_rows") != chunk_rows:
            raise BuildError(
                f"the manifest's images differ from those embedded in {work} by an earlier run; use the same "
                "manifest (and --chunk-rows), or pass --restart to embed from scratch"
            )
        logger.info("resuming: embeddings saved in %s are reused", work)
    else:
        work.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(state))


def embed_manifest(
    rows: list[dict[str, Any]],
    *,
    embedder: str,
    base: Path,
    work: Path,
    batch_size: int = 16,
    chunk_rows: int = CHUNK_ROWS,
    timeout: float = 120.0,
) -> Embedded:
    """Embed every row's image through the embedder, saving each chunk of rows; saved chunks are not redone.

    Rows whose image fails are skipped and reported.
    """
    _check_saved(work, rows, chunk_rows)
    chunk_starts = range(0, len(rows), chunk_rows)
    limits = httpx.Limits(max_connections=8)
    bar = tqdm(total=len(rows), desc="embedding", unit="image", file=sys.stderr)
    with httpx.Client(timeout=timeout, limits=limits, headers={"User-Agent": USER_AGENT}) as client:
        for start in chunk_starts:
            chunk_file = work / f"chunk-{start:012d}.npz"
            stop = min(start + chunk_rows, len(rows))
            if chunk_file.is_file():
                bar.update(stop - start)
                continue
            kept: list[int] = []
            vectors: list[np.ndarray] = []
            skipped: list[tuple[int, str]] = []
            for batch_start in range(start, stop, batch_size):
                batch = range(batch_start, min(batch_start + batch_size, stop))
                found = _embed_rows(client, embedder, rows, batch, base)
                kept += found[0]
                vectors += found[1]
                skipped += found[2]
                bar.update(len(batch))
            partial = chunk_file.with_suffix(".partial.npz")
            np.savez(
                partial,
                kept=np.asarray(kept, dtype=np.int64),
                vectors=np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32),
                skipped=np.asarray([index for index, _ in skipped], dtype=np.int64),
                reasons=np.asarray([reason for _, reason in skipped], dtype=str),
            )
            partial.replace(chunk_file)
    bar.close()
    return _assemble(rows, work, chunk_starts)


def _assemble(rows: list[dict[str, Any]], work: Path, chunk_starts: range) -> Embedded:
    """The saved chunks, in row order, as one memory-mapped array (large inputs need not fit in RAM)."""
    kept: list[int] = []
    skipped: list[tuple[int, str]] = []
    dim = 0
    for start in chunk_starts:
        with np.load(work / f"chunk-{start:012d}.npz") as chunk:
            kept += chunk["kept"].tolist()
            skipped += list(zip(chunk["skipped"].tolist(), chunk["reasons"].tolist(), strict=True))
            if len(chunk["kept"]):
                dim = int(chunk["vectors"].shape[1])
    if not kept:
        raise BuildError("no image in the manifest could be embedded")
    vectors = np.lib.format.open_memmap(work / "vectors.npy", mode="w+", dtype=np.float32, shape=(len(kept), dim))
    filled = 0
    for start in chunk_starts:
        with np.load(work / f"chunk-{start:012d}.npz") as chunk:
            count = len(chunk["kept"])
            if count:
                vectors[filled : filled + count] = chunk["vectors"]
                filled += count
    vectors.flush()
    return Embedded(rows=[rows[index] for index in kept], vectors=vectors, skipped=skipped)


def load_embeddings(rows: list[dict[str, Any]], path: Path) -> Embedded:
    """Ready-made vectors, one per manifest row in the same order; any disagreement in count is refused."""
    try:
        vectors = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise BuildError(f"could not read the embeddings at {path}: {exc}") from exc
    if vectors.ndim != 2:
        raise BuildError(f"{path}: embeddings must be a 2-d array (rows x dim), not shape {vectors.shape}")
    if len(vectors) != len(rows):
        raise BuildError(
            f"the manifest has {len(rows)} rows but {path} holds {len(vectors)} embeddings; they must correspond "
            "row for row (the same count, in the same order)"
        )
    return Embedded(rows=rows, vectors=vectors, skipped=[])


def choose_index(count: int, dim: int, kind: str) -> str:
    """A FAISS factory string: exact search for small collections, IVF with PQ codes above."""
    if kind == "flat" or (kind == "auto" and count < EXACT_BELOW):
        return "Flat"
    if kind in ("auto", "ivfpq"):
        nlist = max(1, min(65_536, 2 ** round(math.log2(4 * math.sqrt(count)))))
        codes = next(m for m in (16, 12, 8, 4, 2, 1) if dim % m == 0)
        return f"IVF{nlist},PQ{codes}"
    return kind  # any other FAISS factory string, taken as given


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(vectors)) or np.any(norms == 0):
        raise BuildError("an embedding is all zeros or not finite")
    return vectors / norms


def _chunks(count: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, size):
        yield start, min(start + size, count)


def write_index(vectors: np.ndarray, factory: str, path: Path, *, progress: bool = False) -> None:
    """Train on a sample, add in chunks (L2-normalised), write. `vectors` may be a memory map."""
    count, dim = vectors.shape
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise BuildError(f"FAISS cannot make an index from {factory!r}: {exc}") from exc
    if not index.is_trained:
        size = min(count, TRAIN_SAMPLE_MAX)
        picks = np.sort(np.random.default_rng(0).choice(count, size=size, replace=False))
        started = time.perf_counter()
        index.train(_normalised(vectors[picks]))
        logger.info("trained %s on %d vectors in %.1f s", factory, size, time.perf_counter() - started)
    ivf = _ivf_of(index)
    flat = None
    if (
        ivf is not None
        and ivf.nlist >= AUTO_HNSW_FROM_NLIST
        and isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat)
    ):
        # Assigning each vector to its list through a graph over the centroids instead of scanning them
        # all; the file keeps the flat quantizer (the search service upgrades it when it opens the file).
        graph = hnsw_over_centroids(ivf, m=32, ef_construction=40, cache_dir=None)
        flat, ivf.own_fields, ivf.quantizer = ivf.quantizer, False, graph
    try:
        for start, stop in tqdm(
            list(_chunks(count, ADD_CHUNK)), desc="adding", unit="chunk", file=sys.stderr, disable=not progress
        ):
            index.add(_normalised(vectors[start:stop]))
    finally:
        if flat is not None and ivf is not None:
            ivf.quantizer, ivf.own_fields = flat, True
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))


def _ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def split_url(url: str) -> tuple[str, str]:
    """`https://host/photos/1/a.jpg` -> (`https://host/photos`, `/1/a.jpg`): few prefixes, short suffixes."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    rest = url[len(origin) :]
    segments = rest.split("/")
    if len(segments) > 2 and segments[1]:
        return origin + "/" + segments[1], "/" + "/".join(segments[2:])
    return origin, rest or "/"


def metadata_table(rows: list[dict[str, Any]]) -> tuple[pa.Table, pa.Table]:
    """The `metadata` and `url_prefixes` tables of the DESIGN.md schema, ids in row order."""
    prefixes: dict[str, int] = {}
    columns: dict[str, list[Any]] = {name: [] for name in ("id", "uuid", *TEXT_COLUMNS)}
    columns |= {"url_prefix_id": [], "identifier_suffix": [], "has_url": [], "in_bioclip2_training": []}
    # The images' rights, kept when the manifest names them (any of the metadata's accepted names), written
    # under the record's field names.
    rights = rights_columns({name for row in rows for name in row})
    columns |= {field: [] for field in rights.values()}
    for record_id, row in enumerate(rows):
        columns["id"].append(record_id)
        columns["uuid"].append(str(row.get("uuid") or uuid.uuid4()))
        for name in TEXT_COLUMNS:
            value = row.get(name)
            columns[name].append(None if value is None or value == "" else str(value))
        url = row.get("url") or None
        if url:
            prefix, suffix = split_url(str(url))
            prefix_id = prefixes.setdefault(prefix, len(prefixes))
            if prefix_id >= MAX_PREFIXES:
                raise BuildError(f"more than {MAX_PREFIXES} distinct URL prefixes")
            columns["url_prefix_id"].append(prefix_id)
            columns["identifier_suffix"].append(suffix)
        else:
            columns["url_prefix_id"].append(None)
            columns["identifier_suffix"].append(None)
        columns["has_url"].append(url is not None)
        columns["in_bioclip2_training"].append(bool(row.get("in_bioclip2_training") or False))
        for column, field in rights.items():
            value = row.get(column)
            columns[field].append(None if value is None or value == "" else str(value))
    metadata = pa.table(columns)
    url_prefixes = pa.table(
        {"prefix_id": list(prefixes.values()), "prefix": list(prefixes.keys())},
    )
    return metadata, url_prefixes


def write_metadata(rows: list[dict[str, Any]], path: Path, *, sidecar: bool = True) -> None:
    """The metadata file in the optimised form (see the module doc), and its lookup sidecar beside it."""
    metadata, url_prefixes = metadata_table(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    try:
        con.register("metadata_in", metadata)
        con.register("prefixes_in", url_prefixes)
        types: dict[str, str] = {name: "VARCHAR" for name in TEXT_COLUMNS}
        for name in ENUM_COLUMNS:
            (distinct,) = con.execute(f'SELECT count(DISTINCT "{name}") FROM metadata_in').fetchall()[0]
            if distinct:  # an ENUM needs at least one value
                con.execute(
                    f'CREATE TYPE "{name}_enum" AS ENUM '
                    f'(SELECT DISTINCT "{name}"::VARCHAR FROM metadata_in WHERE "{name}" IS NOT NULL ORDER BY 1)'
                )
                types[name] = f'"{name}_enum"'
        text = ", ".join(f'"{name}"::VARCHAR::{types[name]} AS "{name}"' for name in TEXT_COLUMNS)
        # Sorted by taxonomy: long runs compress well and scans by taxon touch few row groups. Lookups by
        # id do not depend on this order (the id index and the sidecar are addressed by id).
        order = ", ".join(f'"{name}"' for name in TAXONOMY_ORDER)
        rights = "".join(f', "{name}"::VARCHAR AS "{name}"' for name in RIGHTS_FIELDS if name in metadata.column_names)
        con.execute(
            f"""CREATE TABLE metadata AS SELECT id::INTEGER AS id, uuid::UUID AS uuid, {text},
                url_prefix_id::USMALLINT AS url_prefix_id, identifier_suffix::VARCHAR AS identifier_suffix,
                has_url::BOOLEAN AS has_url, in_bioclip2_training::BOOLEAN AS in_bioclip2_training{rights}
            FROM metadata_in ORDER BY {order}, id"""
        )
        con.execute(
            "CREATE TABLE url_prefixes AS SELECT prefix_id::USMALLINT AS prefix_id, prefix::VARCHAR AS prefix "
            "FROM prefixes_in ORDER BY prefix_id"
        )
        con.execute("CREATE UNIQUE INDEX metadata_id ON metadata(id)")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    if sidecar:
        write_sidecar(path, default_sidecar_path(path))


def build_collection(
    manifest: Path,
    *,
    embedder: str | None,
    out: Path,
    index_kind: str = "auto",
    batch_size: int = 16,
    embeddings: Path | None = None,
    chunk_rows: int = CHUNK_ROWS,
    restart: bool = False,
    milvus: str | None = None,
    milvus_collection: str = MILVUS_COLLECTION,
) -> dict[str, Any]:
    """Build in OUT/.building and move the files into place only when all are written; with `milvus` (a Milvus
    URI), load the collection into it too, from the exact vectors (collection/milvus_load.py)."""
    started = time.perf_counter()
    rows = read_manifest(manifest, needs_images=embeddings is None)
    staging = out / ".building"
    work = staging / "embedding"
    if restart:
        shutil.rmtree(staging, ignore_errors=True)
    if embeddings is not None:
        embedded = load_embeddings(rows, embeddings)
    else:
        if embedder is None:
            raise BuildError("give --embedder (to embed the images) or --embeddings (ready-made vectors)")
        embedded = embed_manifest(
            rows, embedder=embedder.rstrip("/"), base=manifest.parent, work=work, batch_size=batch_size,
            chunk_rows=chunk_rows,
        )  # fmt: skip
    factory = choose_index(len(embedded.rows), embedded.vectors.shape[1], index_kind)
    outputs = (INDEX_FILE, METADATA_FILE, default_sidecar_path(METADATA_FILE))
    for relative in outputs:
        target = staging / relative
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    write_index(embedded.vectors, factory, staging / INDEX_FILE, progress=True)
    write_metadata(embedded.rows, staging / METADATA_FILE)
    for relative in outputs:
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            shutil.rmtree(target)
        (staging / relative).replace(target)
    loaded = None
    if milvus is not None:
        from collection.milvus_load import load_collection

        loaded = load_collection(
            metadata=out / METADATA_FILE, uri=milvus, collection=milvus_collection, vectors=embedded.vectors
        )
    del embedded.vectors  # the memory map of work/vectors.npy, before its folder goes
    shutil.rmtree(staging, ignore_errors=True)
    for index, reason in embedded.skipped:
        logger.warning("skipped manifest row %d: %s", index + 1, reason)
    return {
        "records": len(embedded.rows),
        "skipped": len(embedded.skipped),
        "dim": int(faiss.read_index(str(out / INDEX_FILE), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY).d),
        "index": factory,
        "seconds": round(time.perf_counter() - started, 1),
        "out": str(out),
        "milvus": loaded,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", type=Path, required=True, help="CSV, TSV or Parquet manifest")
    parser.add_argument("--embedder", default="http://127.0.0.1:8001", help="embedder service URL")
    parser.add_argument(
        "--embeddings", type=Path, help="ready-made vectors (.npy, one row per manifest row): skip the embedder"
    )
    parser.add_argument("--out", type=Path, required=True, help="collection folder to write")
    parser.add_argument("--index", default="auto", help="auto, flat, ivfpq, or a FAISS factory string")
    parser.add_argument("--batch-size", type=int, default=16, help="images per embedder request")
    parser.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS, help="manifest rows per saved (resumable) chunk")
    parser.add_argument("--restart", action="store_true", help="discard embeddings saved by an earlier run")
    parser.add_argument("--milvus", help="also load into Milvus: a server URL or a milvus-lite .db path")
    parser.add_argument("--milvus-collection", default=MILVUS_COLLECTION, help="the Milvus collection's name")


def run(args: argparse.Namespace) -> int:
    """Build the collection; a failure is a message on stderr and exit status 1."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        summary = build_collection(
            args.manifest, embedder=args.embedder, out=args.out, index_kind=args.index, batch_size=args.batch_size,
            embeddings=args.embeddings, chunk_rows=args.chunk_rows, restart=args.restart, milvus=args.milvus,
            milvus_collection=args.milvus_collection,
        )  # fmt: skip
    except (BuildError, SidecarError, duckdb.Error, OSError, RuntimeError) as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"built {summary['records']} records ({summary['skipped']} skipped), {summary['dim']}-d, "
        f"index {summary['index']}, in {summary['seconds']} s -> {summary['out']}"
    )
    return 0
