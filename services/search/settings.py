"""Search settings, from SEARCH_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings

if TYPE_CHECKING:
    from services.search.engine import Limits

INDEX_FILE = Path("faiss") / "index.index"
METADATA_FILE = Path("duckdb") / "metadata.duckdb"
MILVUS_LITE_FILE = Path("milvus") / "collection.db"
MILVUS_COLLECTION = "bioclip_search"


class SearchSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SEARCH_", extra="ignore")

    port: int = Field(8002, ge=1, le=65535, description="TCP port to listen on.")
    backend: Literal["faiss", "milvus"] = Field(
        "faiss",
        description="What finds the nearest vectors: `faiss` (the index file, filters applied by over-fetching) or "
        "`milvus` (a Milvus collection loaded by `python -m collection milvus-load`, filtered during the search). "
        "The metadata (DuckDB and the sidecar) is read the same way for both.",
    )
    milvus_uri: str | None = Field(
        None,
        description="With SEARCH_BACKEND=milvus: a Milvus server (`http://host:19530`) or a milvus-lite folder "
        "(a path ending in `.db`: the embedded Milvus, in this process); default data_dir/milvus/collection.db.",
    )
    milvus_collection: str = Field(
        MILVUS_COLLECTION, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$", description="The Milvus collection's name."
    )
    milvus_token: SecretStr | None = Field(
        None, description="A Milvus server's credentials (`user:password` or an API key); unset: none."
    )
    milvus_timeout_s: float = Field(30.0, gt=0, description="Longest wait for one Milvus call, in seconds.")
    data_dir: Path = Field(
        Path("data"),
        description="A collection folder laid out like the pre-built one: faiss/index.index and "
        "duckdb/metadata.duckdb.",
    )
    index_path: Path | None = Field(None, description="The FAISS index file; default data_dir/faiss/index.index.")
    metadata_path: Path | None = Field(
        None, description="The DuckDB metadata file; default data_dir/duckdb/metadata.duckdb."
    )
    sidecar_path: Path | None = Field(
        None,
        description="The lookup sidecar folder (per-id scope flags and taxon codes; see `python -m "
        "collection sidecar`); default the metadata file's path with `.lookup` for `.duckdb`. Without "
        "one, candidates are judged from DuckDB rows, which is slower.",
    )
    use_sidecar: bool = Field(True, description="Use the lookup sidecar when there is one.")
    mmap: bool = Field(
        False,
        description="Memory-map the index read-only (IVF lists, or flat codes) instead of reading it into RAM; "
        "for indexes larger than a comfortable share of memory.",
    )
    prefetch: Literal["off", "index", "all"] = Field(
        "off",
        description="After start-up, read the collection's files once in the background so that they are in the "
        "page cache before queries need them: `index` the FAISS index when memory-mapped (SEARCH_MMAP=true), `all` "
        "the lookup sidecar too (at 200M vectors 5.0 + 9.4 GB: 28 s of sequential reads on the benchmark's disk). "
        "Worth it where RAM "
        "holds them beside everything else; `off`: pages are read as queries touch them, so the first queries "
        "after a cold start wait for the disk.",
    )
    coarse_quantizer: Literal["auto", "flat", "hnsw"] = Field(
        "auto",
        description="How an IVF index finds the lists to visit: `flat` scans every centroid (as the file "
        "has it), `hnsw` searches an HNSW graph over the same centroids (built once, then read from "
        "SEARCH_CACHE_DIR), `auto` = `hnsw` from 8192 lists up.",
    )
    quantizer_hnsw_m: int = Field(32, ge=4, le=128, description="Links per node of the coarse HNSW graph.")
    quantizer_ef_construction: int = Field(
        40, ge=8, le=1024, description="Build breadth of the coarse HNSW graph (higher: better graph, slower build)."
    )
    cache_dir: Path | None = Field(
        Path("var/cache/search"),
        description="Where derived files (the coarse HNSW graph) are kept between starts; unset: rebuilt each start.",
    )
    direct_map: Literal["lazy", "startup", "off"] = Field(
        "lazy",
        description="For GET /v1/records/{id}/vector on an IVF index, the id -> list map (8 bytes per vector): "
        "made on the first request (`lazy`), at start-up, or never (`off`: the endpoint answers 501).",
    )
    default_nprobe: int = Field(16, ge=1, description="IVF lists visited when a request names none.")
    default_ef_search: int = Field(
        64, ge=1, description="HNSW search breadth when a request names none (at least nprobe for the quantizer)."
    )
    max_candidates: int = Field(
        10_000, ge=1, description="Most neighbours one query may examine while filling top_n (the fill bound)."
    )
    max_nprobe: int = Field(
        1024, ge=1, description="Most IVF lists one query may visit while filling top_n (the fill bound)."
    )
    max_rounds: int = Field(8, ge=1, le=32, description="Most index searches per request while filling top_n.")
    overfetch: float = Field(
        4.0, ge=1.0, le=100.0, description="A filtered search first asks for this many times top_n neighbours."
    )
    similarity_scale_samples: int = Field(
        256,
        ge=0,
        le=10_000,
        description="Stored records searched from after start-up to measure what a similarity means for this "
        "model and collection (GET /v1/stats `similarity_scale`; a few hundred searches, whatever the size); "
        "0: not measured.",
    )
    max_request_bytes: int = Field(5_000_000, ge=1, description="Largest request body, in bytes.")
    duckdb_threads: int = Field(2, ge=1, description="DuckDB worker threads.")
    duckdb_memory_limit: str | None = Field(
        None,
        description="DuckDB's buffer pool limit (e.g. `2GB`); unset: DuckDB's default (80% of RAM). Lookups by id "
        "read few blocks, so a small pool is enough beside a memory-mapped index.",
    )

    @field_validator("milvus_uri")
    @classmethod
    def _milvus_uri(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value and not value.startswith("unix:") and not value.endswith(".db"):
            raise ValueError("a Milvus URI is http(s)://host:port, tcp://host:port, unix:PATH, or a path ending in .db")
        return value

    @property
    def resolved_milvus_uri(self) -> str:
        return self.milvus_uri or str(self.data_dir / MILVUS_LITE_FILE)

    @property
    def resolved_index_path(self) -> Path:
        return self.index_path or self.data_dir / INDEX_FILE

    @property
    def resolved_metadata_path(self) -> Path:
        return self.metadata_path or self.data_dir / METADATA_FILE

    def limits(self) -> Limits:
        """The engine's fill bounds: these settings are their only defaults."""
        from services.search.engine import Limits

        return Limits(
            max_candidates=self.max_candidates,
            max_nprobe=self.max_nprobe,
            max_rounds=self.max_rounds,
            overfetch=self.overfetch,
            default_ef_search=self.default_ef_search,
        )
