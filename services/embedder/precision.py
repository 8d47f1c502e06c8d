"""Which numeric precision the model runs in: the choices, int8 through ONNX Runtime, and `auto`'s start-up probe.

`auto` decides by what PyTorch will actually run on this machine, not by the CPU's flags: the ATen
capability PyTorch dispatched to (`torch.backends.cpu.get_cpu_capability()`, which follows
`ATEN_CPU_CAPABILITY`), the bf16 hardware PyTorch itself detects, and a short timed probe: one of the
model's own transformer blocks, copied into each candidate precision and run at batch 1 on the model's
token count. docs/architecture.md ("Precision") says why each rule is there.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from services.common.settings import ConfigurationError, setting
from services.embedder.errors import one_line
from services.embedder.settings import EmbedderSettings

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
# What the input tensors are cast to; int8 quantizes activations itself, per token, inside each Linear layer.
INPUT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}
# A candidate other than fp32 must beat fp32 by this much in the probe: below it, timing noise decides.
PROBE_MARGIN = 0.9
PROBE_RUNS = 3  # timed runs per candidate, after one warm-up; the fastest counts
# A candidate whose warm-up alone takes this many times the best timed candidate is dropped unrepeated:
# emulated bf16 is 3-8x slower than fp32, and timing it three times would slow every start-up for nothing.
PROBE_GIVE_UP = 3.0


class PrecisionError(ConfigurationError):
    """A precision that cannot run here (fp16 on a CPU, int8 on a GPU); the message says what to set."""


@dataclass(frozen=True)
class PrecisionChoice:
    """What runs, what was asked for, and why: /v1/model shows it."""

    requested: str
    precision: str
    reason: str
    cpu_capability: str | None = None
    probe_ms: dict[str, float] = field(default_factory=dict)  # fastest timed run of one block, per candidate
    probe_seconds: float = 0.0  # the whole probe, warm-ups and copies included


def cpu_capability() -> str:
    """The vector ISA PyTorch's own kernels dispatch to here: DEFAULT, AVX2, AVX512, ... (after ATEN_CPU_CAPABILITY)."""
    return str(torch.backends.cpu.get_cpu_capability())


def native_bf16(capability: str) -> bool:
    """Whether PyTorch runs bf16 matrix products in hardware here: AVX512-BF16 or AMX as PyTorch detects them, and
    PyTorch dispatching to AVX-512 at all (limited to AVX2, it emulates bf16 even on a CPU that has them)."""
    if not capability.startswith("AVX512"):
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


class ImageTower(torch.nn.Module):
    """`encode_image` alone, as ONNX exports it: (n, 3, size, size) pixels -> (n, dim) vectors."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


class TextTower(torch.nn.Module):
    """`encode_text` alone, as ONNX exports it: (n, context) token ids -> (n, dim) vectors."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """The module as ONNX (opset 17, any batch size), through the TorchScript-based exporter: the torch.export-based
    one needs onnxscript besides, and exports ViT-L/14 no better. Its deprecation and tracer warnings are expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
        )


