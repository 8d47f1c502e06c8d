"""The contract as published: each service's OpenAPI schema is valid and complete (every `$ref` resolves), and
schemathesis, generating requests from it, finds no failure of any check against the running service."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.config import SchemathesisConfig

from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from services.embedder.app import create_app as create_embedder
from services.embedder.settings import EmbedderSettings
from services.fetcher.app import create_app as create_fetcher
from services.fetcher.settings import FetcherSettings
from services.search.app import create_app as create_search
from services.search.settings import SearchSettings

SERVICES = ("gateway", "search", "embedder", "fetcher")
# Generated requests per operation: enough to try each operation's kinds of input in the suite's time; a
# deeper run sets CONTRACT_MAX_EXAMPLES (e.g. 200).
MAX_EXAMPLES = int(os.environ.get("CONTRACT_MAX_EXAMPLES", "12"))


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolves(document: dict[str, Any], ref: str) -> bool:
    if not ref.startswith("#/"):
        return False
    node: Any = document
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("service", SERVICES)
def test_the_schema_is_valid_openapi_and_every_reference_resolves(urls: dict[str, str], service: str) -> None:
    document = httpx.get(urls[service] + "/openapi.json").json()
    validate(document)
    dangling = sorted({ref for ref in _refs(document) if not _resolves(document, ref)})
    assert dangling == []


def _published(service: str) -> dict[str, Any]:
    """The schema the service publishes; it depends on the code, not on the data, so the app is not started."""
    if service == "gateway":
        return create_gateway(GatewaySettings()).openapi()
    if service == "search":
        return create_search(SearchSettings(data_dir=Path(tempfile.gettempdir()))).openapi()
    if service == "embedder":
        return create_embedder(EmbedderSettings()).openapi()
    return create_fetcher(FetcherSettings(cache_dir=Path(tempfile.gettempdir()) / "unused")).openapi()


_settings = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
DEFAULT_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # schemathesis' own
# Every check runs. A request the schema admits can still name what the data lacks (a vector of another length
# than the index's, an upload that is no picture, a record without a usable vector, a query the gateway has
# forgotten): those answers are the documented 4xx, which the schema cannot rule out in advance.
_config = SchemathesisConfig.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {
                # schemathesis' defaults, and the documented refusals of values the schema cannot rule out
                "expected-statuses": [*DEFAULT_ACCEPTED, "400", "410", "413", "415", "422"]
            }
        }
    }
)
gateway = schemathesis.openapi.from_dict(_published("gateway"), config=_config)
search = schemathesis.openapi.from_dict(_published("search"), config=_config)
embedder = schemathesis.openapi.from_dict(_published("embedder"), config=_config)
fetcher = schemathesis.openapi.from_dict(_published("fetcher"), config=_config)


@gateway.parametrize()
@_settings
def test_the_gateway_keeps_its_contract(
    case: schemathesis.Case, urls: dict[str, str], nothing_left_the_machine: None
) -> None:
    case.call_and_validate(base_url=urls["gateway"])


@search.parametrize()
@_settings
def test_the_search_service_keeps_its_contract(
    case: schemathesis.Case, urls: dict[str, str], nothing_left_the_machine: None
) -> None:
    case.call_and_validate(base_url=urls["search"])


@embedder.parametrize()
@_settings
def test_the_embedder_keeps_its_contract(
    case: schemathesis.Case, urls: dict[str, str], nothing_left_the_machine: None
) -> None:
    case.call_and_validate(base_url=urls["embedder"])


@fetcher.parametrize()
@_settings
def test_the_fetcher_keeps_its_contract(
    case: schemathesis.Case, urls: dict[str, str], nothing_left_the_machine: None
) -> None:
    case.call_and_validate(base_url=urls["fetcher"])
