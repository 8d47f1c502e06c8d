"""Check a reduced precision against fp32 on your own model, photos and collection, before switching to it.

For each precision asked for, the photos are embedded in fp32 and in that precision (the same weights,
loaded the embedder's own way), and two things are reported:

- the cosine similarity of every photo's vector to its fp32 vector (min, 1st percentile, median);
- what users see: the overlap of the top-10 search results, searching the collection with the fp32 vector
  and with the reduced-precision one (|both top-10s| / 10, per photo). The collection is a FAISS index
  (`--index`, e.g. the published TreeOfLife `faiss/index.index`, searched read-only and memory-mapped), or,
  without one, an exact inner-product index of the photos' own fp32 vectors.

    make check-precision MODEL=hf-hub:imageomics/bioclip-2 PHOTOS=~/photos INDEX=data/faiss/index.index
    python -m bench.precision_check --model ViT-L-14 --checkpoint bioclip2.bin --photos ~/photos --precisions int8

Exit status 0 when every precision passes (min cosine >= --min-cosine and mean overlap >= --min-overlap),
1 otherwise; the figures are printed as a table and, with --json, written to a file.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import get_args

import faiss
import numpy as np

from services.common.images import InvalidImage, decode_image
from services.embedder.errors import ModelLoadError
from services.embedder.model import LoadedModel, load_model
from services.embedder.precision import PrecisionError, check
from services.embedder.settings import EmbedderSettings

logger = logging.getLogger(__name__)

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif"}
TOP_K = 10
MIN_OWN_COLLECTION = 3 * TOP_K  # photos needed when they are the collection searched (no --index)


@dataclass
class PrecisionQuality:
    """How close one precision's vectors and search results are to fp32's."""

    precision: str
    photos: int
    cosine_min: float
    cosine_p01: float
    cosine_median: float
    overlap_mean: float  # mean over photos of |top-k(fp32) & top-k(precision)| / k
    overlap_min: float
    k: int
    collection: str
    embed_seconds: float

    def passed(self, min_cosine: float, min_overlap: float) -> bool:
        return self.cosine_min >= min_cosine and self.overlap_mean >= min_overlap


def cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, dim) arrays of vectors."""
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cand = candidate / np.linalg.norm(candidate, axis=1, keepdims=True)
    return (ref * cand).sum(axis=1)


def exact_index(vectors: np.ndarray) -> faiss.Index:
    """An exact inner-product index of (n, dim) unit vectors; ids are row numbers."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def open_index(path: Path, nprobe: int) -> faiss.Index:
    """A FAISS index file, memory-mapped read-only where FAISS can (IVF lists, flat codes), with `nprobe` set."""
    index = None
    for flag in (faiss.IO_FLAG_MMAP, faiss.IO_FLAG_MMAP_IFC):
        try:
            index = faiss.read_index(str(path), flag | faiss.IO_FLAG_READ_ONLY)
            break
        except RuntimeError:
            continue
    if index is None:
        index = faiss.read_index(str(path))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe
    return index


def top_k_overlap(index: faiss.Index, reference: np.ndarray, candidate: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Per query row: the share of the top-k ids found with `reference` that `candidate` also finds (0..1).

    Both are (n, dim) query vectors for the same photos; the index holds the collection (built from fp32 vectors).
    """
    _, ref_ids = index.search(np.ascontiguousarray(reference, dtype=np.float32), k)
    _, cand_ids = index.search(np.ascontiguousarray(candidate, dtype=np.float32), k)
    shares = []
    for ref_row, cand_row in zip(ref_ids, cand_ids, strict=True):
        found = {int(i) for i in ref_row if i >= 0}
        shares.append(len(found & {int(i) for i in cand_row if i >= 0}) / max(1, len(found)))
    return np.asarray(shares)


def quality(
    precision: str, index: faiss.Index, collection: str, reference: np.ndarray, candidate: np.ndarray, seconds: float
) -> PrecisionQuality:
    found = cosines(reference, candidate)
    overlap = top_k_overlap(index, reference, candidate, min(TOP_K, index.ntotal))
    return PrecisionQuality(
        precision=precision,
        photos=len(found),
        cosine_min=round(float(found.min()), 6),
        cosine_p01=round(float(np.percentile(found, 1)), 6),
        cosine_median=round(float(np.median(found)), 6),
        overlap_mean=round(float(overlap.mean()), 4),
        overlap_min=round(float(overlap.min()), 4),
        k=min(TOP_K, index.ntotal),
        collection=collection,
        embed_seconds=round(seconds, 1),
    )


