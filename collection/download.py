"""`python -m collection download` (`make data`): the real data, verified, resumable, with a plan first.

Downloads the pre-built collection, the TreeOfLife species labels and the BioCLIP-2 model from the
Hugging Face hub (the repos are in collection/hub.py), then makes the derived files (the lookup
sidecar, the coarse HNSW graph) so that `make run` starts in seconds. Every file goes to a partial
file first, is checked against the hub's sha256 (git blob id for small files) and only then renamed
into place; the revisions used are pinned in the data folder's lock file (hub.lock.json).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import HfApi
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from tqdm import tqdm

from collection.hub import LIBRARY, PARTS, Hub, Part, RemoteFile, file_digest
from collection.state import model_folder
from services.common.datalock import LOCK_FILE, LOCK_FORMAT, read_lock
from services.search.settings import INDEX_FILE, METADATA_FILE, SearchSettings

logger = logging.getLogger(__name__)

DEFAULT_BRANCH = "main"
STAGING = ".download"
# Derived files, estimated before the collection is here to measure: the sidecar holds ~40 bytes per row
# against the metadata's ~60; the coarse HNSW graph is the IVF centroids plus links, a few % of the index.
# Disk the lookup sidecar needs while it is made, as a share of the metadata file: at 234M rows its staging
# folder peaked at 11.0 GB for a 12.1 GB file (per-band Parquet parts, DuckDB's spill, the arrays; 0.90),
# and the finished sidecar is 9.0 GB (0.74). docs/benchmarks/scale.md.
SIDECAR_SHARE = 0.95
COARSE_SHARE = 0.05
TRUE = {"1", "true", "yes", "on"}


class DownloadError(RuntimeError):
    """A download cannot go on; the message names the repo, the file and what to do."""


def parse_size(text: str) -> int:
    """`500M`, `1.5GB`, `2GiB`, `0` -> bytes (decimal units, binary with `i`)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 500M, 1.5GB or 2GiB")
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** "_kmgt".index(unit or "_"))


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def offline() -> bool:
    return (os.environ.get("HF_HUB_OFFLINE") or "").strip().lower() in TRUE


@dataclass
class Item:
    """One file of the plan: where it goes and what has to happen to it."""

    part: Part
    revision: str
    commit: str
    remote: RemoteFile
    dest: Path
    partial: Path
    state: str = "download"  # download | present | refetch
    have: int = 0  # bytes already in the partial file

    @property
    def needed(self) -> int:
        return 0 if self.state == "present" else self.remote.size - self.have


@dataclass
class Resolved:
    part: Part
    revision: str
    commit: str
    files: list[RemoteFile]


@dataclass
class Places:
    data_dir: Path
    model_cache: Path
    search_cache: Path | None

    def staging(self, part: Part) -> Path:
        root = self.model_cache if part.name == "model" else self.data_dir
        return root / STAGING / part.name

    def destination(self, part: Part, commit: str, remote: RemoteFile) -> Path:
        if part.name == "model":
            return model_folder(self.model_cache, part.repo) / "blobs" / remote.etag
        return self.data_dir / remote.path


@dataclass
class Lock:
    """The lock file, kept in memory and written atomically after every change."""

    path: Path
    content: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, data_dir: Path) -> Lock:
        content = read_lock(data_dir) or {"format": LOCK_FORMAT, "parts": {}}
        return cls(data_dir / LOCK_FILE, content)

    def part(self, name: str) -> dict[str, Any] | None:
        return self.content.setdefault("parts", {}).get(name)

    def pin(self, resolved: Resolved, hub: Hub, extra: dict[str, Any]) -> None:
        old = self.part(resolved.part.name) or {}
        same = old.get("commit") == resolved.commit
        self.content["parts"][resolved.part.name] = {
            "repo": resolved.part.repo,
            "repo_type": resolved.part.repo_type,
            "revision": resolved.revision,
            "commit": resolved.commit,
            "endpoint": hub.endpoint,
            **extra,
            "files": {
                f.path: {
                    "size": f.size,
                    "sha256": f.sha256,
                    "git_oid": f.git_oid,
                    "stat": (old.get("files", {}).get(f.path, {}).get("stat") if same else None),
                }
                for f in resolved.files
            },
        }
        self.save()

    def verified(self, item: Item, stat: os.stat_result | None) -> None:
        entry = self.content["parts"][item.part.name]["files"][item.remote.path]
        entry["stat"] = [stat.st_size, stat.st_mtime_ns, stat.st_ino] if stat else None
        self.save()

    def known_stat(self, item: Item) -> list[int] | None:
        part = self.part(item.part.name) or {}
        if part.get("commit") != item.commit:
            return None
        return (part.get("files", {}).get(item.remote.path) or {}).get("stat")

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.content, indent=2) + "\n")
        partial.replace(self.path)


