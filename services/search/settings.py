"""Search settings, from SEARCH_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings

INDEX_FILE = Path("faiss") / "index.index"
METADATA_FILE = Path("duckdb") / "metadata.duckdb"


class SearchSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SEARCH_", extra="ignore")

    port: int = Field(8002, ge=1, le=65535, description="TCP port to listen on.")
    data_dir: Path = Field(
        Path("data"),
        description="A collection folder laid out like the pre-built one: faiss/index.index and "
        "duckdb/metadata.duckdb.",
    )
    index_path: Path | None = Field(None, description="The FAISS index file; default data_dir/faiss/index.index.")
    metadata_path: Path | None = Field(
        None, description="The DuckDB metadata file; default data_dir/duckdb/metadata.duckdb."
    )
    mmap: bool = Field(False, description="Memory-map the index read-only instead of reading it into RAM.")
    default_nprobe: int = Field(16, ge=1, description="IVF lists visited when a request names none.")
    max_candidates: int = Field(10_000, ge=1, description="Most neighbours examined per query while filling a scope.")
    max_request_bytes: int = Field(5_000_000, ge=1, description="Largest request body, in bytes.")
    duckdb_threads: int = Field(2, ge=1, description="DuckDB worker threads.")

    @property
    def resolved_index_path(self) -> Path:
        return self.index_path or self.data_dir / INDEX_FILE

    @property
    def resolved_metadata_path(self) -> Path:
        return self.metadata_path or self.data_dir / METADATA_FILE
