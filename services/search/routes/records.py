"""GET /v1/records/{id} and its vector."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from services.common.http_errors import ErrorResponse
from services.common.schemas.search import Record, RecordVector
from services.search.dependencies import EngineDep, PoolDep

router = APIRouter(tags=["records"])

ERRORS = {404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}
VECTOR_ERRORS = {**ERRORS, 501: {"model": ErrorResponse}}
RecordId = Annotated[int, Path(ge=0, le=2**31 - 1)]


@router.get("/v1/records/{record_id}", response_model=Record, responses=ERRORS)
async def record(record_id: RecordId, engine: EngineDep, pool: PoolDep) -> Record:
    """One metadata row with its source URL."""
    return Record.model_validate(await pool.run(engine.record, record_id))


@router.get("/v1/records/{record_id}/vector", response_model=RecordVector, responses=VECTOR_ERRORS)
async def vector(record_id: RecordId, engine: EngineDep, pool: PoolDep) -> RecordVector:
    """The record's vector as the index stores it (decoded: approximate for PQ codes)."""
    stored = await pool.run(engine.vector, record_id)
    return RecordVector(
        id=stored.id, dim=len(stored.vector), vector=stored.vector.tolist(), exact=stored.exact,
        encoding=stored.encoding,
    )  # fmt: skip