def explain(exc: BaseException, hub: Hub, part: Part, revision: str, path: str | None = None) -> DownloadError:
    """A hub or disk error as one line naming the repo, the file and the fix."""
    where = f"{part.repo} ({part.repo_type} repo" + (f", file {path}" if path else "") + f", revision {revision})"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, GatedRepoError):
        why = (
            f"403: the repo is gated; accept its conditions at {hub.endpoint}/{part.repo} and set HF_TOKEN "
            "to a read token of that account"
        )
    elif isinstance(exc, RevisionNotFoundError):
        why = f"{status}: the repo has no revision {revision}; check --revision"
    elif isinstance(exc, EntryNotFoundError):
        why = "404: the repo has no such file at this revision; pin a revision that has it with --revision"
    elif isinstance(exc, RepositoryNotFoundError):
        token = "the token in HF_TOKEN has no access to it" if hub.token else "set HF_TOKEN if it is private"
        why = f"{status}: repo not found or not readable without a token; check the name, and {token}"
    elif isinstance(exc, HfHubHTTPError) and status == 401:
        why = "401: the hub refused the token; set HF_TOKEN to a valid read token (or unset it)"
    elif isinstance(exc, HfHubHTTPError) and status == 403:
        why = "403: this token may not read the repo; use a token with read access in HF_TOKEN"
    elif isinstance(exc, HfHubHTTPError):
        why = f"the hub answered {status}; try again later (the download resumes where it stopped)"
    elif isinstance(exc, OfflineModeIsEnabled):
        why = "HF_HUB_OFFLINE is set; unset it to download"
    elif isinstance(exc, httpx2.TransportError | ConnectionError | TimeoutError):
        why = (
            f"cannot reach {hub.endpoint} ({type(exc).__name__}: {exc}); check the network, or HF_ENDPOINT for a "
            "mirror, then run the command again: it resumes where it stopped"
        )
    elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        why = "the disk is full; free space (or choose another --data-dir / --model-cache) and run again to resume"
    elif isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        why = "the transfer ended short; run the command again to resume"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return DownloadError(f"{where}: {why}")


