"""Taxon-name suggestions at collection scale: start-up time (DuckDB's GROUP BY per rank, then the index),
memory and prefix latency of the taxon index (services/search/taxa.py) over a synthetic metadata table
with one row per species, one million distinct species by default.

    .venv/bin/python -m bench.taxa [--species 1000000] [--queries 2000]

Prints Markdown for docs/benchmarks/search.md. Not a test.
"""

from __future__ import annotations

import argparse
import logging
import random
import resource
import string
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from services.common.vocabulary import FILTER_RANKS
from services.search.metadata import MetadataStore
from services.search.taxa import TaxonIndex

logger = logging.getLogger(__name__)


def _word(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(low, high)))


def synthetic_rows(species: int, seed: int = 7) -> list[tuple[tuple[str | None, ...], int]]:
    """`species` distinct taxonomies: ~species/10 genera, ~species/100 families, 400 orders, 80 classes,
    30 phyla, 3 kingdoms, and a common name on half of them; record counts heavy-tailed as in TreeOfLife."""
    rng = random.Random(seed)
    kingdoms = [_word(rng, 6, 9).capitalize() for _ in range(3)]
    phyla = [_word(rng, 6, 12).capitalize() for _ in range(30)]
    classes = [_word(rng, 6, 12).capitalize() for _ in range(80)]
    orders = [_word(rng, 6, 12).capitalize() + "ales" for _ in range(400)]
    families = [_word(rng, 5, 10).capitalize() + "idae" for _ in range(max(species // 100, 1))]
    genera = [_word(rng, 5, 11).capitalize() for _ in range(max(species // 10, 1))]
    counts = np.minimum(np.random.default_rng(seed).pareto(1.2, species) + 1, 100_000).astype(int)
    rows = []
    for n in range(species):
        genus = rng.randrange(len(genera))
        family = genus % len(families)
        common = f"{_word(rng, 4, 8)} {_word(rng, 4, 8)}" if n % 2 else None
        rows.append(
            (
                (
                    kingdoms[family % 3], phyla[family % 30], classes[family % 80], orders[family % 400],
                    families[family], genera[genus], _word(rng, 5, 12), common,
                ),
                int(counts[n]),
            )
        )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--species", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = synthetic_rows(args.species)
    with tempfile.TemporaryDirectory(prefix="bench-taxa-") as temp:
        path = Path(temp) / "metadata.duckdb"
        columns = {rank: [values[n] for values, _ in rows] for n, rank in enumerate(FILTER_RANKS)}
        table = pa.table({"id": np.arange(len(rows), dtype=np.int64), **columns})
        with duckdb.connect(str(path)) as connection:
            connection.register("source", table)
            connection.execute("CREATE TABLE metadata AS SELECT * FROM source")
        del table, columns
        store = MetadataStore(path)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        counts = store.taxon_counts()
        grouped = time.perf_counter() - started
        index = TaxonIndex.from_counts(counts)
        built = time.perf_counter() - started - grouped
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        store.close()
    print(f"| names indexed | {len(index):,} (from a table of {len(rows):,} rows, one per species) |")
    print(f"| start-up | DuckDB GROUP BY per rank {grouped:.1f} s, index {built:.1f} s, peak RSS +{grown:.0f} MB |")
    rng = random.Random(11)
    names = [values[5] + " " + values[6] for values, _ in rng.sample(rows, min(args.queries, len(rows)))]
    for label, cut, rank in (
        ("1 letter, all ranks", 1, None),
        ("3 letters, all ranks", 3, None),
        ("3 letters, species", 3, "species"),
        ("genus + 2 letters, species", None, "species"),
        ("no match (nearest)", -1, "genus"),
    ):
        timings = []
        for name in names:
            prefix = name[: name.index(" ") + 3] if cut is None else (name + "qqq" if cut == -1 else name[:cut])
            started = time.perf_counter()
            index.suggest(prefix, rank=rank, limit=10)
            timings.append((time.perf_counter() - started) * 1000)
        p50, p99 = np.percentile(timings, [50, 99])
        print(f"| {label}, limit 10 | p50 {p50:.3f} ms, p99 {p99:.3f} ms ({len(timings)} queries) |")


if __name__ == "__main__":
    main()
