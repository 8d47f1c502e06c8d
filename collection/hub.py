"""The published files: which hub repos and paths make the real data, and how one file is fetched and checked.

Transfers go through huggingface_hub (`get_hf_file_metadata` for the resolve HEAD, `http_get` for the
GET with its retries and Range resumes). The partial file is ours and named after the file's checksum,
so an interrupted transfer resumes where it stopped on the next run, even from another process
(huggingface_hub's own downloads restart a failed file from zero).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
LIBRARY = "bioclip-image-search"
HASH_CHUNK = 8 << 20


@dataclass(frozen=True)
class Part:
    """One thing to download: a hub repo and the files of it that the stack reads.

    A file given as a tuple is the first of those names the repo has (the model's weights come as
    safetensors or as a pickle; open_clip prefers the first).
    """

    name: str
    repo: str
    repo_type: str
    files: tuple[str | tuple[str, ...], ...]
    purpose: str


# Where each part comes from: the repos docs/operations.md names (DESIGN: facts the code must respect).
PARTS: dict[str, Part] = {
    "collection": Part(
        "collection",
        "imageomics/bioclip-image-search-lite",
        "model",
        ("faiss/index.index", "duckdb/metadata.duckdb"),
        "the pre-built TreeOfLife collection: FAISS index and DuckDB metadata",
    ),
    "labels": Part(
        "labels",
        "imageomics/TreeOfLife-200M",
        "dataset",
        ("embeddings/txt_emb_species.npy", "embeddings/txt_emb_species.json"),
        "the species text embeddings and names, for zero-shot prediction",
    ),
    "model": Part(
        "model",
        "imageomics/bioclip-2",
        "model",
        ("open_clip_config.json", ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")),
        "BioCLIP-2's open_clip config and weights, for the embedder",
    ),
}


@dataclass(frozen=True)
class RemoteFile:
    """A file of a repo at a commit, as the hub lists it: its size and its checksum.

    LFS files carry a sha256 of their content; files kept in git carry their git blob id
    (sha1 of `blob <size>\\0` + content). One of the two is always set.
    """

    path: str
    size: int
    sha256: str | None
    git_oid: str | None

    @property
    def checksum(self) -> str:
        return f"sha256:{self.sha256}" if self.sha256 else f"git-sha1:{self.git_oid}"

    @property
    def etag(self) -> str:
        """The name huggingface_hub's cache gives the file's blob: the sha256, else the git blob id."""
        return self.sha256 or self.git_oid or ""


class Digest:
    """The checksum a RemoteFile names, computed over bytes fed in order."""

    def __init__(self, remote: RemoteFile) -> None:
        self.remote = remote
        if remote.sha256:
            self._hash = hashlib.sha256()
        else:
            self._hash = hashlib.sha1(usedforsecurity=False)
            self._hash.update(f"blob {remote.size}\0".encode())

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    @property
    def expected(self) -> str:
        return self.remote.etag


def file_digest(path: Path, remote: RemoteFile, progress: object | None = None) -> str:
    """The checksum of a file on disk in the kind `remote` names (sha256 or git blob id)."""
    digest = Digest(remote)
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress.update(len(chunk))  # type: ignore[attr-defined]
    return digest.hexdigest()


class _HashingFile:
    """A file opened for appending that hashes what is written, so a download needs no second read.

    http_get rewinds and truncates when a server ignores a Range request; then the hash restarts.
    """

    def __init__(self, handle: BinaryIO, digest: Digest, start: int) -> None:
        self.handle = handle
        self.digest = digest
        self.start = start
        self.valid = True

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.handle.write(data)

    def tell(self) -> int:
        return self.handle.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        self.valid = False  # bytes already hashed are being dropped: hash the result again afterwards
        return self.handle.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        self.valid = False
        return self.handle.truncate(size)

    def flush(self) -> None:
        self.handle.flush()


@dataclass(frozen=True)
class Hub:
    """Where files come from: the endpoint (HF_ENDPOINT) and the token (HF_TOKEN), read when the command starts."""

    endpoint: str
    token: str | None

    @classmethod
    def from_environment(cls) -> Hub:
        endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        return cls(endpoint, os.environ.get("HF_TOKEN") or None)

    def fetch(self, part: Part, commit: str, remote: RemoteFile, partial: Path) -> str:
        """Download `remote` into `partial`, resuming from the bytes already there; return the content's checksum.

        `partial` is left in place on any error, so the next call resumes it.
        """
        url = hf_hub_url(part.repo, remote.path, repo_type=part.repo_type, revision=commit, endpoint=self.endpoint)
        metadata = get_hf_file_metadata(url, token=self.token, library_name=LIBRARY, endpoint=self.endpoint)
        headers = build_hf_headers(token=self.token, library_name=LIBRARY)
        if urlsplit(metadata.location).netloc != urlsplit(self.endpoint).netloc:
            headers.pop("authorization", None)  # a signed CDN URL: the token stays with the hub
        partial.parent.mkdir(parents=True, exist_ok=True)
        if partial.exists() and partial.stat().st_size > remote.size:
            partial.unlink()  # longer than the file can be: not a prefix of it
        digest = Digest(remote)
        start = partial.stat().st_size if partial.exists() else 0
        if start:
            with partial.open("rb") as handle:
                while chunk := handle.read(HASH_CHUNK):
                    digest.update(chunk)
            logger.info("resuming %s from byte %d of %d", remote.path, start, remote.size)
        with partial.open("ab") as handle:
            writer = _HashingFile(handle, digest, start)
            if start < remote.size:
                http_get(
                    metadata.location,
                    writer,  # type: ignore[arg-type]
                    resume_size=start,
                    headers=headers,
                    expected_size=remote.size,
                    displayed_filename=remote.path,
                )
        if not writer.valid:
            return file_digest(partial, remote)
        return digest.hexdigest()