class Downloader:
    """Plan, check, download, verify and place the parts; then make the derived files."""

    def __init__(self, hub: Hub, places: Places, *, reserve: int, verify: bool, update: bool) -> None:
        self.hub = hub
        self.places = places
        self.reserve = reserve
        self.verify = verify
        self.update = update
        self.api = HfApi(endpoint=hub.endpoint, token=hub.token, library_name=LIBRARY)
        self.lock = Lock.load(places.data_dir)

    # --- what to get ------------------------------------------------------------------------------

    def resolve(self, part: Part, revision: str | None) -> Resolved:
        """The commit and the files to fetch: from the lock when it pins this part, else asked of the hub."""
        pinned = self.lock.part(part.name)
        if pinned and pinned.get("repo") == part.repo and not self.update and revision in (None, pinned["revision"]):
            files = [
                RemoteFile(path, entry["size"], entry.get("sha256"), entry.get("git_oid"))
                for path, entry in pinned["files"].items()
            ]
            return Resolved(part, pinned["revision"], pinned["commit"], files)
        wanted = revision or DEFAULT_BRANCH
        if offline():
            raise DownloadError(
                f"{part.repo}: HF_HUB_OFFLINE is set and {self.lock.path} pins no {part.name} revision; "
                "unset HF_HUB_OFFLINE to download it"
            )
        try:
            info = self.api.repo_info(part.repo, repo_type=part.repo_type, revision=wanted)
            commit = str(info.sha)
            names = [name for spec in part.files for name in (spec if isinstance(spec, tuple) else (spec,))]
            listed = {
                entry.path: entry
                for entry in self.api.get_paths_info(part.repo, names, repo_type=part.repo_type, revision=commit)
            }
        except Exception as exc:
            raise explain(exc, self.hub, part, wanted) from exc
        files = []
        for spec in part.files:
            choices = spec if isinstance(spec, tuple) else (spec,)
            found = next((listed[name] for name in choices if name in listed), None)
            if found is None:
                raise DownloadError(
                    f"{part.repo} ({part.repo_type} repo, revision {wanted} = {commit[:12]}): no file "
                    f"{' or '.join(choices)}; pin a revision that has it with --revision {part.name}=REV"
                )
            lfs = getattr(found, "lfs", None)
            files.append(RemoteFile(found.path, int(found.size), lfs.sha256 if lfs else None, found.blob_id))
        return Resolved(part, wanted, commit, files)

    def check(self, resolved: Resolved) -> list[Item]:
        """Each file's state on disk; files without a matching stat in the lock are hashed (with a bar)."""
        items = []
        for remote in resolved.files:
            part = resolved.part
            dest = self.places.destination(part, resolved.commit, remote)
            partial = self.places.staging(part) / f"{remote.path}.{remote.etag[:16]}.part"
            item = Item(part, resolved.revision, resolved.commit, remote, dest, partial)
            item.have = partial.stat().st_size if partial.exists() else 0
            if dest.is_file() and self._in_place(item):
                stat = dest.stat()
                known = self.lock.known_stat(item)
                if not self.verify and known == [stat.st_size, stat.st_mtime_ns, stat.st_ino]:
                    item.state = "present"
                elif stat.st_size == remote.size and self._hash_matches(item):
                    item.state = "present"
                    self._record(resolved, item)
                else:
                    logger.warning("%s: the copy on disk does not match the hub's checksum; fetching it again", dest)
                    item.state = "refetch"
            items.append(item)
        return items

    def _in_place(self, item: Item) -> bool:
        if item.part.name != "model":
            return True
        link = self._snapshot_link(item)
        return link.is_symlink() and link.resolve() == item.dest.resolve()

    def _hash_matches(self, item: Item) -> bool:
        with tqdm(
            total=item.remote.size, desc=f"checking {item.remote.path}", unit="B", unit_scale=True, file=sys.stderr
        ) as bar:
            return file_digest(item.dest, item.remote, bar) == item.remote.etag

    def _record(self, resolved: Resolved, item: Item) -> None:
        pinned = self.lock.part(item.part.name) or {}
        extra = self._extra(item.part)
        if pinned.get("commit") != resolved.commit or any(pinned.get(k) != v for k, v in extra.items()):
            self.lock.pin(resolved, self.hub, extra)
        self.lock.verified(item, item.dest.stat())

    def _extra(self, part: Part) -> dict[str, Any]:
        if part.name == "model":
            # Relative to the data folder when inside it, so the lock reads the same from a container's mount.
            cache = self.places.model_cache.absolute()
            data = self.places.data_dir.absolute()
            return {"cache_dir": str(cache.relative_to(data) if cache.is_relative_to(data) else cache)}
        return {}

    # --- the plan ---------------------------------------------------------------------------------

    def derived_needed(self, items: list[Item]) -> dict[Path, int]:
        """Estimated bytes of derived files still to make, by the folder they go to."""
        sizes = {i.remote.path: i.remote.size for i in items if i.part.name == "collection"}
        needs: dict[Path, int] = {}
        metadata = self.places.data_dir / METADATA_FILE
        if str(METADATA_FILE) in sizes and not sidecar_current(metadata):
            needs[metadata.parent] = int(sizes[str(METADATA_FILE)] * SIDECAR_SHARE)
        if str(INDEX_FILE) in sizes and self.places.search_cache is not None and not self._coarse_current():
            needs[self.places.search_cache] = int(sizes[str(INDEX_FILE)] * COARSE_SHARE)
        return needs

    def _coarse_current(self) -> bool:
        """Whether the coarse HNSW graph made for the pinned collection is still in the search cache."""
        made = self.lock.content.get("derived", {}).get("coarse_hnsw") or {}
        collection = self.lock.part("collection") or {}
        cache = self.places.search_cache
        return bool(
            cache is not None
            and made.get("commit") == collection.get("commit")
            and made.get("file")
            and (cache / made["file"]).is_file()
        )

    def print_plan(self, resolved: list[Resolved], items: list[Item], derived: dict[Path, int]) -> None:
        print(f"Plan (hub {self.hub.endpoint}, lock file {self.lock.path}):")
        for res in resolved:
            print(f"  {res.part.name}: {res.part.repo} ({res.part.repo_type}) {res.revision} = {res.commit[:12]}")
            print(f"    {res.part.purpose}")
            for item in (i for i in items if i.part is res.part):
                state = {"present": "present, verified", "refetch": "corrupt on disk: fetch again"}.get(
                    item.state, f"resume from {human(item.have)}" if item.have else "download"
                )
                where = model_folder(self.places.model_cache, res.part.repo) if res.part.name == "model" else item.dest
                print(f"    {item.remote.path:<34} {human(item.remote.size):>9}  {state:<24} -> {where}")
        download = sum(i.needed for i in items)
        if derived:
            print(f"  derived: lookup sidecar and coarse HNSW graph, about {human(sum(derived.values()))}")
        print(f"To download: {human(download)} in {sum(1 for i in items if i.needed)} file(s)")
        for folder, (free, need) in self.space(items, derived).items():
            print(f"Free space at {folder}: {human(free)} (needs {human(need)}, keeping {human(self.reserve)} free)")

    def space(self, items: list[Item], derived: dict[Path, int]) -> dict[Path, tuple[int, int]]:
        """Free bytes and bytes needed per file system, keyed by one existing folder on it."""
        needs: dict[int, tuple[Path, int]] = {}
        for folder, size in [*((i.dest.parent, i.needed) for i in items), *derived.items()]:
            existing = _existing(folder)
            device = existing.stat().st_dev
            anchor, total = needs.get(device, (existing, 0))
            needs[device] = (anchor, total + size)
        return {anchor: (shutil.disk_usage(anchor).free, need) for anchor, need in needs.values()}

    def refuse_when_short(self, items: list[Item], derived: dict[Path, int]) -> None:
        for folder, (free, need) in self.space(items, derived).items():
            if need and need + self.reserve > free:
                raise DownloadError(
                    f"not enough disk space at {folder}: {human(need)} to write and {human(self.reserve)} to keep "
                    f"free (--reserve), but {human(free)} is free; free {human(need + self.reserve - free)} or choose "
                    "another --data-dir / --model-cache. Nothing was downloaded."
                )

    # --- doing it ---------------------------------------------------------------------------------

    def fetch(self, resolved: Resolved, item: Item) -> None:
        """Download one file to its partial name, verify it, then move it into place."""
        remote = item.remote
        try:
            got = self.hub.fetch(item.part, item.commit, remote, item.partial)
        except Exception as exc:
            raise explain(exc, self.hub, item.part, item.revision, remote.path) from exc
        if got != remote.etag:
            item.partial.unlink(missing_ok=True)  # wrong bytes: resuming them would only repeat the mismatch
            raise DownloadError(
                f"{item.part.repo} ({item.part.repo_type} repo, file {remote.path}, revision {item.commit[:12]}): "
                f"checksum mismatch, the hub lists {remote.checksum} but served bytes with {got}; nothing was "
                "installed. Run again later; if it persists, report it to the repo's owners."
            )
        item.dest.parent.mkdir(parents=True, exist_ok=True)
        item.partial.replace(item.dest)
        if item.part.name == "model":
            self._link(item)
        self._record(resolved, item)
        logger.info("verified %s (%s)", remote.path, remote.checksum)

    def _snapshot_link(self, item: Item) -> Path:
        return model_folder(self.places.model_cache, item.part.repo) / "snapshots" / item.commit / item.remote.path

    def _link(self, item: Item) -> None:
        """The rest of huggingface_hub's cache layout: snapshots/<commit>/<file> -> blobs/<etag>, refs/<branch>."""
        link = self._snapshot_link(item)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(item.dest, link.parent))
        # open_clip asks for `main` (an `hf-hub:` name carries no revision); offline, huggingface_hub reads
        # refs/main to find the snapshot, so main names the pinned commit here whatever was asked for.
        refs = model_folder(self.places.model_cache, item.part.repo) / "refs"
        refs.mkdir(parents=True, exist_ok=True)
        for name in {DEFAULT_BRANCH, item.revision} - {item.commit}:
            (refs / name).write_text(item.commit)

    def derive(self) -> list[str]:
        """The lookup sidecar and the coarse HNSW graph of the collection in the data folder; what was made."""
        # Imported here: FAISS and DuckDB load only when there is a collection to derive from.
        from collection.sidecar import write_sidecar
        from services.search.index import VectorIndex

        metadata = self.places.data_dir / METADATA_FILE
        index_path = self.places.data_dir / INDEX_FILE
        if not (metadata.is_file() and index_path.is_file()):
            return []
        made = []
        settings = SearchSettings()
        with tqdm(total=2, desc="derived files", unit="file", file=sys.stderr) as bar:
            sidecar = metadata.with_suffix(".lookup")
            if not sidecar_current(metadata):
                write_sidecar(metadata, sidecar)
                made.append(f"lookup sidecar {sidecar}")
            bar.update(1)
            cache = self.places.search_cache
            if cache is not None and settings.coarse_quantizer != "flat" and not self._coarse_current():
                before = set(cache.glob("coarse-hnsw-*.index"))
                index = VectorIndex.open(index_path, mmap=True)
                index.upgrade_quantizer(
                    settings.coarse_quantizer,
                    m=settings.quantizer_hnsw_m,
                    ef_construction=settings.quantizer_ef_construction,
                    cache_dir=cache,
                )
                new = sorted(set(cache.glob("coarse-hnsw-*.index")) - before)
                made += [f"coarse HNSW graph {path}" for path in new]
                if new:
                    commit = (self.lock.part("collection") or {}).get("commit")
                    self.lock.content.setdefault("derived", {})["coarse_hnsw"] = {"commit": commit, "file": new[0].name}
                    self.lock.save()
            bar.update(1)
        return made

    def run(self, parts: list[Part], revisions: dict[str, str]) -> int:
        started = time.perf_counter()
        resolved = [self.resolve(part, revisions.get(part.name)) for part in parts]
        items = [item for res in resolved for item in self.check(res)]
        derived = self.derived_needed(items)
        self.print_plan(resolved, items, derived)
        todo = [item for item in items if item.state != "present"]
        if offline() and todo:
            missing = ", ".join(f"{i.part.repo}/{i.remote.path}" for i in todo)
            raise DownloadError(f"HF_HUB_OFFLINE is set but these files are missing or corrupt: {missing}; unset it")
        self.refuse_when_short(items, derived)
        for item in todo:
            self.fetch(next(r for r in resolved if r.part is item.part), item)
        for res in resolved:
            if self.lock.part(res.part.name) is None or self.lock.part(res.part.name)["commit"] != res.commit:
                self.lock.pin(res, self.hub, self._extra(res.part))
        for res in resolved:
            staging = self.places.staging(res.part)
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):
                staging.parent.rmdir()  # gone once no part has partial files left
        made = self.derive() if any(p.name == "collection" for p in parts) else []
        if not todo and not made:
            print(f"Nothing to download: every file is present and verified ({self.lock.path}).")
        else:
            fetched = sum(i.remote.size - i.have for i in todo)
            print(f"Done in {time.perf_counter() - started:.0f} s: {len(todo)} file(s), {human(fetched)} downloaded.")
            for line in made:
                print(f"Made the {line}.")
        return 0


