"""The collection builder: a manifest of images in, a FAISS index and a DuckDB metadata file out.

    python -m services.search.build --manifest photos.csv --embedder http://127.0.0.1:8001 --out data/

The manifest (CSV or Parquet) has one row per image: `url` (where the image is published) and/or
`path` (a local copy to embed instead of downloading), plus any of the taxonomy and source columns
of the metadata schema. Images are embedded by the embedder service, as the search will embed
queries, so the index and the queries always share one model and one preprocessing.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import time
import uuid
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

from services.search.settings import INDEX_FILE, METADATA_FILE

logger = logging.getLogger(__name__)

USER_AGENT = "bioclip-image-search-builder/0.1 (+https://github.com/imageomics/bioclip-image-search)"
TEXT_COLUMNS = (
    "kingdom", "phylum", "class", "order", "family", "genus", "species", "common_name",
    "source_dataset", "source_id", "publisher", "img_type", "basisOfRecord",
)  # fmt: skip
EXACT_BELOW = 100_000
MAX_PREFIXES = 65_535


class BuildError(RuntimeError):
    """The input cannot make a collection; the message says why."""


@dataclass
class Embedded:
    rows: list[dict[str, Any]]
    vectors: np.ndarray
    skipped: list[tuple[int, str]]


def read_manifest(path: Path) -> list[dict[str, Any]]:
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
    if "url" not in table.column_names and "path" not in table.column_names:
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


def embed_manifest(
    rows: list[dict[str, Any]], *, embedder: str, base: Path, batch_size: int = 16, timeout: float = 120.0
) -> Embedded:
    """Embed every row's image through the embedder; rows whose image fails are skipped and reported."""
    kept: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []
    skipped: list[tuple[int, str]] = []
    limits = httpx.Limits(max_connections=8)
    with httpx.Client(timeout=timeout, limits=limits, headers={"User-Agent": USER_AGENT}) as client:
        for start in tqdm(range(0, len(rows), batch_size), desc="embedding", unit="batch", file=sys.stderr):
            batch: list[tuple[int, bytes]] = []
            for index in range(start, min(start + batch_size, len(rows))):
                try:
                    batch.append((index, _load_image(rows[index], base, client)))
                except (OSError, httpx.HTTPError) as exc:
                    skipped.append((index, f"could not read the image: {exc}"))
            if not batch:
                continue
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
                kept.append(rows[index])
                vectors.append(vector)
    if not kept:
        raise BuildError("no image in the manifest could be embedded")
    return Embedded(rows=kept, vectors=np.stack(vectors), skipped=skipped)


def choose_index(count: int, dim: int, kind: str) -> str:
    """A FAISS factory string: exact search for small collections, IVF with PQ codes above."""
    if kind == "flat" or (kind == "auto" and count < EXACT_BELOW):
        return "Flat"
    if kind in ("auto", "ivfpq"):
        nlist = max(1, min(65_536, 2 ** round(math.log2(4 * math.sqrt(count)))))
        codes = next(m for m in (16, 12, 8, 4, 2, 1) if dim % m == 0)
        return f"IVF{nlist},PQ{codes}"
    return kind  # any other FAISS factory string, taken as given


def write_index(vectors: np.ndarray, factory: str, path: Path) -> None:
    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        sample = vectors[np.random.default_rng(0).permutation(len(vectors))[: 256 * 1024]]
        index.train(sample)
    for start in range(0, len(vectors), 100_000):
        index.add(vectors[start : start + 100_000])
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))


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
    metadata = pa.table(columns)
    url_prefixes = pa.table(
        {"prefix_id": list(prefixes.values()), "prefix": list(prefixes.keys())},
    )
    return metadata, url_prefixes


def write_metadata(rows: list[dict[str, Any]], path: Path) -> None:
    metadata, url_prefixes = metadata_table(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    try:
        con.register("metadata_in", metadata)
        con.register("prefixes_in", url_prefixes)
        text = ", ".join(f'"{name}"::VARCHAR AS "{name}"' for name in TEXT_COLUMNS)
        con.execute(
            f"""CREATE TABLE metadata AS SELECT id::INTEGER AS id, uuid::UUID AS uuid, {text},
                url_prefix_id::USMALLINT AS url_prefix_id, identifier_suffix::VARCHAR AS identifier_suffix,
                has_url::BOOLEAN AS has_url, in_bioclip2_training::BOOLEAN AS in_bioclip2_training
            FROM metadata_in ORDER BY id"""
        )
        con.execute(
            "CREATE TABLE url_prefixes AS SELECT prefix_id::USMALLINT AS prefix_id, prefix::VARCHAR AS prefix "
            "FROM prefixes_in ORDER BY prefix_id"
        )
        con.execute("CREATE UNIQUE INDEX metadata_id ON metadata(id)")
        con.execute("CHECKPOINT")
    finally:
        con.close()


def build_collection(
    manifest: Path, *, embedder: str, out: Path, index_kind: str = "auto", batch_size: int = 16
) -> dict[str, Any]:
    """Build into a temporary folder and move the files into place only when both are written."""
    started = time.perf_counter()
    rows = read_manifest(manifest)
    embedded = embed_manifest(rows, embedder=embedder.rstrip("/"), base=manifest.parent, batch_size=batch_size)
    factory = choose_index(len(embedded.rows), embedded.vectors.shape[1], index_kind)
    staging = out / ".building"
    shutil.rmtree(staging, ignore_errors=True)
    write_index(embedded.vectors, factory, staging / INDEX_FILE)
    write_metadata(embedded.rows, staging / METADATA_FILE)
    for relative in (INDEX_FILE, METADATA_FILE):
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (staging / relative).replace(out / relative)
    shutil.rmtree(staging, ignore_errors=True)
    for index, reason in embedded.skipped:
        logger.warning("skipped manifest row %d: %s", index + 1, reason)
    return {
        "records": len(embedded.rows),
        "skipped": len(embedded.skipped),
        "dim": int(embedded.vectors.shape[1]),
        "index": factory,
        "seconds": round(time.perf_counter() - started, 1),
        "out": str(out),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.search.build", description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", type=Path, required=True, help="CSV, TSV or Parquet manifest")
    parser.add_argument("--embedder", default="http://127.0.0.1:8001", help="embedder service URL")
    parser.add_argument("--out", type=Path, required=True, help="collection folder to write")
    parser.add_argument("--index", default="auto", help="auto, flat, ivfpq, or a FAISS factory string")
    parser.add_argument("--batch-size", type=int, default=16, help="images per embedder request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        summary = build_collection(
            args.manifest, embedder=args.embedder, out=args.out, index_kind=args.index, batch_size=args.batch_size
        )
    except BuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"built {summary['records']} records ({summary['skipped']} skipped), {summary['dim']}-d, "
        f"index {summary['index']}, in {summary['seconds']} s -> {summary['out']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
