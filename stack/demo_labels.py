"""TreeOfLife-shaped label files for the demo species, so zero-shot prediction has labels offline.

The real files (`txt_emb_species.npy`, shape dim x N, and `txt_emb_species.json`, N entries
`[[kingdom .. epithet], common_name]`) come from the TreeOfLife-200M dataset. Here the demo's
species names go through the demo model's own text tower, loaded the way the embedder loads it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.embedder.model import load_model
from services.embedder.settings import EmbedderSettings
from stack.demo_collection import SPECIES, Species
from stack.tiny_model import TinyModel


def write_species_labels(folder: Path, model: TinyModel, species: Sequence[Species] = SPECIES) -> Path:
    """Write the two label files into `folder` (reusing them when already there)."""
    matrix_file, names_file = folder / "txt_emb_species.npy", folder / "txt_emb_species.json"
    if matrix_file.is_file() and names_file.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    loaded = load_model(
        EmbedderSettings(model=model.name, architecture_config=model.config, checkpoint=model.checkpoint)
    )
    names = [f"{kind.taxonomy[5]} {kind.taxonomy[6]}" for kind in species]
    vectors = loaded.embed_labels(names)
    np.save(matrix_file, vectors.T.astype(np.float32))  # (dim, N), as the TreeOfLife files store it
    names_file.write_text(json.dumps([[list(kind.taxonomy), kind.common_name] for kind in species]))
    return folder