def sidecar_current(metadata: Path) -> bool:
    """Whether the sidecar beside `metadata` was made from it (same size, this format)."""
    from services.search.lookup import FORMAT, sidecar_source

    manifest = metadata.with_suffix(".lookup") / "manifest.json"
    try:
        content = json.loads(manifest.read_text())
        return content.get("format") == FORMAT and content.get("source") == sidecar_source(metadata)
    except (OSError, ValueError):
        return False


def _existing(folder: Path) -> Path:
    folder = folder.absolute()
    while not folder.exists():
        folder = folder.parent
    return folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="the data folder (default ./data)")
    parser.add_argument(
        "--model-cache",
        type=Path,
        default=None,
        help="the embedder's model cache (EMBEDDER_CACHE_DIR; default DATA_DIR/models)",
    )
    parser.add_argument(
        "--search-cache",
        type=Path,
        default=None,
        help="where the coarse HNSW graph goes (SEARCH_CACHE_DIR; default var/cache/search)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(PARTS),
        help="download only this part (repeat for several); default all three",
    )
    parser.add_argument(
        "--revision",
        action="append",
        default=[],
        metavar="PART=REV",
        help="a branch, tag or commit for one part (default: the lock file's pin, else main)",
    )
    parser.add_argument("--update", action="store_true", help="ask the hub for the revisions again, ignoring the pins")
    parser.add_argument("--verify", action="store_true", help="hash every file on disk again, even unchanged ones")
    parser.add_argument(
        "--reserve",
        type=parse_size,
        default=parse_size("1GB"),
        help="disk space to keep free, e.g. 500MB or 2GB (default 1GB): nothing is downloaded when the files to "
        "fetch plus the derived files (the sidecar, the coarse graph) would leave less free on any disk they go to",
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for noisy in ("httpx", "httpx2", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    revisions: dict[str, str] = {}
    for text in args.revision:
        name, _, revision = text.partition("=")
        if name not in PARTS or not revision:
            print(f"error: --revision {text}: expected PART=REV with PART one of {', '.join(PARTS)}", file=sys.stderr)
            return 2
        revisions[name] = revision
    env_cache = os.environ.get("EMBEDDER_CACHE_DIR")
    search_cache = args.search_cache or SearchSettings().cache_dir
    places = Places(
        data_dir=args.data_dir,
        model_cache=args.model_cache or (Path(env_cache) if env_cache else args.data_dir / "models"),
        search_cache=search_cache,
    )
    parts = [PARTS[name] for name in (args.only or PARTS)]
    try:
        downloader = Downloader(
            Hub.from_environment(), places, reserve=args.reserve, verify=args.verify, update=args.update
        )
        return downloader.run(parts, revisions)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the command again to resume where it stopped", file=sys.stderr)
        return 130
