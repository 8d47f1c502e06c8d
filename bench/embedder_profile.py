"""Where the embedder service's time goes under concurrent clients: py-spy samples of every thread, by activity.

Starts the service (a real process on 127.0.0.1), sends `--clients` concurrent clients' images, and samples
all its threads with py-spy (`--native`, idle threads included) meanwhile. Each sample is put in one bucket by
its stack: the forward pass (`encode_image`), decoding (`decode_image`), preprocessing (the transform),
HTTP and multipart work on the event loop, the batcher, or idle (waiting). The shares say whether the CPUs
run the model or something else, and what the event loop thread does.

    python -m bench.embedder_profile --precision fp32 --clients 8 --requests-per-client 2
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.embedder import _free_port, _post, varied_images
from stack.processes import service

logger = logging.getLogger(__name__)

# First match wins, searched from the innermost frame outwards.
BUCKETS = (
    ("forward", ("encode_image", "embed_pixels", "embed_batch")),
    ("text", ("encode_text",)),
    ("decode", ("decode_image",)),
    ("preprocess", ("prepare", "_prepare", "transforms")),
    ("multipart/http", ("multipart", "h11", "httptools", "starlette/formparsers", "_read_uploads", "uvicorn")),
    ("json", ("jsonable_encoder", "serialize", "tolist", "model_dump", "render")),
    ("batcher", ("batching.py",)),
)


def bucket(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, marks in BUCKETS:
            if any(mark in frame for mark in marks):
                return name
    return "other"


def summarise(raw: Path) -> dict[str, object]:
    """py-spy's raw (collapsed) output: `thread;frame;frame count` lines -> samples per thread and bucket."""
    per_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    active: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        thread = stack.split(";", 1)[0]
        idle = any(mark in stack for mark in ("wait (threading.py", "select (selectors.py", "_worker (", "get (queue"))
        name = "idle" if idle and "encode_image" not in stack else bucket(stack)
        per_thread[thread][name] += int(count)
        if name != "idle":
            active[name] += int(count)
    total = sum(active.values()) or 1
    return {
        "active_share": {name: round(n / total, 3) for name, n in active.most_common()},
        "per_thread": {t: dict(c.most_common(6)) for t, c in per_thread.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-L-14")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--env", action="append", default=[], help="extra EMBEDDER_X=value for the service")
    parser.add_argument("--keep", type=Path, help="keep py-spy's raw output here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    env = {"EMBEDDER_MODEL": args.model, "EMBEDDER_RANDOM_WEIGHTS": "true", "EMBEDDER_PRECISION": args.precision}
    env["EMBEDDER_MAX_BATCH_SIZE"] = str(args.clients)
    env |= dict(item.split("=", 1) for item in args.env)
    images = varied_images(12)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as folder:
        process = service("embedder", port=_free_port(), env=env, log_dir=Path(folder))
        process.start()
        try:
            process.wait_ready(timeout=900)
            url = process.url + "/v1/embed/image"
            with httpx.Client(timeout=900) as client:
                _post(client, url, *images[0])
            raw = args.keep or Path(folder) / "profile.txt"
            assert process.process is not None
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(process.process.pid), "--native",
                 "--idle", "--threads", "-r", "50", "-f", "raw", "-o", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(1.0)

            def client_loop(index: int) -> list[float]:
                with httpx.Client(timeout=900) as client:
                    return [
                        _post(client, url, *images[(index * args.requests_per_client + r) % len(images)])
                        for r in range(args.requests_per_client)
                    ]

            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                latencies = [ms for found in pool.map(client_loop, range(args.clients)) for ms in found]
            seconds = time.perf_counter() - t0
            spy.send_signal(2)
            spy.wait(timeout=60)
        finally:
            process.stop(grace=60)
        log = process.log_tail(50)
        summary = summarise(raw) if raw.exists() else {"error": spy.stderr.read().decode()[-500:] if spy.stderr else ""}
    result = {
        "precision": args.precision,
        "env": env,
        "images_per_s": round(len(latencies) / seconds, 4),
        "seconds": round(seconds, 1),
        "batching": [line for line in log.splitlines() if "batching:" in line][-1:],
        **summary,
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
