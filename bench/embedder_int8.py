"""Int8 candidates for the embedder, side by side: torchao's quantization API against ONNX Runtime's quantizer.

ViT-L-14 with random weights (BioCLIP-2's architecture), the image tower at batch 1, in one process, the
candidates timed in alternation (round after round) so that all see the same load from whatever else runs:

- `torch fp32`: the open_clip model as the embedder runs it (the reference for cosine);
- `torchao int8`: the same model after `quantize_(model, Int8DynamicActivationInt8WeightConfig())` (eager);
- `onnxruntime fp32` and `onnxruntime int8`: the image tower exported to ONNX, then
  `onnxruntime.quantization.quantize_dynamic` (int8 weights, dynamic int8 activations), on the CPU provider:
  what `EMBEDDER_PRECISION=int8` runs (services/embedder/precision.py).

    python -m bench.embedder_int8                      # this CPU
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m bench.embedder_int8   # PyTorch limited to AVX2

The two variables limit PyTorch (its ATen kernels and oneDNN); ONNX Runtime picks its kernels from the CPU's
own flags and has no such switch, so under them its figures are still this CPU's (the output says so).
Prints one JSON object; docs/benchmarks/embedder.md keeps the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch

from bench.embedder import machine, varied_images
from services.common.images import decode_image
from services.embedder.precision import ImageTower, cpu_capability
from services.embedder.preprocess import pybioclip_transform

logger = logging.getLogger(__name__)


def _onnx_sessions(model: torch.nn.Module, folder: Path, threads: int) -> dict[str, object]:
    """ONNX Runtime sessions for the fp32 export and its dynamically quantized copy; files already in `folder`
    (from an earlier run with the same seed) are reused, the export and quantization taking minutes here."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path, int8_path = folder / "image.onnx", folder / "image.int8.onnx"
    if fp32_path.is_file() and int8_path.is_file():
        exported = quantized = float("nan")
    else:
        exported, quantized = _export(model, fp32_path, int8_path, quantize_dynamic, QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sessions = {
        "onnxruntime fp32": ort.InferenceSession(str(fp32_path), options, providers=["CPUExecutionProvider"]),
        "onnxruntime int8": ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"]),
    }
    return {
        "sessions": sessions,
        "export_s": round(exported, 1),
        "quantize_s": round(quantized, 1),
        "fp32_mb": round(fp32_path.stat().st_size / 1e6),
        "int8_mb": round(int8_path.stat().st_size / 1e6),
    }


def _export(model: torch.nn.Module, fp32_path: Path, int8_path: Path, quantize_dynamic, qint8) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    # The TorchScript-based exporter: the torch.export-based one needs onnxscript, one more package for a benchmark.
    torch.onnx.export(
        ImageTower(model),
        (torch.zeros(1, 3, 224, 224),),
        str(fp32_path),
        dynamo=False,
        input_names=["pixels"],
        output_names=["vectors"],
        dynamic_axes={"pixels": {0: "batch"}, "vectors": {0: "batch"}},
        opset_version=17,
    )
    exported = time.perf_counter() - t0
    t0 = time.perf_counter()
    quantize_dynamic(str(fp32_path), str(int8_path), weight_type=qint8)
    quantized = time.perf_counter() - t0
    logger.info("ONNX export %.1f s, quantize_dynamic %.1f s", exported, quantized)
    return exported, quantized


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-L-14")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; each times every candidate once")
    parser.add_argument("--images", type=int, default=12, help="varied images for the cosine to fp32")
    parser.add_argument("--no-onnx", action="store_true", help="torch candidates only")
    parser.add_argument("--onnx-dir", type=Path, help="keep (and reuse) the ONNX files here")
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logger.setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, pretrained=None).eval()
    size = int(model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size)
    transform = pybioclip_transform(size, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    pixels = torch.stack([transform(decode_image(data, name, 89_478_485)) for name, data in varied_images(args.images)])
    t0 = time.perf_counter()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    int8 = copy.deepcopy(model)
    quantize_(int8, Int8DynamicActivationInt8WeightConfig())
    quantize_s = time.perf_counter() - t0

    def torch_runner(m: torch.nn.Module):  # type: ignore[no-untyped-def]
        @torch.inference_mode()
        def run(x: torch.Tensor) -> np.ndarray:
            return m.encode_image(x).float().numpy()

        return run

    runners = {"torch fp32": torch_runner(model), "torchao int8": torch_runner(int8)}
    onnx: dict[str, object] = {}
    folder = tempfile.TemporaryDirectory(prefix="bench-int8-")
    if not args.no_onnx:
        where = args.onnx_dir or Path(folder.name)
        where.mkdir(parents=True, exist_ok=True)
        onnx = _onnx_sessions(model, where, torch.get_num_threads())
        for name, session in onnx.pop("sessions").items():  # type: ignore[union-attr]
            runners[name] = lambda x, s=session: s.run(None, {"pixels": x.numpy()})[0]  # type: ignore[misc]
    one = pixels[:1]
    for run in runners.values():
        run(one)  # warm-up: allocations, kernel choice
    timings: dict[str, list[float]] = {name: [] for name in runners}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for name, run in runners.items():
            time.sleep(0.5)  # let the previous candidate's spinning threads settle
            t0 = time.perf_counter()
            run(pixels[r % len(pixels)][None])
            timings[name].append(round((time.perf_counter() - t0) * 1000, 1))
        logger.info("round %d: %s", r + 1, {name: ms[-1] for name, ms in timings.items()})
    load.append(os.getloadavg()[0])
    reference = runners["torch fp32"](pixels)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    cosines = {}
    for name, run in runners.items():
        vectors = np.concatenate([run(pixels[i : i + 4]) for i in range(0, len(pixels), 4)])
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        found = (vectors * reference).sum(axis=1)
        cosines[name] = {"min": round(float(found.min()), 6), "median": round(float(np.median(found)), 6)}
    folder.cleanup()
    result = {
        "command": "python -m bench.embedder_int8 " + " ".join(argv if argv is not None else sys.argv[1:]),
        "env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
        "torch_cpu_capability": cpu_capability(),
        "threads": torch.get_num_threads(),
        "note": "ONNX Runtime ignores ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA: its figures are this CPU's",
        "machine": machine(),
        "load_average": load,
        "ms_batch_1": {name: {"median": statistics.median(ms), "runs": ms} for name, ms in timings.items()},
        "ratio_to_torch_fp32": {
            name: round(statistics.median(ms) / statistics.median(timings["torch fp32"]), 3)
            for name, ms in timings.items()
        },
        "cosine_to_torch_fp32": cosines,
        "torchao_quantize_s": round(quantize_s, 1),
        "onnx": onnx,
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
