"""What every service app has: error shape, request ids, /healthz, /readyz, /metrics, a blocking pool, and
/docs and /redoc served offline (Swagger UI and ReDoc files from the `fastapi-offline` package, with their
licences, served by the service itself)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.http_errors import UNKNOWN_PARAMETER, ErrorResponse, StatusTable, install_error_handlers
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


DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_ASSETS_URL = "/docs-assets"
# The docs pages' Content-Security-Policy. FastAPI's Swagger UI and ReDoc pages start their bundles with an
# inline script (and the bundles add inline styles; ReDoc runs a worker from a blob): that is allowed, and
# nothing from another origin (ReDoc's bundle would draw its badge from cdn.redoc.ly). References: MDN,
# "Content-Security-Policy"; OWASP Secure Headers Project.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; font-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def install_offline_docs(app: FastAPI) -> None:
    """Add /docs (Swagger UI) and /redoc (ReDoc) whose scripts, styles and icon are served under
    /docs-assets by this app. The app must be made with `docs_url=None, redoc_url=None`; no web fonts
    are loaded (ReDoc falls back to the system's fonts)."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect}",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        )
        page.headers["Content-Security-Policy"] = DOCS_POLICY
        return page

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        page = get_swagger_ui_oauth2_redirect_html()
        page.headers["Content-Security-Policy"] = DOCS_POLICY
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_POLICY
        return page


def create_service_app(
    service: str,
    *,
    title: str,
    version: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    description: str = "",
    max_body_bytes: int | None = None,
    errors: StatusTable | None = None,
    schema_models: Sequence[type[BaseModel]] = (),
    unknown_parameter: str = UNKNOWN_PARAMETER,
) -> FastAPI:
    """A FastAPI app with the parts every service shares. Readiness reads `app.state.ready`.

    `max_body_bytes` refuses larger request bodies with 413 while they stream in. `errors` maps the
    service's own domain errors to HTTP statuses, on top of the shared kinds (services/common/http_errors.py).
    `schema_models`: models a route's `openapi_extra` refers to (`#/components/schemas/Name`) that no
    route declares, added to the published schema. `unknown_parameter`: what a 422 says of a name the
    endpoint does not take.
    """
    # /docs and /redoc come from install_offline_docs: FastAPI's own load their files from a CDN.
    app = FastAPI(
        title=title, version=version, description=description, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.ready = False
    app.state.not_ready_reason = "starting"
    # Set by an app that cannot go on after start-up; `serve` then stops it and exits with 1.
    app.state.fatal_error = None
    app.state.stop_server = None
    install_error_handlers(app, errors, unknown_parameter)
    metrics = _Metrics(service)
    # Where an app registers figures of its own (a collector read at scrape time) beside the request counts.
    app.state.metrics_registry = metrics.registry
    # Added innermost first: request ids and metrics also cover the 413s of the size limit.
    if max_body_bytes is not None:
        app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)

    app.include_router(operations_router(service, metrics))
    install_offline_docs(app)
    _complete_openapi(app, schema_models, body_limit=max_body_bytes is not None)
    return app


def _complete_openapi(app: FastAPI, models: Sequence[type[BaseModel]], *, body_limit: bool) -> None:
    """Publish what every service answers besides its routes' own declarations: a body that cannot be read
    is 400 (not JSON, not UTF-8, a broken multipart), a body over the limit 413, both in the error shape."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        _, defs = models_json_schema(
            [(model, "validation") for model in (ErrorResponse, *models)], ref_template="#/components/schemas/{model}"
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in defs.get("$defs", {}).items():
            components.setdefault(name, definition)
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if "requestBody" not in operation:
                    continue
                responses = operation.setdefault("responses", {})
                responses.setdefault("400", {"description": "The body cannot be read.", **error})
                if body_limit:
                    responses.setdefault("413", {"description": "The body is larger than this service takes.", **error})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
