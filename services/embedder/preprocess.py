"""Image preprocessing: the pybioclip-compatible transform (default) or open_clip's own."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T

Transform = Callable[[Image.Image], torch.Tensor]


def pybioclip_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Transform:
    """ToTensor -> Resize to exactly size x size (bilinear, antialias, no crop) -> Normalize.

    The pre-built TreeOfLife index was embedded this way; open_clip's centre crop gives other vectors.
    """
    return T.Compose(
        [
            T.ToTensor(),
            T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.Normalize(mean, std),
        ]
    )


def describe(transform: Transform) -> list[str]:
    """The steps of a torchvision Compose, as text for /v1/model."""
    steps = getattr(transform, "transforms", [transform])
    return [" ".join(repr(step).split()) for step in steps]
