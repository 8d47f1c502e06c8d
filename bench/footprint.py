"""The embedder's memory with the real architecture (ViT-L/14, random weights), to size a container.

    python -m bench.footprint [--model ViT-L-14] [--port 0] [--images 8]

Starts `python -m services.embedder` as a process on 127.0.0.1, and prints its resident memory (RSS,
and private = RSS less file-backed pages) at ready, after one image and after `--images` concurrent
images (one batch). The TreeOfLife label matrix is not loaded here: it adds its file's size
(`np.load` reads it whole). Figures go into docs/benchmarks/footprint.md by hand.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

from stack.processes import ServiceProcess

logger = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_mb(pid: int) -> dict[str, float]:
    """RSS and its anonymous (private, not file-backed) part of a process, in MB."""
    info = psutil.Process(pid).memory_full_info()
    return {"rss_mb": round(info.rss / 1e6, 1), "private_mb": round((info.rss - info.shared) / 1e6, 1)}


def photo(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(768, 1024, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-L-14")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--log", type=Path, default=Path("var/bench/footprint-embedder.log"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args.log.parent.mkdir(parents=True, exist_ok=True)
    env = {
        "EMBEDDER_MODEL": args.model,
        "EMBEDDER_RANDOM_WEIGHTS": "true",
        "EMBEDDER_PRECISION": "fp32",
        "EMBEDDER_MAX_BATCH_SIZE": str(args.images),
    }
    process = ServiceProcess("embedder", "services.embedder", args.port or _free_port(), env, args.log)
    started = time.monotonic()
    process.start()
    try:
        process.wait_ready(timeout=1800)
        assert process.process is not None
        pid = process.process.pid
        result: dict[str, object] = {"model": args.model, "ready_s": round(time.monotonic() - started, 1)}
        result["ready"] = memory_mb(pid)
        with httpx.Client(base_url=process.url, timeout=1800) as client:

            def embed(seed: int) -> None:
                files = {"images": (f"{seed}.jpg", photo(seed), "image/jpeg")}
                client.post("/v1/embed/image", files=files).raise_for_status()

            embed(0)
            result["after_one_image"] = memory_mb(pid)
            with ThreadPoolExecutor(args.images) as pool:
                list(pool.map(embed, range(1, args.images + 1)))
            result[f"after_{args.images}_concurrent"] = memory_mb(pid)
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(result, indent=2))
    finally:
        process.stop()


if __name__ == "__main__":
    main()
