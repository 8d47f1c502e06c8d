"""Whether a data folder holds the real data: complete, partial (and what is missing), or absent."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from collection.hub import PARTS
from services.common.datalock import LOCK_FILE, read_lock
from services.search.settings import INDEX_FILE

logger = logging.getLogger(__name__)


def model_folder(cache: Path, repo: str) -> Path:
    """huggingface_hub's cache folder of a model repo (`models--org--name`), as open_clip reads it."""
    return cache / ("models--" + repo.replace("/", "--"))


@dataclass
class DataState:
    """`complete`: every part pinned and on disk; `partial`: a lock file, but parts missing; `own`: a
    collection without a lock file (built here, or copied by hand); `absent`: none of it."""

    kind: str
    data_dir: Path
    missing: list[str] = field(default_factory=list)  # "part: file" lines
    missing_parts: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the service settings that use the data

    def completion(self) -> str:
        """The command that downloads what is missing."""
        default = self.data_dir.resolve() == Path("data").resolve()
        base = "python -m collection download" + ("" if default else f" --data-dir {self.data_dir}")
        only = "".join(f" --only {part}" for part in self.missing_parts)
        return ("make data, or " if default else "") + base + only


def data_state(data_dir: Path) -> DataState:
    lock = read_lock(data_dir)
    if lock is None:
        kind = "own" if (data_dir / INDEX_FILE).is_file() else "absent"
        return DataState(kind, data_dir)
    parts = lock.get("parts") or {}
    state = DataState("complete", data_dir)
    for name, part in PARTS.items():
        pinned = parts.get(name)
        if not pinned:
            state.missing.append(f"{name}: not downloaded ({part.repo})")
            state.missing_parts.append(name)
            continue
        if name == "model":
            cache = data_dir / pinned.get("cache_dir", "models")  # an absolute cache_dir stays itself
            folder = model_folder(cache, pinned["repo"]) / "snapshots" / pinned["commit"]
        else:
            folder = data_dir
        absent = [path for path in pinned.get("files", {}) if not (folder / path).is_file()]
        if absent:
            state.missing += [f"{name}: {folder / path}" for path in absent]
            state.missing_parts.append(name)
    if state.missing:
        state.kind = "partial"
        return state
    model = parts["model"]
    cache = data_dir / model.get("cache_dir", "models")
    state.env = {
        "SEARCH_DATA_DIR": str(data_dir),
        "EMBEDDER_MODEL": f"hf-hub:{model['repo']}",
        "EMBEDDER_CACHE_DIR": str(cache),
        "EMBEDDER_TREE_OF_LIFE_DIR": str(data_dir),
        # Everything is on disk: the embedder's first start needs no network.
        "HF_HUB_OFFLINE": "1",
    }
    logger.debug("%s is complete (%s)", data_dir, LOCK_FILE)
    return state
