"""Run pybioclip's TreeOfLifeClassifier on image files; print its top-5 at each rank named, as JSON.

`python -m tests.embedder.pybioclip_oracle RANK[,RANK] IMAGE...`, with HF_ENDPOINT at the local hub:
pybioclip then loads `hf-hub:imageomics/bioclip-2` and the TreeOfLife-200M label files from there.
"""

from __future__ import annotations

import json
import sys

from bioclip import Rank, TreeOfLifeClassifier
from PIL import Image


def main() -> int:
    ranks, paths = sys.argv[1].split(","), sys.argv[2:]
    classifier = TreeOfLifeClassifier(device="cpu")
    images = [Image.open(path).convert("RGB") for path in paths]
    out: dict[str, list[list[dict[str, object]]]] = {}
    for rank in ranks:
        predictions = classifier.predict(images, Rank[rank.upper()], k=5)
        per_image: list[list[dict[str, object]]] = [[] for _ in images]
        for item in predictions:
            per_image[int(item["file_name"])].append(item)
        out[rank] = per_image
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