def read_photos(folder: Path, limit: int | None, max_pixels: int) -> list[tuple[str, bytes]]:
    """The decodable photos under `folder` (recursively, sorted by path), at most `limit`."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in PHOTO_SUFFIXES or not path.is_file():
            continue
        data = path.read_bytes()
        try:
            decode_image(data, path.name, max_pixels)
        except InvalidImage as exc:
            logger.warning("skipped %s: %s", path, exc.message)
            continue
        found.append((str(path.relative_to(folder)), data))
        if limit is not None and len(found) >= limit:
            break
    return found


def embed(model: LoadedModel, photos: list[tuple[str, bytes]], batch: int, max_pixels: int) -> np.ndarray:
    """(n, dim) unit vectors of the photos, preprocessed as the service does, in batches of `batch`."""
    vectors = []
    for start in range(0, len(photos), batch):
        images = [decode_image(data, name, max_pixels) for name, data in photos[start : start + batch]]
        vectors.append(model.embed_images(images))
    return np.concatenate(vectors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="EMBEDDER_MODEL: an hf-hub: name or an architecture")
    parser.add_argument("--checkpoint", type=Path, help="EMBEDDER_CHECKPOINT: a local weights file")
    parser.add_argument("--architecture-config", type=Path, help="EMBEDDER_ARCHITECTURE_CONFIG")
    parser.add_argument("--cache-dir", type=Path, help="EMBEDDER_CACHE_DIR: where hub weights are cached")
    parser.add_argument("--preprocessing", default="pybioclip", choices=["pybioclip", "open_clip"])
    parser.add_argument("--photos", type=Path, required=True, help="a folder of photos (searched recursively)")
    parser.add_argument("--index", type=Path, help="the collection's FAISS index; default: the photos' own")
    parser.add_argument("--nprobe", type=int, default=16, help="IVF lists visited (SEARCH_DEFAULT_NPROBE)")
    parser.add_argument("--precisions", default="int8", help="comma-separated, compared with fp32")
    parser.add_argument("--limit", type=int, help="at most this many photos")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--min-cosine", type=float, default=0.99)
    parser.add_argument("--min-overlap", type=float, default=0.9)
    parser.add_argument("--random-weights", action="store_true", help="allow an architecture without weights")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip() and p.strip() != "fp32"]
    known = get_args(EmbedderSettings.model_fields["precision"].annotation)
    if unknown := [p for p in precisions if p not in known]:
        parser.error(f"--precisions: {', '.join(unknown)} unknown; choose from {', '.join(known)}")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if not args.photos.is_dir():
        parser.error(f"--photos {args.photos}: no such folder")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logger.setLevel(logging.INFO)
    base = EmbedderSettings(
        model=args.model,
        checkpoint=args.checkpoint,
        architecture_config=args.architecture_config,
        cache_dir=args.cache_dir,
        preprocessing=args.preprocessing,
        random_weights=args.random_weights,
        precision="fp32",
    )
    photos = read_photos(args.photos, args.limit, base.max_image_pixels)
    # Without an index the collection is the photos themselves: with fewer than 3 x 10 of them each photo's top-10
    # would be most of the collection, and any precision would overlap fp32's (10 photos or fewer: always 1.0).
    needed = 2 if args.index is not None else MIN_OWN_COLLECTION
    if len(photos) < needed:
        print(
            f"{args.photos} (searched recursively): {len(photos)} decodable photo(s); at least {needed} are needed"
            + ("" if args.index is not None else " without --index (the photos are then the collection searched)"),
            file=sys.stderr,
        )
        return 2
    index, collection = None, f"the {len(photos)} photos' fp32 vectors (exact)"
    if args.index is not None:
        index, collection = open_index(args.index, args.nprobe), f"{args.index} (nprobe {args.nprobe})"
        if index.ntotal < TOP_K:
            print(f"--index {args.index} holds {index.ntotal} vectors; at least {TOP_K} are needed", file=sys.stderr)
            return 2
    import torch

    for precision in precisions:  # before anything is embedded: fp16 on a CPU cannot run at the end either
        try:
            check(precision, torch.device(base.device))
        except PrecisionError as exc:
            print(f"{precision}: {exc.render(EmbedderSettings.env_name)}", file=sys.stderr)
            return 2
    vectors: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for precision in ["fp32", *precisions]:
        torch.manual_seed(0)  # the same weights for every precision when they are random
        try:
            model = load_model(base.model_copy(update={"precision": precision}))
        except ModelLoadError as exc:
            print(f"{precision}: {exc.render(EmbedderSettings.env_name)}", file=sys.stderr)
            return 2
        if index is not None and index.d != model.dim:
            # Checked before any photo is embedded: the search would otherwise fail after all of them.
            print(
                f"--index {args.index} holds {index.d}-d vectors; {args.model} makes {model.dim}-d ones",
                file=sys.stderr,
            )
            return 2
        t0 = time.perf_counter()
        vectors[precision] = embed(model, photos, args.batch, base.max_image_pixels)
        seconds[precision] = time.perf_counter() - t0
        logger.info("%s: %d photos in %.1f s (%s)", precision, len(photos), seconds[precision], model.precision)
        del model
        gc.collect()
    if index is None:
        index = exact_index(vectors["fp32"])
    results = [quality(p, index, collection, vectors["fp32"], v, seconds[p]) for p, v in vectors.items() if p != "fp32"]
    print(f"{len(photos)} photos from {args.photos}; collection: {collection}; fp32 took {seconds['fp32']:.1f} s")
    print("| precision | cosine min | cosine 1st pct | cosine median | top-10 overlap mean | min | s | passes |")
    print("|---|---|---|---|---|---|---|---|")
    passed = True
    for r in results:
        ok = r.passed(args.min_cosine, args.min_overlap)
        passed &= ok
        print(
            f"| {r.precision} | {r.cosine_min:.5f} | {r.cosine_p01:.5f} | {r.cosine_median:.5f} "
            f"| {r.overlap_mean:.3f} | {r.overlap_min:.2f} | {r.embed_seconds:.0f} | {'yes' if ok else 'no'} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
