"""A local Hugging Face hub: the one fake of the hub, an HTTP server on 127.0.0.1.

It speaks the part of the hub's protocol that huggingface_hub (and through it open_clip and
pybioclip) uses, so that with HF_ENDPOINT pointing here the real library code runs unchanged:

    GET  /api/{models|datasets}/{repo}[/revision/{rev}]     repo info: sha, siblings (sizes, lfs sha256 with ?blobs)
    POST /api/{models|datasets}/{repo}/paths-info/{rev}     per-path size, git blob id, lfs {oid, size}
    HEAD /[datasets/]{repo}/resolve/{rev}/{path}            ETag, X-Repo-Commit, X-Linked-Etag, X-Linked-Size
    GET  /[datasets/]{repo}/resolve/{rev}/{path}            the bytes; `Range: bytes=N-` answers 206
    GET  /cdn/{models|datasets}/{repo}/{commit}/{path}      LFS files: resolve answers 302 to here, as the
                                                            hub sends them to its CDN

Errors carry X-Error-Code as the hub's do (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo),
which is how huggingface_hub picks its exception. Faults for tests: a transfer cut halfway (`cut`),
a wrong sha256 advertised (`wrong_sha256`), a repo that wants a token (`token`) or is gated (`gated`).
Every request is logged in `requests` (method, path, Range header).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import open_clip
import safetensors.torch
import torch

from collection.build import write_index, write_metadata
from services.search.settings import INDEX_FILE, METADATA_FILE
from stack.demo_labels import write_species_labels
from stack.tiny_model import TinyModel

LFS_SUFFIXES = (".index", ".duckdb", ".npy", ".safetensors", ".bin")
LFS_POINTER_SIZE = 134


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


@dataclass
class Repo:
    repo_type: str  # model | dataset
    repo_id: str
    files: dict[str, bytes]
    token: str | None = None
    gated: bool = False

    @property
    def commit(self) -> str:
        digest = hashlib.sha1(self.repo_id.encode(), usedforsecurity=False)
        for path in sorted(self.files):
            digest.update(path.encode() + hashlib.sha256(self.files[path]).digest())
        return digest.hexdigest()

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)


@dataclass
class RequestLog:
    method: str
    path: str
    range: str | None
    redirected: bool = False  # answered with a 302 to the CDN URL, not with bytes


@dataclass
class LocalHub:
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)
    requests: list[RequestLog] = field(default_factory=list)
    cut: dict[str, int] = field(default_factory=dict)  # file path -> how many more GETs to cut halfway
    wrong_sha256: set[str] = field(default_factory=set)  # file paths whose advertised sha256 is wrong
    url: str = ""

    def add(self, repo_type: str, repo_id: str, files: dict[str, bytes], **options: object) -> Repo:
        repo = Repo(repo_type, repo_id, dict(files), **options)  # type: ignore[arg-type]
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def sha256(self, path: str, content: bytes) -> str:
        real = hashlib.sha256(content).hexdigest()
        return hashlib.sha256(content + b"!").hexdigest() if path in self.wrong_sha256 else real

    def gets(self, path: str) -> list[RequestLog]:
        """The GETs that were answered with the bytes of `path` (or were cut while sending them)."""
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + path) and not r.redirected]

    def entry(self, repo: Repo, path: str) -> dict[str, object]:
        content = repo.files[path]
        item: dict[str, object] = {"type": "file", "path": path, "size": len(content), "oid": git_blob_id(content)}
        if repo.is_lfs(path):
            item["lfs"] = {"oid": self.sha256(path, content), "size": len(content), "pointerSize": LFS_POINTER_SIZE}
        return item


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    log: RequestLog

    def log_message(self, *args: object) -> None:
        pass

    # --- plumbing ---

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value: object) -> None:
        self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"})

    def _repo(self, repo_type: str, repo_id: str) -> Repo | None:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
            self._error(401, "RepoNotFound", "Invalid username or password.")
            return None
        if repo.gated:
            self._error(403, "GatedRepo", "Access to this repo is restricted; accept its conditions first.")
            return None
        return repo

    def _revision(self, repo: Repo, revision: str) -> bool:
        if unquote(revision) in ("main", repo.commit):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return False

    # --- routes ---

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _route(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        self.log = RequestLog(self.command, url.path, self.headers.get("Range"))
        self.hub.requests.append(self.log)
        if parts[:1] == ["api"] and len(parts) >= 4 and parts[1] in ("models", "datasets"):
            return self._api(parts[1][:-1], "/".join(parts[2:4]), parts[4:], parse_qs(url.query))
        if parts[:1] == ["cdn"] and len(parts) >= 6:  # cdn/{models|datasets}/{org}/{name}/{commit}/{path}
            return self._resolve(parts[1][:-1], "/".join(parts[2:4]), parts[4], "/".join(parts[5:]), cdn=True)
        repo_type = "model"
        if parts[:1] == ["datasets"]:
            repo_type, parts = "dataset", parts[1:]
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(repo_type, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        self._error(404, "EntryNotFound", f"no route {url.path}")

    def _api(self, repo_type: str, repo_id: str, rest: list[str], query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_type, repo_id)
        if repo is None:
            return
        revision = rest[1] if len(rest) >= 2 else "main"
        if not self._revision(repo, revision):
            return
        if rest[:1] == ["paths-info"] and self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            wanted = form.get("paths", [])
            return self._json([self.hub.entry(repo, path) for path in wanted if path in repo.files])
        siblings = []
        for path in sorted(repo.files):
            sibling: dict[str, object] = {"rfilename": path}
            if query.get("blobs"):
                entry = self.hub.entry(repo, path)
                sibling |= {"size": entry["size"], "blobId": entry["oid"], "lfs": entry.get("lfs")}
            siblings.append(sibling)
        self._json(
            {"id": repo.repo_id, "sha": repo.commit, "private": bool(repo.token), "gated": repo.gated,
             "disabled": False, "tags": [], "siblings": siblings}
        )  # fmt: skip

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str, cdn: bool = False) -> None:
        repo = self._repo(repo_type, repo_id)
        if repo is None or not self._revision(repo, revision):
            return
        if path not in repo.files:
            self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
            return
        content = repo.files[path]
        headers = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if repo.is_lfs(path):
            sha = self.hub.sha256(path, content)
            headers |= {"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(content))}
            if not cdn:
                # As the hub does for LFS files: the bytes live elsewhere, at an absolute URL (a CDN's).
                location = f"{self.hub.url}/cdn/{repo_type}s/{repo_id}/{repo.commit}/{path}"
                self.log.redirected = True
                self._send(302, b"", {**headers, "Location": location})
                return
        else:
            headers["ETag"] = f'"{git_blob_id(content)}"'
        start = 0
        wanted = self.headers.get("Range")
        status = 200
        if wanted and self.command == "GET" and wanted.startswith("bytes="):
            start = int(wanted[len("bytes=") :].split("-")[0])
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        body = content[start:]
        headers["Content-Length"] = str(len(body))
        if self.command == "GET" and self.hub.cut.get(path, 0) > 0 and len(body) > 1:
            self.hub.cut[path] -= 1
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True  # the rest never comes: the client sees a short body
            return
        self._send(status, body, headers)


@contextmanager
def serve_hub(hub: LocalHub) -> Iterator[LocalHub]:
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- what the hub publishes in the tests: a tiny release in the real repos' layouts ------------------

COLLECTION_REPO = "imageomics/bioclip-image-search-lite"
LABELS_REPO = "imageomics/TreeOfLife-200M"
MODEL_REPO = "imageomics/bioclip-2"


@dataclass(frozen=True)
class Release:
    collection: dict[str, bytes]
    labels: dict[str, bytes]
    model: dict[str, bytes]

    def publish(self, hub: LocalHub) -> LocalHub:
        hub.add("model", COLLECTION_REPO, self.collection)
        hub.add("dataset", LABELS_REPO, self.labels)
        hub.add("model", MODEL_REPO, self.model)
        return hub


def hub_model_files(model: TinyModel) -> dict[str, bytes]:
    """The tiny model as open_clip's hub layout has it: open_clip_config.json and open_clip_model.safetensors."""
    open_clip.add_model_config(model.config)
    config = json.loads(model.config.read_text())
    state = torch.load(model.checkpoint, map_location="cpu", weights_only=True)
    weights = safetensors.torch.save({key: value.contiguous() for key, value in state.items()})
    hub_config = {
        "model_cfg": config,
        "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)},
    }
    return {"open_clip_config.json": json.dumps(hub_config, indent=2).encode(), "open_clip_model.safetensors": weights}