def _quantized(module: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """`module` exported to ONNX and dynamically quantized into `path` (written whole, then renamed into place)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as folder:
        exported, quantized = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        _export(module, example, exported)
        quiet = logging.getLogger()
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # the quantizer logs advice about pre-processing on the root logger
        try:
            # Weights int8 per tensor; activations quantized to uint8 per call (ONNX Runtime's dynamic recipe).
            quantize_dynamic(str(exported), str(quantized), weight_type=QuantType.QInt8)
        finally:
            quiet.setLevel(level)
        os.replace(quantized, path)
    return path


def _fingerprint(model: torch.nn.Module) -> str:
    """A digest of the weights and of the versions that shape the export: a cache key for the int8 files."""
    import onnxruntime

    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{torch.__version__} {onnxruntime.__version__} {type(model).__name__}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _session(path: Path, threads: int):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _tower(module: torch.nn.Module, example: torch.Tensor, path: Path, threads: int):  # type: ignore[no-untyped-def]
    """An ONNX Runtime session of `module` quantized, from `path` when it is there. The files are written whole and
    renamed into place, so only outside damage (a full disk's copy, an edit) leaves one unreadable: it is then made
    again, with a warning, rather than failing every start."""
    cached = path.is_file()
    try:
        return _session(_quantized(module, example, path), threads)
    except Exception as exc:  # ONNX Runtime raises its own types (InvalidProtobuf, Fail, ...) for a bad file
        if not cached:
            raise
        logger.warning("the cached int8 tower %s could not be read (%s); making it again", path, one_line(exc))
        path.unlink(missing_ok=True)
        return _session(_quantized(module, example, path), threads)


class Int8Towers:
    """The image and text towers with int8 weights and dynamically quantized activations, run by ONNX Runtime.

    Made from the loaded fp32 open_clip model: each tower is exported to ONNX and quantized with
    `onnxruntime.quantization.quantize_dynamic` (every MatMul and Gemm, the attention's q/k/v projection
    included). That takes about a minute for ViT-L/14 on 2 cores, so the files are kept under `cache_dir`,
    keyed by a digest of the weights, and reused on the next start. Outputs are float32, not normalised.
    """

    def __init__(self, model: torch.nn.Module, image_size: int, context_length: int, cache_dir: Path | None,
                 threads: int) -> None:  # fmt: skip
        started = time.perf_counter()
        temporary = None
        if cache_dir is None:
            temporary = tempfile.TemporaryDirectory(prefix="embedder-int8-")
            folder = Path(temporary.name)
        else:
            folder = cache_dir / "int8" / _fingerprint(model)
        try:
            pixels, tokens = torch.zeros(1, 3, image_size, image_size), torch.zeros(1, context_length, dtype=torch.long)
            self.image = _tower(ImageTower(model), pixels, folder / "image.onnx", threads)
            self.text = _tower(TextTower(model), tokens, folder / "text.onnx", threads)
        finally:
            if temporary is not None:
                temporary.cleanup()  # ONNX Runtime has read the files
        self.folder = None if temporary is not None else folder
        self.seconds = time.perf_counter() - started

    # The towers quantize their activations dynamically, with one scale per tensor (DynamicQuantizeLinear): run
    # as one batch, each input's vector would depend on the others' value ranges, and under the batcher those are
    # other callers' photos and texts. So every input runs on its own, and a vector is what its input gives alone.
    # ONNX Runtime already keeps the cores busy at batch 1 (docs/benchmarks/embedder.md: batches gained it
    # 0.93-1.20x), so this costs little.

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 pixels -> (B, dim) float32 vectors, one ONNX Runtime run per image."""
        return _each(self.image, pixels.float().numpy())

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, context) int64 tokens -> (B, dim) float32 vectors, one ONNX Runtime run per text."""
        return _each(self.text, tokens.numpy().astype(np.int64))


def _each(session, rows: np.ndarray) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The session's output for each row of `rows` run on its own, stacked: (B, dim)."""
    return torch.from_numpy(np.concatenate([session.run(None, {"input": row[None]})[0] for row in rows]))


def check(precision: str, device: torch.device) -> None:
    """Raise PrecisionError for a precision this device cannot run (`choose` says which ones it runs slowly)."""
    if precision == "fp16" and device.type == "cpu":
        raise PrecisionError(f"{setting('precision')}=fp16 is for GPUs; on the CPU use fp32, int8, bf16 or auto")
    if precision == "int8" and device.type != "cpu":
        raise PrecisionError(
            f"{setting('precision')}=int8 runs on the CPU (ONNX Runtime's CPU kernels); "
            f"on {device.type} use fp16 or auto"
        )


def probe_block(model: torch.nn.Module) -> tuple[torch.nn.Module, tuple[int, ...]] | None:
    """The image tower's first transformer block and the shape of its input at batch 1, or None when the tower
    is not an open_clip ViT (then there is nothing representative to time)."""
    visual = getattr(model, "visual", None)
    transformer = getattr(visual, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    grid = getattr(visual, "grid_size", None)
    if not blocks or grid is None:
        return None
    tokens = math.prod(grid) + 1 + int(getattr(visual, "num_registers", 0) or 0)
    width = int(transformer.width)
    shape = (1, tokens, width) if getattr(transformer, "batch_first", True) else (tokens, 1, width)
    return blocks[0], shape


class _Block(torch.nn.Module):
    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _candidate(block: torch.nn.Module, precision: str, x: torch.Tensor, folder: Path):  # type: ignore[no-untyped-def]
    """A callable running `block` on `x` in `precision`: a copy in torch, or (int8) its quantized ONNX export."""
    copied = copy.deepcopy(block).float()
    if precision == "int8":
        session = _session(_quantized(_Block(copied), x, folder / "block.onnx"), torch.get_num_threads())
        feed = {"input": x.numpy()}
        return lambda: session.run(None, feed)
    if precision == "bf16":
        copied, x = copied.to(torch.bfloat16), x.to(torch.bfloat16)
    return lambda: copied(x)


@torch.inference_mode()
def _time(run, give_up_ms: float) -> float:  # type: ignore[no-untyped-def]
    """Fastest of PROBE_RUNS timed runs (ms), after a warm-up; the warm-up's time when it exceeds give_up_ms."""
    t0 = time.perf_counter()
    run()
    warm = (time.perf_counter() - t0) * 1000
    if warm > give_up_ms:
        return warm
    runs = []
    for _ in range(PROBE_RUNS):
        t0 = time.perf_counter()
        run()
        runs.append((time.perf_counter() - t0) * 1000)
    return min(runs)


def probe(model: torch.nn.Module, candidates: list[str]) -> dict[str, float] | None:
    """ms per run of one of the model's transformer blocks at batch 1, per candidate precision (fp32 first)."""
    found = probe_block(model)
    if found is None:
        return None
    block, shape = found
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="embedder-probe-") as folder:
        for precision in candidates:
            candidate = _candidate(block, precision, x, Path(folder))
            best = min(timings.values(), default=math.inf)
            timings[precision] = round(_time(candidate, PROBE_GIVE_UP * best), 3)
            del candidate
    return timings


def choose(requested: str, device: torch.device, model: torch.nn.Module, *, auto_int8: bool) -> PrecisionChoice:
    """The precision to run `model` (built in fp32 when `requested` is auto on a CPU) in, and why.

    auto: fp16 on a CUDA GPU; fp32 on other GPUs; on the CPU the fastest in the probe among fp32, bf16 (only
    where `native_bf16`) and int8 (only with `auto_int8`), a candidate beating fp32 only by PROBE_MARGIN or more.
    Raises PrecisionError for an explicit precision the device cannot run.
    """
    if requested != "auto":
        check(requested, device)
        if device.type != "cpu":
            return PrecisionChoice(requested, requested, "set by the precision setting")
        capability = cpu_capability()  # said even when set: it is what explains a slow precision
        reason = "set by the precision setting"
        if requested == "bf16" and not native_bf16(capability):
            emulated = f"emulated: PyTorch runs {capability} kernels without native bf16, usually several times slower"
            logger.warning("bf16 precision %s", emulated)
            reason += f"; {emulated}"
        return PrecisionChoice(requested, requested, reason, capability)
    if device.type == "cuda":
        return PrecisionChoice(requested, "fp16", "CUDA GPU: fp16 (tensor cores; cosine to fp32 1.00000 measured)")
    if device.type != "cpu":
        return PrecisionChoice(requested, "fp32", f"{device.type}: fp32 (no reduced precision measured there)")
    capability = cpu_capability()
    bf16 = native_bf16(capability)
    candidates = ["fp32"] + (["bf16"] if bf16 else []) + (["int8"] if auto_int8 else [])
    started = time.perf_counter()
    timings = probe(model, candidates) if len(candidates) > 1 else None
    seconds = round(time.perf_counter() - started, 3)
    skipped = []
    if not bf16:
        skipped.append(f"bf16 not native ({capability} kernels)")
    if not auto_int8:
        skipped.append(f"int8 not enabled for auto ({EmbedderSettings.env_name('auto_int8')})")
    why_not = "; ".join(skipped)
    if timings is None:
        reason = "only fp32 to choose from" if len(candidates) == 1 else "no transformer block to probe"
        reason += f" ({why_not})" if why_not else ""
        return PrecisionChoice(requested, "fp32", reason, capability, {}, seconds)
    fastest = min(timings, key=lambda name: timings[name])
    chosen = fastest if fastest == "fp32" or timings[fastest] <= PROBE_MARGIN * timings["fp32"] else "fp32"
    measured = ", ".join(f"{name} {ms:.1f} ms" for name, ms in timings.items())
    reason = f"fastest in the probe ({measured}; one block at batch 1, {capability} kernels)"
    if chosen == "fp32" and fastest != "fp32":
        reason = f"fp32: {fastest} was not {1 - PROBE_MARGIN:.0%} faster in the probe ({measured})"
    reason += f"; {why_not}" if why_not else ""
    return PrecisionChoice(requested, chosen, reason, capability, timings, seconds)
