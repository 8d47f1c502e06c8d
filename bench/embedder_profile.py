"""Where the embedder's time goes under concurrent clients: the service's passes, the model's operators, its GEMMs.

Three measurements, one question each, run one after the other so that none shares the CPU with another:

1. The service, a real process on 127.0.0.1 logging each forward pass (EMBEDDER_LOG_LEVEL=DEBUG):
   `--singles` requests one at a time, then `--clients` clients x `--requests-per-client` requests. For each
   phase: images/s, the seconds its batcher spent running passes against the wall time, the passes' sizes and
   the waits between them, and the process's minor page faults and system CPU seconds (/proc/PID/stat).
   Is the service busy with forward passes, or with something between them?
2. In-process, torch.profiler over one forward pass at batch 1 and at batch `--clients`: ms per image each
   way and the operators' shares. What does a batch make cheaper?
3. The GEMMs that dominate a ViT (the MLP's: tokens x width by width x 4 width, and back) at M = tokens and
   M = clients x tokens, on the model's torch threads: GFLOP/s each way. How much cheaper can a batch be on
   this CPU at all, whatever the service does?

    python -m bench.embedder_profile                                  # ViT-L-14, fp32, 8 clients x 4
    python -m bench.embedder_profile --set malloc_threshold_mib=0      # glibc's own malloc policy, to compare

Prints a JSON report (and writes it to --out). A per-thread Python stack sampler was tried before and is gone:
with the clients in the service's process it counted their GIL contention as time between passes.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from pydantic import ValidationError

from bench.embedder import _free_port, _post, run_clients, varied_images
from bench.proc import ProcStat, proc_stat
from services.embedder.engine import load_resources
from services.embedder.model import LoadedModel
from services.embedder.settings import EmbedderSettings
from stack.processes import service

logger = logging.getLogger(__name__)

# The batcher's per-pass debug line (services/embedder/batching.py).
PASS = re.compile(r"a batch of (\d+) \(callers: (\d+)\): (\d+) ms gathering, (\d+) ms running")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least 1")
    return value


def _settings(args: argparse.Namespace) -> dict[str, str]:
    fields = {"model": args.model, "random_weights": "true", "precision": args.precision}
    fields |= {"max_batch_size": str(args.clients), **dict(item.split("=", 1) for item in args.set)}
    return fields


def _phase(pid: int, log: Path, run: Any) -> dict[str, Any]:
    """Run `run()`, which returns (images sent, seconds they took), and what the service did meanwhile."""
    lines_before = len(log.read_text().splitlines())
    before: ProcStat = proc_stat(pid)
    images, wall = run()
    after = proc_stat(pid)
    passes = [tuple(map(int, m.groups())) for m in map(PASS.search, log.read_text().splitlines()[lines_before:]) if m]
    running = sum(p[3] for p in passes) / 1000
    return {
        "images": images,
        "seconds": round(wall, 2),
        "images_per_s": round(images / wall, 3),
        "passes": [p[0] for p in passes],
        "seconds_in_passes": round(running, 2),
        "share_in_passes": round(running / wall, 3),
        "ms_per_image_in_passes": round(running * 1000 / max(1, sum(p[0] for p in passes))),
        # Before each pass but the phase's first, whose wait includes the idle time before the phase began.
        "waits_between_passes_ms": [p[2] for p in passes[1:]],
        "running_ms": [p[3] for p in passes],
        "minor_faults": after.minor_faults - before.minor_faults,
        "system_s": round(after.system_s - before.system_s, 2),
        "user_s": round(after.user_s - before.user_s, 2),
    }


def profile_service(args: argparse.Namespace) -> dict[str, Any]:
    """Part 1: the service as a process, one request at a time and then under concurrent clients."""
    env = {f"EMBEDDER_{name.upper()}": value for name, value in _settings(args).items()}
    env["EMBEDDER_LOG_LEVEL"] = "DEBUG"
    logs = Path(tempfile.mkdtemp(prefix="embedder-profile-"))
    process = service("embedder", port=_free_port(), env=env, log_dir=logs)
    process.start()
    images = varied_images(12)
    url = process.url + "/v1/embed/image"
    try:
        process.wait_ready(timeout=1800)
        assert process.process is not None and process.log_path is not None
        pid, log = process.process.pid, process.log_path
        with httpx.Client(timeout=1800) as client:
            for sample in images[:2]:  # the first real images are not timed (as in bench.embedder)
                _post(client, url, *sample)

            def singles() -> tuple[int, float]:
                started = time.perf_counter()
                for i in range(args.singles):
                    _post(client, url, *images[i % len(images)])
                return args.singles, time.perf_counter() - started

            one_at_a_time = _phase(pid, log, singles)

        def clients() -> tuple[int, float]:
            # Timed from the clients' common start, after they have connected (run_clients).
            return run_clients(url, images, args.clients, args.requests_per_client)

        time.sleep(args.pause)
        concurrent = _phase(pid, log, clients)
        rss_mb = round(int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[1]) / 1024)
    finally:
        process.stop(grace=60)
    return {
        "one_at_a_time": one_at_a_time,
        "concurrent": concurrent,
        "gain": round(concurrent["images_per_s"] / one_at_a_time["images_per_s"], 3),
        "rss_mb_after": rss_mb,
    }


def _top_operators(prof: torch.profiler.profile, total_ms: float, count: int = 8) -> dict[str, float]:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:count]
    return {e.key: round(e.self_cpu_time_total / 1000 / total_ms, 3) for e in events}


def profile_operators(args: argparse.Namespace, model: LoadedModel) -> dict[str, Any]:
    """Part 2: one forward pass at batch 1 and at batch `clients`, in-process, under torch.profiler."""
    pixels = torch.randn(args.clients, 3, model.image_size, model.image_size)
    model.embed_pixels(pixels[:1])
    model.embed_pixels(pixels)
    found: dict[str, Any] = {}
    for batch in (1, args.clients):
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            model.embed_pixels(pixels[:batch])
            times.append((time.perf_counter() - started) * 1000 / batch)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            model.embed_pixels(pixels[:batch])
            profiled_ms = (time.perf_counter() - started) * 1000
        found[f"batch_{batch}"] = {
            "ms_per_image": round(statistics.median(times), 1),
            "ms_per_image_runs": [round(t, 1) for t in times],
            "operator_shares": _top_operators(prof, profiled_ms) if model.int8 is None else "(ONNX Runtime: not seen)",
        }
    found["batch_gain"] = round(found["batch_1"]["ms_per_image"] / found[f"batch_{args.clients}"]["ms_per_image"], 3)
    return found


def profile_gemm(args: argparse.Namespace, model: LoadedModel) -> dict[str, Any]:
    """Part 3: the MLP's two fp32 GEMMs at one image's rows and at a batch's, GFLOP/s."""
    visual = model.model.visual
    width = getattr(getattr(visual, "transformer", None), "width", None)
    grid = getattr(visual, "grid_size", None)
    if width is None or grid is None:
        return {"skipped": f"{model.architecture}'s image tower is not a ViT open_clip describes"}
    tokens = grid[0] * grid[1] + 1  # the patches and the class token
    up, down = torch.randn(4 * width, width), torch.randn(width, 4 * width)
    found: dict[str, Any] = {"width": width, "tokens": tokens}
    with torch.inference_mode():
        for batch in (1, args.clients, 1, args.clients):  # twice, alternated: this machine's speed drifts
            rows = torch.randn(batch * tokens, width)
            torch.nn.functional.linear(torch.nn.functional.linear(rows, up), down)
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < args.gemm_seconds:
                torch.nn.functional.linear(torch.nn.functional.linear(rows, up), down)
                count += 1
            seconds = (time.perf_counter() - started) / count
            gflops = 2 * 2 * batch * tokens * width * 4 * width / seconds / 1e9
            found.setdefault(f"gflop_per_s_m{batch * tokens}", []).append(round(gflops))
    one, many = found[f"gflop_per_s_m{tokens}"], found[f"gflop_per_s_m{args.clients * tokens}"]
    found["batch_gain"] = round(statistics.mean(many) / statistics.mean(one), 3)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default="ViT-L-14", help="EMBEDDER_MODEL (random weights unless --set checkpoint=)")
    parser.add_argument("--precision", default="fp32", help="EMBEDDER_PRECISION")
    parser.add_argument("--clients", type=_positive, default=8, help="concurrent clients, and the largest batch")
    parser.add_argument("--requests-per-client", type=_positive, default=4, help="images each client sends in turn")
    parser.add_argument("--singles", type=_positive, default=6, help="requests one at a time before the clients")
    parser.add_argument("--repeats", type=_positive, default=3, help="forward passes per batch size in part 2")
    parser.add_argument("--gemm-seconds", type=float, default=3.0, help="how long each GEMM shape is timed")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between phases")
    parser.add_argument("--set", action="append", default=[], help="another embedder setting, name=value")
    parser.add_argument("--skip-service", action="store_true", help="parts 2 and 3 only")
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    for item in args.set:
        name = item.split("=", 1)[0]
        if "=" not in item or name not in EmbedderSettings.model_fields:
            parser.error(f"--set {item}: expected name=value with an embedder setting's name (e.g. torch_threads=2)")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    try:
        settings = EmbedderSettings.model_validate(_settings(args))
    except ValidationError as exc:
        parser.error(f"the embedder settings are invalid: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}")
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    report: dict[str, Any] = {"settings": _settings(args), "started": started}
    if not args.skip_service:
        report["service"] = profile_service(args)
    # In-process after the service has stopped, with its allocator policy: nothing else computes meanwhile.
    model = load_resources(settings)[0]  # the service's loader: its allocator policy and torch threads too
    report["malloc_threshold_mib"] = settings.malloc_threshold_mib
    report["torch_threads"] = torch.get_num_threads()
    report["operators"] = profile_operators(args, model)
    report["gemm"] = profile_gemm(args, model)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