def tiny_rows(count: int) -> list[dict[str, object]]:
    rows = []
    for i in range(count):
        rows.append(
            {
                "url": f"https://inaturalist-open-data.s3.amazonaws.com/photos/{i}/a.jpg" if i % 4 == 0 else None,
                "kingdom": "Animalia", "phylum": "Chordata", "class": "Aves", "order": "Passeriformes",
                "family": f"Family{i % 5}", "genus": f"Genus{i % 7}", "species": f"epithet{i % 13}",
                "common_name": f"bird {i % 13}", "source_dataset": "gbif", "source_id": str(5000 + i),
                "publisher": "iNaturalist.org", "img_type": "Image", "basisOfRecord": "HUMAN_OBSERVATION",
                "in_bioclip2_training": i % 2 == 0,
            }
        )  # fmt: skip
    return rows


def make_release(folder: Path, model: TinyModel, *, vectors: int = 400) -> Release:
    """A small collection (IVF index + DuckDB metadata in the pre-built schema), label files and the model."""
    collection = folder / "collection"
    dim = int(json.loads(model.config.read_text())["embed_dim"])
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(vectors, dim)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    write_index(matrix, "IVF8,Flat", collection / INDEX_FILE)
    write_metadata(tiny_rows(vectors), collection / METADATA_FILE, sidecar=False)
    labels = write_species_labels(folder / "labels", model)
    return Release(
        collection={str(INDEX_FILE): (collection / INDEX_FILE).read_bytes(),
                    str(METADATA_FILE): (collection / METADATA_FILE).read_bytes()},
        labels={f"embeddings/{name}": (labels / name).read_bytes()
                for name in ("txt_emb_species.npy", "txt_emb_species.json")},
        model=hub_model_files(model),
    )  # fmt: skip
