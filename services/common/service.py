"""What every service app has: error shape, request ids, /healthz, /readyz, /metrics, a blocking pool."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.http_errors import StatusTable, install_error_handlers
from services.common.limits import BodySizeLimitMiddleware
from services.common.logging import RequestIdMiddleware

T = TypeVar("T")


class BlockingPool:
    """A bounded pool for blocking calls, so torch/FAISS/DuckDB/Pillow never stall the event loop."""

    def __init__(self, size: int) -> None:
        self.limiter = anyio.CapacityLimiter(size)

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(func, *args, limiter=self.limiter)


class Health(BaseModel):
    status: str = "ok"
    service: str


class Readiness(BaseModel):
    ready: bool
    service: str
    reason: str | None = None


class _Metrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests answered",
            ["service", "method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["service", "method", "route"],
            registry=self.registry,
        )
        self.service = service


class _MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: _Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def record_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            # The matched route's template, not the raw path, so record ids don't explode the labels.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(self.metrics.service, method, route, str(status["code"])).inc()
            self.metrics.latency.labels(self.metrics.service, method, route).observe(time.perf_counter() - started)


def operations_router(service: str, metrics: _Metrics) -> APIRouter:
    """/healthz, /readyz and /metrics, the same in every service."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        """The process is alive and answering."""
        return Health(service=service)

    @router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz(request: Request) -> JSONResponse:
        """Heavy resources are loaded and the service can do its work."""
        ready = bool(request.app.state.ready)
        body = Readiness(ready=ready, service=service, reason=None if ready else request.app.state.not_ready_reason)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ready else 503)

    @router.get("/metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        """Request counts and latencies in Prometheus text format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def create_service_app(
    service: str,
    *,
    title: str,
    version: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    description: str = "",
    max_body_bytes: int | None = None,
    errors: StatusTable | None = None,
) -> FastAPI:
    """A FastAPI app with the parts every service shares. Readiness reads `app.state.ready`.

    `max_body_bytes` refuses larger request bodies with 413 while they stream in. `errors` maps the
    service's own domain errors to HTTP statuses, on top of the shared kinds (services/common/http_errors.py).
    """
    app = FastAPI(title=title, version=version, description=description, lifespan=lifespan)
    app.state.ready = False
    app.state.not_ready_reason = "starting"
    # Set by an app that cannot go on after start-up; `serve` then stops it and exits with 1.
    app.state.fatal_error = None
    app.state.stop_server = None
    install_error_handlers(app, errors)
    metrics = _Metrics(service)
    # Added innermost first: request ids and metrics also cover the 413s of the size limit.
    if max_body_bytes is not None:
        app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)

    app.include_router(operations_router(service, metrics))
    return app
