"""`make run`: the four services as local processes; the offline demo when no collection is configured.

With SEARCH_DATA_DIR (or SEARCH_INDEX_PATH and SEARCH_METADATA_PATH) pointing at a collection, it runs
the services on it with the EMBEDDER_* model. Otherwise it looks at ./data (STACK_DATA_DIR): complete
(`make data` finished: collection, labels, model) it serves that; partial, it says what is missing and
the command that completes it, and stops; a collection of one's own without a lock file, it serves
that with the EMBEDDER_* model; nothing, it first builds a small demo (generated photos, a tiny
random-weights model, a local image source) under var/demo. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from collection.state import DataState, data_state
from services.search.settings import INDEX_FILE, METADATA_FILE
from stack.demo_collection import SPECIES, generate_collection, published_under, write_manifest
from stack.demo_labels import write_species_labels
from stack.ports import Claim, PortInUse, check_free
from stack.processes import ROOT, SERVICES, ServiceProcess, StartFailed, service, stop_all
from stack.tiny_model import write_tiny_model

logger = logging.getLogger(__name__)

DEMO_DIR = Path(os.environ.get("STACK_DEMO_DIR", ROOT / "var" / "demo"))
DATA_DIR = Path(os.environ.get("STACK_DATA_DIR", ROOT / "data"))
DEMO_SOURCE_PORT = int(os.environ.get("STACK_DEMO_SOURCE_PORT", "8010"))
DEMO_PER_SPECIES = 25
DEMO_NOTICE = (
    "Offline demo: {records} generated pictures of {species} species and a tiny model with random weights. "
    "Hits show how the system works, not what BioCLIP-2 finds. README.md says how to use real data."
)


def configured_collection() -> bool:
    return bool(os.environ.get("SEARCH_DATA_DIR") or os.environ.get("SEARCH_INDEX_PATH"))


def build_demo(embedder: ServiceProcess, source_url: str) -> int:
    """Generate the demo photos and build their collection through the running embedder."""
    images = DEMO_DIR / "images"
    manifest = DEMO_DIR / "manifest.csv"
    collection = DEMO_DIR / "collection"
    if manifest.is_file() and not published_under(manifest, source_url):
        logger.info("the demo's image source is now %s: making the demo again for it", source_url)
        manifest.unlink()
        shutil.rmtree(collection, ignore_errors=True)
    if not manifest.is_file():
        logger.info("generating %d demo pictures", DEMO_PER_SPECIES * len(SPECIES))
        rows = generate_collection(images, per_species=DEMO_PER_SPECIES, base_url=source_url)
        for row in rows:
            row["path"] = str(Path("images") / row["path"])
        write_manifest(rows, manifest)
    if not (collection / INDEX_FILE).is_file() or not (collection / METADATA_FILE).is_file():
        logger.info("building the demo collection through the embedder")
        subprocess.run(
            [sys.executable, "-m", "collection", "build", "--manifest", str(manifest),
             "--embedder", embedder.url, "--out", str(collection)],
            cwd=ROOT, check=True,
        )  # fmt: skip
    return sum(1 for _ in manifest.open()) - 1


def defaults(env: dict[str, str]) -> dict[str, str]:
    """`env` less what the user has set: the runner's values are defaults, the user's settings win."""
    return {key: value for key, value in env.items() if key not in os.environ}


def claims(demo: bool) -> list[Claim]:
    """Every port the run will listen on, as the services will read it from the environment."""
    found = [
        Claim(name, os.environ.get(f"{name.upper()}_HOST", "127.0.0.1"), service(name).port, f"{name.upper()}_PORT")
        for name in SERVICES
    ]
    if demo:
        found.append(Claim("demo-source", "127.0.0.1", DEMO_SOURCE_PORT, "STACK_DEMO_SOURCE_PORT"))
    return found


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM (from a supervisor) stops the stack the same way Ctrl-C does.
    raise KeyboardInterrupt


def run(log_dir: Path) -> int:
    log_dir.mkdir(parents=True, exist_ok=True)
    processes: list[ServiceProcess] = []
    data = DataState("configured", DATA_DIR) if configured_collection() else data_state(DATA_DIR)
    if data.kind == "partial":
        missing = "\n  ".join(data.missing)
        logger.error("%s is incomplete; missing:\n  %s\nComplete it with: %s", DATA_DIR, missing, data.completion())
        return 1
    demo = data.kind == "absent"

    def start(process: ServiceProcess) -> ServiceProcess:
        processes.append(process)
        process.start()
        process.wait_ready()
        logger.info("%s ready on %s", process.name, process.url)
        return process

    signal.signal(signal.SIGTERM, _interrupt)
    # Explicitly too: a runner started in the background by a shell inherits SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    try:
        check_free(claims(demo))
        search_env: dict[str, str] = {}
        gateway_env: dict[str, str] = {}
        if demo:
            logger.info("no collection configured: starting the offline demo (data in %s)", DEMO_DIR)
            model = write_tiny_model(DEMO_DIR / "model", name="tiny-demo-clip")
            images = DEMO_DIR / "images"
            images.mkdir(parents=True, exist_ok=True)
            source = start(
                ServiceProcess(
                    "demo-source", "stack.image_server", DEMO_SOURCE_PORT,
                    args=["--dir", str(images), "--port", str(DEMO_SOURCE_PORT)],
                    log_path=log_dir / "demo-source.log", ready_path="/",
                )
            )  # fmt: skip
            labels = write_species_labels(DEMO_DIR / "labels", model)
            embedder_env = defaults({**model.env(), "EMBEDDER_TREE_OF_LIFE_DIR": str(labels)})
            embedder = start(service("embedder", env=embedder_env, log_dir=log_dir))
            records = build_demo(embedder, source.url)
            search_env["SEARCH_DATA_DIR"] = str(DEMO_DIR / "collection")
            gateway_env["GATEWAY_NOTICE"] = DEMO_NOTICE.format(records=records, species=len(SPECIES))
        else:
            if data.kind == "complete":
                logger.info("serving the downloaded data in %s", DATA_DIR)
            elif data.kind == "own":
                search_env["SEARCH_DATA_DIR"] = str(DATA_DIR)
            embedder_env = defaults({k: v for k, v in data.env.items() if k != "SEARCH_DATA_DIR"})
            embedder = start(service("embedder", env=embedder_env, log_dir=log_dir))
            search_env |= {k: v for k, v in data.env.items() if k.startswith("SEARCH_")}
        search = start(service("search", env=defaults(search_env), log_dir=log_dir))
        fetcher_env = {"FETCHER_CACHE_DIR": str(ROOT / "var" / "cache" / "fetcher")}
        if demo:
            # The demo's image source is on this machine, which the fetcher refuses otherwise: exempt its own
            # address and port only, not the machine's other services (the gateway, the embedder, ...).
            fetcher_env["FETCHER_ALLOW_PRIVATE_NETWORKS"] = f"127.0.0.1:{DEMO_SOURCE_PORT}"
        fetcher = start(service("fetcher", env=defaults(fetcher_env), log_dir=log_dir))
        for backend in (embedder, search, fetcher):
            gateway_env[f"GATEWAY_{backend.name.upper()}_URL"] = backend.url
        gateway = start(service("gateway", env=defaults(gateway_env), log_dir=log_dir))
        print(f"\nReady: open {gateway.url}/  (API docs: {gateway.url}/docs; logs in {log_dir}). Ctrl-C stops.\n")
        while all(p.process is not None and p.process.poll() is None for p in processes):
            time.sleep(0.5)
        failed = next(p for p in processes if p.process is not None and p.process.poll() is not None)
        logger.error("%s stopped unexpectedly:\n%s", failed.name, failed.log_tail())
        return 1
    except (PortInUse, StartFailed) as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        logger.info("stopping")
        return 0
    finally:
        stop_all(processes)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__.split("\n")[0])
    parser.add_argument("--logs", type=Path, default=ROOT / "var" / "logs", help="where service logs go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("open_clip").setLevel(logging.WARNING)
    return run(args.logs)
