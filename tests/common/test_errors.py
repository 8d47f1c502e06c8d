"""Domain errors in the cores, one mapping to HTTP at each service's edge: the layering, the table, the shape."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.errors import DependencyFailed, DependencyTimeout, DependencyUnavailable, DomainError, NotFound
from services.common.http import raise_for_upstream
from services.common.http_errors import DEFAULT_STATUS, Status, install_error_handlers, status_of

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "gateway", "collection")
WEB_FRAMEWORKS = {"fastapi", "starlette", "uvicorn"}
# The edge: where a service meets HTTP. Everything else is core and must not know a web framework.
# Middleware wraps every answer, so it is edge too.
EDGE_NAMES = {"app.py", "__main__.py", "dependencies.py", "security_headers.py"}
EDGE_COMMON = {"http_errors.py", "service.py", "limits.py", "logging.py", "serve.py"}


def _modules() -> list[Path]:
    return sorted(path for package in PACKAGES if (ROOT / package).is_dir() for path in (ROOT / package).rglob("*.py"))


def _is_edge(path: Path) -> bool:
    relative = path.relative_to(ROOT)
    if relative.parts[:2] == ("services", "common"):
        return path.name in EDGE_COMMON
    return path.name in EDGE_NAMES or "routes" in relative.parts


def _imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_edge_modules_import_a_web_framework() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {sorted(found)}"
        for path in _modules()
        if not _is_edge(path) and (found := _imported_roots(ast.parse(path.read_text())) & WEB_FRAMEWORKS)
    ]
    assert len(_modules()) > 40  # the scan found the source tree
    assert not offenders, "core modules must raise domain errors, not know HTTP:\n" + "\n".join(offenders)


def test_no_raised_error_carries_an_http_status() -> None:
    offenders = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            raised = node.exc if isinstance(node, ast.Raise) else None
            if isinstance(raised, ast.Call) and {kw.arg for kw in raised.keywords} & {"status_code", "headers"}:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} raises with an HTTP status or headers")
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    targets = item.targets if isinstance(item, ast.Assign) else []
                    if any(isinstance(t, ast.Name) and t.id == "status_code" for t in targets):
                        offenders.append(f"{path.relative_to(ROOT)}:{item.lineno} {node.name} has a status_code")
    assert not offenders, "\n".join(offenders)


def test_no_core_error_names_an_environment_variable() -> None:
    # A core names a setting in an error as `setting("field")`; the edge renders it as the operator's variable.
    env_name = re.compile(r"\b(EMBEDDER|SEARCH|FETCHER|GATEWAY)_[A-Z_]+\b")
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in _modules()
        if not _is_edge(path)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Raise)
        and any(
            isinstance(part, ast.Constant) and isinstance(part.value, str) and env_name.search(part.value)
            for part in ast.walk(node)
        )
    ]
    assert not offenders, "core errors name settings as setting(field), not by variable:\n" + "\n".join(offenders)


def _all_domain_errors() -> set[type[DomainError]]:
    for path in _modules():
        if path.name != "__main__.py":
            importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
    found: set[type[DomainError]] = set()
    todo = [DomainError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    return found


@pytest.mark.parametrize(
    ("service", "app_module"),
    [
        ("search", "services.search.app"),
        ("embedder", "services.embedder.app"),
        ("fetcher", "services.fetcher.app"),
        ("gateway", "gateway.app"),
    ],
)
def test_every_domain_error_a_service_can_raise_has_a_status_at_its_edge(service: str, app_module: str) -> None:
    table = {**DEFAULT_STATUS, **importlib.import_module(app_module).ERROR_STATUS}
    prefix = "gateway" if service == "gateway" else f"services.{service}"
    mine = [
        cls
        for cls in _all_domain_errors()
        if cls is not DomainError and cls.__module__.startswith((prefix, "services.common"))
    ]
    assert mine
    for cls in mine:
        assert not hasattr(cls, "status_code"), cls
        status, _ = status_of(cls.__new__(cls), table)
        assert 400 <= status < 600 and status != 500, f"{cls.__qualname__} has no status in {app_module}"


class _Odd(DomainError):
    code = "odd"


class _Configured(NotFound):
    code = "configured"


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, {_Configured: Status(409, note="set THING")})

    @app.get("/not-found")
    async def not_found() -> None:
        raise NotFound("no such thing", code="no_thing", details={"id": 3})

    @app.get("/configured")
    async def configured() -> None:
        raise _Configured("it is not set up")

    @app.get("/timeout")
    async def timeout() -> None:
        raise DependencyTimeout("search", "search did not answer", code="search_timeout", retry_after=2.2)

    @app.get("/odd")
    async def odd() -> None:
        raise _Odd("a kind nobody mapped")

    return app


def test_a_domain_error_leaves_as_the_json_shape_with_its_kinds_status() -> None:
    with TestClient(_app()) as client:
        response = client.get("/not-found")
        assert response.status_code == 404
        assert response.json() == {"error": {"code": "no_thing", "message": "no such thing", "details": {"id": 3}}}
        timeout = client.get("/timeout")
        assert timeout.status_code == 504 and timeout.json()["error"]["code"] == "search_timeout"
        assert timeout.headers["retry-after"] == "3"


def test_a_service_row_overrides_its_ancestors_status_and_adds_its_note() -> None:
    with TestClient(_app()) as client:
        response = client.get("/configured")
    assert response.status_code == 409
    assert response.json()["error"] == {"code": "configured", "message": "it is not set up (set THING)"}


def test_an_unmapped_domain_error_is_a_500_without_a_traceback() -> None:
    with TestClient(_app()) as client:
        response = client.get("/odd")
    assert response.status_code == 500 and response.json()["error"]["code"] == "odd"
    assert "Traceback" not in response.text


# No deadline: the machine is shared, and a slow example is not a wrong one.
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(status=st.integers(min_value=400, max_value=599), code=st.from_regex(r"[a-z_]{1,20}", fullmatch=True))
def test_a_dependencys_answer_keeps_its_meaning_through_our_edge(status: int, code: str) -> None:
    answer = httpx.Response(status, json={"error": {"code": code, "message": "no"}}, headers={"Retry-After": "4"})
    with pytest.raises(DomainError) as raised:
        raise_for_upstream("search", answer)
    mapped, _ = status_of(raised.value, DEFAULT_STATUS)
    if status < 500:
        # The caller's mistake passes through as it is: the same code, and the same status where it has a kind.
        assert raised.value.code == code and raised.value.retry_after == 4.0
        assert mapped == (status if status in (400, 403, 404, 410, 413, 415, 422, 429) else 400)
    else:
        assert isinstance(raised.value, DependencyFailed) and raised.value.code == f"search_{code}"
        assert mapped == {503: 503, 504: 504}.get(status, 502)
        assert isinstance(raised.value, DependencyUnavailable) == (status == 503)
