"""A tiny open_clip architecture with random weights, saved as a config and a checkpoint.

The tests and the offline demo load it through the embedder's real loading path
(EMBEDDER_MODEL + EMBEDDER_ARCHITECTURE_CONFIG + EMBEDDER_CHECKPOINT), as one would BioCLIP-2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch


@dataclass(frozen=True)
class TinyModel:
    name: str
    config: Path
    checkpoint: Path

    def env(self) -> dict[str, str]:
        """The embedder settings that load this model."""
        return {
            "EMBEDDER_MODEL": self.name,
            "EMBEDDER_ARCHITECTURE_CONFIG": str(self.config),
            "EMBEDDER_CHECKPOINT": str(self.checkpoint),
        }


def tiny_config(embed_dim: int, width: int) -> dict[str, object]:
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": width, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": 2, "layers": 1},
    }


def write_tiny_model(
    folder: Path, *, name: str = "tiny-clip", embed_dim: int = 64, width: int = 64, seed: int = 0
) -> TinyModel:
    """Write `name`.json and `name`.pt into `folder` (reusing them when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{name}.json"
    checkpoint = folder / f"{name}.pt"
    if not (config.is_file() and checkpoint.is_file()):
        config.write_text(json.dumps(tiny_config(embed_dim, width), indent=2))
        open_clip.add_model_config(config)
        torch.manual_seed(seed)
        model = open_clip.create_model(name)
        torch.save(model.state_dict(), checkpoint)
    return TinyModel(name=name, config=config, checkpoint=checkpoint)
