"""Generated organism-like photos with real taxonomy: the offline demo's collection and the tests' data.

Nothing here is a real photo: each species gets a look of its own (colours and a pattern),
drawn with random placement, size and background, so that images of one species resemble
each other more than they resemble the others.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from services.common.vocabulary import RANKS


@dataclass(frozen=True)
class Species:
    taxonomy: tuple[str, str, str, str, str, str, str]  # kingdom .. species epithet
    common_name: str
    body: tuple[int, int, int]
    mark: tuple[int, int, int]
    pattern: str  # stripes, spots, rings, rays, blotches
    background: tuple[int, int, int]


SPECIES: tuple[Species, ...] = (
    Species(("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Danaus", "plexippus"),
            "monarch", (235, 120, 20), (20, 20, 20), "stripes", (120, 160, 80)),
    Species(("Animalia", "Arthropoda", "Insecta", "Hymenoptera", "Apidae", "Apis", "mellifera"),
            "western honey bee", (230, 180, 40), (40, 30, 20), "stripes", (200, 200, 120)),
    Species(("Animalia", "Arthropoda", "Insecta", "Coleoptera", "Coccinellidae", "Coccinella", "septempunctata"),
            "seven-spot ladybird", (210, 30, 30), (15, 15, 15), "spots", (90, 150, 60)),
    Species(("Animalia", "Chordata", "Aves", "Passeriformes", "Cardinalidae", "Cardinalis", "cardinalis"),
            "northern cardinal", (200, 20, 40), (60, 10, 10), "blotches", (170, 190, 210)),
    Species(("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Cyanocitta", "cristata"),
            "blue jay", (60, 110, 210), (240, 240, 250), "blotches", (150, 140, 120)),
    Species(("Fungi", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita", "muscaria"),
            "fly agaric", (220, 40, 30), (250, 245, 230), "spots", (70, 60, 40)),
    Species(("Plantae", "Tracheophyta", "Magnoliopsida", "Asterales", "Asteraceae", "Helianthus", "annuus"),
            "common sunflower", (250, 200, 30), (90, 60, 20), "rays", (120, 170, 230)),
    Species(("Plantae", "Tracheophyta", "Magnoliopsida", "Fagales", "Fagaceae", "Quercus", "robur"),
            "English oak", (70, 130, 50), (40, 80, 30), "blotches", (200, 220, 240)),
    Species(("Animalia", "Chordata", "Amphibia", "Anura", "Ranidae", "Lithobates", "catesbeianus"),
            "American bullfrog", (100, 130, 60), (60, 70, 30), "spots", (60, 90, 110)),
    Species(("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Panthera", "tigris"),
            "tiger", (225, 130, 40), (30, 20, 15), "stripes", (60, 100, 40)),
    Species(("Plantae", "Tracheophyta", "Magnoliopsida", "Lamiales", "Lamiaceae", "Lavandula", "angustifolia"),
            "English lavender", (140, 100, 200), (80, 140, 70), "rays", (220, 210, 180)),
    Species(("Fungi", "Basidiomycota", "Agaricomycetes", "Polyporales", "Polyporaceae", "Trametes", "versicolor"),
            "turkey tail", (150, 110, 70), (230, 220, 200), "rings", (50, 70, 40)),
)  # fmt: skip

PUBLISHERS = (
    ("gbif", "iNaturalist.org"),
    ("gbif", "iNaturalist.org"),
    ("gbif", "Naturalis Biodiversity Center"),
    ("eol", "Flickr"),
    ("bioscan", "BIOSCAN"),
)


def _jitter(colour: tuple[int, int, int], rng: random.Random, amount: int = 25) -> tuple[int, int, int]:
    r, g, b = (max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)
    return (r, g, b)


def draw_specimen(species: Species, rng: random.Random, size: tuple[int, int] = (320, 256)) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size, _jitter(species.background, rng, 30))
    draw = ImageDraw.Draw(image)
    for _ in range(12):  # background clutter
        x, y, r = rng.randrange(width), rng.randrange(height), rng.randint(5, 30)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_jitter(species.background, rng, 45))
    cx, cy = width // 2 + rng.randint(-30, 30), height // 2 + rng.randint(-25, 25)
    rx, ry = rng.randint(60, 100), rng.randint(45, 80)
    box = (cx - rx, cy - ry, cx + rx, cy + ry)
    body, mark = _jitter(species.body, rng), _jitter(species.mark, rng, 15)
    if species.pattern == "rays":
        for k in range(16):
            angle = k / 16 * 6.283 + rng.random() * 0.2
            ex = cx + int(rx * 1.1 * math.cos(angle))
            ey = cy + int(ry * 1.1 * math.sin(angle))
            draw.line((cx, cy, ex, ey), fill=body, width=rng.randint(10, 16))
        draw.ellipse((cx - rx // 3, cy - ry // 3, cx + rx // 3, cy + ry // 3), fill=mark)
    elif species.pattern == "rings":
        for k in range(6, 0, -1):
            colour = body if k % 2 else mark
            draw.ellipse((cx - rx * k // 6, cy - ry * k // 6, cx + rx * k // 6, cy + ry * k // 6), fill=colour)
    else:
        draw.ellipse(box, fill=body)
        if species.pattern == "stripes":
            for k in range(-rx, rx, rng.randint(16, 24)):
                draw.line((cx + k, cy - ry, cx + k + rng.randint(-10, 10), cy + ry), fill=mark, width=6)
            draw.ellipse(box, outline=mark, width=5)
        elif species.pattern == "spots":
            for _ in range(rng.randint(5, 9)):
                sx, sy = cx + rng.randint(-rx // 2, rx // 2), cy + rng.randint(-ry // 2, ry // 2)
                sr = rng.randint(6, 13)
                draw.ellipse((sx - sr, sy - sr, sx + sr, sy + sr), fill=mark)
        else:  # blotches
            for _ in range(3):
                bx, by = cx + rng.randint(-rx // 2, rx // 2), cy + rng.randint(-ry // 2, ry // 2)
                draw.ellipse((bx - rx // 3, by - ry // 4, bx + rx // 3, by + ry // 4), fill=mark)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image.filter(ImageFilter.GaussianBlur(rng.random() * 1.2))


def generate_collection(
    folder: Path, *, per_species: int, base_url: str, seed: int = 7, species: tuple[Species, ...] = SPECIES
) -> list[dict[str, Any]]:
    """Write JPEGs under folder/photos/<n>/original.jpg and return their manifest rows.

    The rows name both the local file (`path`, relative to `folder`) and where the demo source
    publishes it (`url`); about one row in ten has no URL, like records with no published image.
    """
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    number = 1000
    for index in range(per_species):
        for kind in species:
            number += 1
            relative = Path("photos") / str(number) / "original.jpg"
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            draw_specimen(kind, rng).save(folder / relative, quality=90)
            dataset, publisher = PUBLISHERS[(number + index) % len(PUBLISHERS)]
            published = rng.random() >= 0.1
            rows.append(
                {
                    "path": str(relative),
                    "url": f"{base_url.rstrip('/')}/{relative.as_posix()}" if published else "",
                    **dict(zip(RANKS, kind.taxonomy, strict=True)), "common_name": kind.common_name,
                    "source_dataset": dataset, "source_id": str(4_000_000_000 + number), "publisher": publisher,
                    "img_type": "Image", "basisOfRecord": "HUMAN_OBSERVATION",
                    "in_bioclip2_training": rng.random() < 0.5,
                }
            )  # fmt: skip
    return rows


def published_under(manifest: Path, base_url: str) -> bool:
    """Whether the manifest's image URLs are those of a demo source at `base_url` (every row with a URL starts
    with it). False for a manifest made for a source at another address (another STACK_DEMO_SOURCE_PORT):
    a collection built from it would point every image at an address nobody serves."""
    prefix = base_url.rstrip("/") + "/"
    with manifest.open(newline="") as rows:
        urls = [row["url"] for row in csv.DictReader(rows) if row.get("url")]
    return bool(urls) and all(url.startswith(prefix) for url in urls)


def write_manifest(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
