"""Embedder settings, from EMBEDDER_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class EmbedderSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDDER_", extra="ignore")

    port: int = Field(8001, ge=1, le=65535, description="TCP port to listen on.")
    model: str = Field(
        "hf-hub:imageomics/bioclip-2",
        description="open_clip model: an `hf-hub:` name, or an architecture name used with `checkpoint`.",
    )
    checkpoint: Path | None = Field(None, description="Local weights file for the `model` architecture.")
    architecture_config: Path | None = Field(
        None,
        description="An open_clip model config JSON to register before loading (for architectures "
        "open_clip does not ship; the file name without .json is the architecture name).",
    )
    random_weights: bool = Field(
        False, description="Allow an architecture with no checkpoint to run with random weights (benchmarks only)."
    )
    preprocessing: Literal["pybioclip", "open_clip"] = Field(
        "pybioclip",
        description="`pybioclip`: resize to exactly the model's size, no crop (matches the pre-built "
        "TreeOfLife index). `open_clip`: open_clip's own shortest-side resize and centre crop.",
    )
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, mps.")
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = Field(
        "auto",
        description="Weights and activations. `auto`: fp16 on a CUDA GPU; on the CPU the fastest of fp32, bf16 "
        "(only where PyTorch runs it natively: AVX512-BF16 or AMX) and int8 (only with `auto_int8`) in a short "
        "start-up probe. `fp32`; `bf16` (emulated, several times slower than fp32, without native support); "
        "`fp16` (GPU only); `int8` (CPU only: ONNX Runtime with int8 weights and dynamically quantized "
        "activations; the quantized towers are made at start-up, about a minute for ViT-L/14, and kept under "
        "`cache_dir`). Vectors are float32. /v1/model says what was chosen and why.",
    )
    auto_int8: bool = Field(
        False,
        description="Let `auto` choose int8 when the probe finds it faster. Off by default: turn it on (or set "
        "`precision=int8`) only after `make check-precision` has compared int8 with fp32 on your own weights, "
        "photos and collection (docs/operations.md).",
    )
    cache_dir: Path | None = Field(
        None, description="Where hub downloads are cached, and the int8 towers (under `int8/`) between starts."
    )
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads; unset lets torch choose.")
    max_batch_size: int = Field(
        8, ge=1, le=256, description="Most images in one forward pass; concurrent requests are batched together."
    )
    max_batch_wait_ms: float = Field(
        50.0,
        ge=0,
        le=1000,
        description="Longest a forward pass waits for images of other requests: those still being decoded, and, "
        "after a pass several requests shared, as many requests as shared it (the first request after such a pass "
        "waits however late it comes; a lone request after a lone pass never waits).",
    )
    malloc_threshold_mib: int = Field(
        1024,
        ge=0,
        le=2047,
        description="glibc's mmap and trim thresholds, in MiB (0-2047: mallopt takes a C int of bytes): a forward "
        "pass's large activations are freed into, "
        "and taken again from, the heap instead of being unmapped and page-faulted in again on every pass (the "
        "passes about 10% faster on CPU; docs/benchmarks/embedder.md). Memory a pass freed stays in the "
        "process for the next. Blocks above 64 MiB (batches of more than 15 ViT-L/14 images) are mapped afresh "
        "anyway: the model's thread has a glibc thread arena. 0 keeps glibc's own policy; without glibc (musl, "
        "macOS) nothing is set.",
    )
    max_images_per_request: int = Field(32, ge=1, description="Most images one request may carry.")
    max_request_bytes: int = Field(50_000_000, ge=1, description="Largest request body, in bytes.")
    max_image_pixels: int = Field(
        89_478_485,
        ge=1,
        description="Largest decoded image, in pixels (Pillow's decompression-bomb limit); a larger "
        "JPEG is decoded at 1/2, 1/4 or 1/8 scale to fit, any other format is refused.",
    )
    tree_of_life_dir: Path | None = Field(
        None,
        description="Folder with the TreeOfLife text embeddings `txt_emb_species.npy` and `txt_emb_species.json` "
        "(directly or under `embeddings/`), for POST /v1/classify without a label list. Unset: classify needs labels.",
    )
    label_templates: Literal["openai", "plain"] = Field(
        "openai",
        description="How request labels become text vectors: `openai` averages the 80 OpenAI ImageNet prompts "
        "(as pybioclip does; 80 text passes per new label, about 9 s each label for ViT-L/14 on 2 CPU cores), "
        "`plain` embeds each label as written (one pass).",
    )
    max_labels_per_request: int = Field(
        32, ge=2, description="Most labels one classify request may name (new ones cost text passes; see above)."
    )
    label_cache_size: int = Field(10_000, ge=0, description="Text vectors of request labels kept for reuse.")
