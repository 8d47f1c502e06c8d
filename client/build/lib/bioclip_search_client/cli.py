"""The command line: `python -m bioclip_search_client search PHOTO_OR_FOLDER... --csv out.csv`,
`record ID`, `image ID --size medium -o out.webp`."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import httpx

from bioclip_search_client.client import DEFAULT_URL, Client
from bioclip_search_client.errors import ApiError

logger = logging.getLogger(__name__)

# The formats the gateway reads (docs/api.md "Images"), by the names files usually have.
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp", ".avif", ".heic", ".heif"}


def photos_in(paths: Sequence[str]) -> list[Path]:
    """The photos named, a folder's photos (recursively, by suffix, sorted) in place of the folder."""
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
        else:
            found.append(path)
    return found


class Progress:
    """tqdm's bar when tqdm is installed, else a line on stderr rewritten in place."""

    def __init__(self, total: int, out: TextIO) -> None:
        self.total, self.done, self.out = total, 0, out
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, unit="photo", file=out)

    def step(self, name: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        width = 30
        filled = width * self.done // max(self.total, 1)
        self.out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {name[:40]:<40}")
        self.out.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self.out.write("\n")


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params = {
        "top_n": args.top_n, "nprobe": args.nprobe, "scope": args.scope, "min_similarity": args.min_similarity,
        "max_per_source": args.max_per_source, "max_per_species": args.max_per_species, "rank": args.rank,
        "filters": args.filter or [],
    }  # fmt: skip
    if args.no_predict:
        params["predict"] = False
    return {name: value for name, value in params.items() if value is not None}


def _csv_rows(text: str, photo: str | None) -> Iterator[dict[str, str]]:
    for row in csv.DictReader(io.StringIO(text)):
        yield {"photo": photo, **row} if photo is not None else row


def _search(args: argparse.Namespace, api: Client) -> int:
    params = _params(args)
    queries: list[tuple[str | None, dict[str, Any]]]
    if args.text is not None:
        queries = [(None, {"text": args.text})]
    elif args.record is not None:
        queries = [(None, {"record": args.record})]
    else:
        photos = photos_in(args.photos)
        if not photos:
            print("no photos given or found", file=sys.stderr)
            return 2
        queries = [(str(p), {"photo": p}) for p in photos]
    failed = 0
    writer: csv.DictWriter[str] | None = None
    out = open(args.csv, "w", newline="", encoding="utf-8") if args.csv else None  # noqa: SIM115
    progress = Progress(len(queries), sys.stderr) if len(queries) > 1 else None
    try:
        for photo, query in queries:
            try:
                if out is not None:
                    rows = list(_csv_rows(api.search_csv(**query, **params), photo))
                    if rows and writer is None:
                        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
                        writer.writeheader()
                    if writer is not None:
                        writer.writerows(rows)
                else:
                    result = api.search(**query, **params)
                    top = result.hits[0] if result.hits else None
                    named = (top.taxonomy.scientific_name or top.taxonomy.family or "?") if top else "no hits"
                    shown = f"{named} ({top.similarity:.3f})" if top else named
                    print(f"{photo or result.label}\t{len(result.hits)} hits\tnearest: {shown}")
            except (ApiError, OSError) as exc:
                failed += 1
                print(f"\n{photo or 'query'}: {exc}", file=sys.stderr)
            if progress is not None:
                progress.step(Path(photo).name if photo else "")
    finally:
        if progress is not None:
            progress.close()
        if out is not None:
            out.close()
    if args.csv:
        print(f"{len(queries) - failed} of {len(queries)} searches written to {args.csv}", file=sys.stderr)
    return 1 if failed else 0


def _record(args: argparse.Namespace, api: Client) -> int:
    record = api.record(args.record_id)
    print(json.dumps(record.raw or asdict(record), indent=2))
    return 0


def _image(args: argparse.Namespace, api: Client) -> int:
    data = api.image(args.record_id, args.size)
    Path(args.output).write_bytes(data)
    print(f"{len(data)} bytes written to {args.output}", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="bioclip-search", description="Search a BioCLIP image search gateway.")
    main.add_argument("--url", default=DEFAULT_URL, help="The gateway (default: $BIOCLIP_SEARCH_URL or %(default)s).")
    main.add_argument("--timeout", type=float, default=120.0, help="Seconds per call (default %(default)s).")
    commands = main.add_subparsers(dest="command", required=True)

    search = commands.add_parser("search", help="Photos (files or folders), a --text or a --record.")
    search.add_argument("photos", nargs="*", help="Photos, or folders of photos: each photo is one search.")
    search.add_argument("--text", help="Search by a taxon or common name instead.")
    search.add_argument("--record", type=int, help="Search from a record's image instead.")
    search.add_argument("--top-n", type=int, help="Hits per search (the API's default: 24).")
    search.add_argument("--scope", help="all, url_only, inaturalist or bioclip2_training.")
    search.add_argument("--filter", action="append", help="A taxon filter rank:value (repeatable).")
    search.add_argument("--min-similarity", type=float)
    search.add_argument("--nprobe", type=int)
    search.add_argument("--max-per-source", type=int)
    search.add_argument("--max-per-species", type=int)
    search.add_argument("--rank", help="The prediction's and consensus's rank (default species).")
    search.add_argument("--no-predict", action="store_true", help="Skip the zero-shot prediction.")
    search.add_argument("--csv", help="Write every hit of every search to this CSV (a `photo` column first).")
    search.set_defaults(run=_search)

    record = commands.add_parser("record", help="One record's metadata, as JSON.")
    record.add_argument("record_id", type=int)
    record.set_defaults(run=_record)

    image = commands.add_parser("image", help="A record's image, saved to a file.")
    image.add_argument("record_id", type=int)
    image.add_argument("--size", choices=["thumb", "medium", "full"], default="thumb")
    image.add_argument("-o", "--output", required=True)
    image.set_defaults(run=_image)
    return main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status: 0 done, 1 some searches failed, 2 usage or a failed call."""
    args = parser().parse_args(argv)
    if args.command == "search" and sum(x is not None and x != [] for x in (args.text, args.record, args.photos)) != 1:
        parser().error("give photos, --text or --record (one of them)")
    try:
        with Client(args.url, timeout=args.timeout, rate_limit_retries=5) as api:
            return int(args.run(args, api))
    except ApiError as exc:
        print(exc, file=sys.stderr)
        return 2
    except httpx.TransportError as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
