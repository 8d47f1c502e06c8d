"""Where the embedder service's time goes under concurrent clients: every thread sampled, by activity.

Runs the service app under uvicorn in this process (127.0.0.1, a free port), sends `--clients` concurrent
clients' images from other threads, and meanwhile samples the Python stack of every service thread (the
event loop, the blocking pool's workers) every 10 ms with `sys._current_frames()`. A sample is put in one
bucket by its stack: the forward pass (`encode_image`), decoding (`decode_image`), preprocessing (the
transform), multipart and HTTP work, JSON, the batcher, or idle (waiting for work). The shares say whether
the CPUs run the model or something else, and what the event loop thread does. (py-spy, the usual tool,
cannot read this machine's processes.)

    python -m bench.embedder_profile --precision fp32 --clients 8 --requests-per-client 2
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import httpx
import uvicorn

from bench.embedder import _free_port, _post, varied_images
from services.embedder.app import create_app
from services.embedder.settings import EmbedderSettings

logger = logging.getLogger(__name__)

# First match wins, searched from the innermost frame outwards.
BUCKETS = (
    ("forward", ("encode_image", "embed_pixels", "embed_batch", "run (onnxruntime")),
    ("text", ("encode_text",)),
    ("decode", ("decode_image",)),
    ("preprocess", ("prepare", "transforms")),
    ("multipart/http", ("multipart", "h11_impl", "httptools_impl", "formparsers", "_read_uploads", "starlette/")),
    ("json", ("jsonable_encoder", "serialize", "tolist", "model_dump", "render")),
    ("batcher", ("batching.py",)),
)
IDLE = ("threading.py)", "selectors.py)", "queue.py)", "_worker (futures/thread.py)")  # waiting for work


def bucket(frames: list[str]) -> str:
    if frames and frames[-1].endswith(IDLE):
        return "idle"
    for frame in reversed(frames):
        for name, marks in BUCKETS:
            if any(mark in frame for mark in marks):
                return name
    return "other"


class Sampler(threading.Thread):
    """Samples the stacks of the threads not started by this benchmark, every `interval` seconds."""

    def __init__(self, interval: float, skip: set[int]) -> None:
        super().__init__(name="sampler", daemon=True)
        self.interval, self.skip = interval, skip
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.stop = threading.Event()
        self.innermost: collections.Counter[str] = collections.Counter()

    def run(self) -> None:
        names = {}
        while not self.stop.wait(self.interval):
            names.update({t.ident: t.name for t in threading.enumerate()})
            for ident, frame in sys._current_frames().items():
                name = names.get(ident, str(ident))
                if ident in self.skip or name.startswith(("client", "sampler")):
                    continue
                frames = [
                    f"{f.name} ({'/'.join(f.filename.rsplit('/', 2)[-2:])})" for f in traceback.extract_stack(frame)
                ]
                if frames and not frames[-1].endswith(("threading.py)", "selectors.py)", "queue.py)")):
                    self.innermost[frames[-1]] += 1
                kind = "event loop" if any("run_forever" in f for f in frames) else "worker"
                self.counts[kind][bucket(frames)] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-L-14")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="another embedder setting, name=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    fields = {"model": args.model, "random_weights": True, "precision": args.precision, "port": _free_port()}
    fields |= {"max_batch_size": args.clients} | dict(item.split("=", 1) for item in args.set)
    settings = EmbedderSettings.model_validate(fields)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port,
                                           log_config=None, access_log=False))  # fmt: skip
    serving = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    serving.start()
    base = f"http://127.0.0.1:{settings.port}"
    images = varied_images(12)
    with httpx.Client(timeout=1800) as client:
        while client.get(base + "/readyz").status_code != 200:
            time.sleep(0.2)
        _post(client, base + "/v1/embed/image", *images[0])

    def client_loop(index: int) -> list[float]:
        with httpx.Client(timeout=1800) as client:
            return [
                _post(client, base + "/v1/embed/image", *images[(index * args.requests_per_client + r) % len(images)])
                for r in range(args.requests_per_client)
            ]

    sampler = Sampler(0.01, {threading.get_ident()})
    sampler.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients, thread_name_prefix="client") as pool:
        latencies = [ms for found in pool.map(client_loop, range(args.clients)) for ms in found]
    seconds = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    stats = server.config.app.state.embedder.batcher.stats  # type: ignore[attr-defined]
    server.should_exit = True
    serving.join(timeout=60)
    result = {
        "settings": {k: v for k, v in fields.items() if k != "port"},
        "images_per_s": round(len(latencies) / seconds, 4),
        "seconds": round(seconds, 1),
        "batches": dict(sorted(stats.sizes.items())),
        "samples_per_thread_kind": {kind: dict(c.most_common()) for kind, c in sampler.counts.items()},
        "busiest_frames": dict(sampler.innermost.most_common(12)),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
