"""The gateway app on its own: the page, input checks, and services that are down."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.settings import GatewaySettings
from services.common.vocabulary import clean
from tests.conftest import ImageFactory


@pytest.fixture
def client(free_port: Callable[[], int]) -> Iterator[TestClient]:
    # Every service URL points at a port nothing listens on.
    settings = GatewaySettings(
        embedder_url=f"http://127.0.0.1:{free_port()}",
        search_url=f"http://127.0.0.1:{free_port()}",
        fetcher_url=f"http://127.0.0.1:{free_port()}",
        notice="demo notice",
        max_upload_bytes=100_000,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_page_is_served_at_the_root(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert "app.js" in response.text
    assert client.get("/static/app.js").status_code == 200


def test_image_search_names_the_embedder_when_it_is_down(client: TestClient, make_image: ImageFactory) -> None:
    response = client.post("/api/search", files={"image": ("a.jpg", make_image(), "image/jpeg")})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "embedder_unavailable" and "embedder" in error["message"]


def test_record_names_the_search_service_when_it_is_down(client: TestClient) -> None:
    response = client.get("/api/records/1")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "search_unavailable"


def test_health_lists_each_service_with_its_reason(client: TestClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert set(body["services"]) == {"embedder", "search", "fetcher"}
    assert all(not s["ready"] and s["reason"] for s in body["services"].values())


def test_info_shows_the_notice_even_with_services_down(client: TestClient) -> None:
    assert client.get("/api/info").json() == {"notice": "demo notice", "model": None, "index": None}


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"text=hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ({"content": b"[" * 100_000, "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ({"json": ["a list"]}, 400, "invalid_json"),
        ({"json": {"top_n": 5}}, 422, "invalid_request"),
        ({"json": {"text": "   "}}, 400, "empty_text"),
        ({"json": {"text": "\ufeff\u200b\x07 \u2060"}}, 400, "empty_text"),
        ({"json": {"text": "Apis", "top_n": 0}}, 422, "invalid_request"),
        ({"json": {"text": "Apis", "scope": "anywhere"}}, 422, "invalid_request"),
        ({"data": {"top_n": "5"}, "files": {"other": ("a.txt", b"x", "text/plain")}}, 400, "missing_image"),
        ({"data": {"top_n": "500"}, "files": {"image": ("a.jpg", b"x", "image/jpeg")}}, 422, "invalid_request"),
        ({"files": {"image": ("a.jpg", b"", "image/jpeg")}}, 400, "empty_file"),
        ({"files": {"image": ("a.jpg", b"x" * 200_000, "image/jpeg")}}, 413, "too_large"),
    ],
    ids=["text-plain", "bad-json", "deep-json", "json-list", "no-text", "blank-text", "invisible-text", "top_n-0",
         "bad-scope", "no-image", "top_n-500", "empty-upload", "too-large"],
)  # fmt: skip
def test_bad_searches_get_a_clear_4xx_before_any_service_is_called(
    client: TestClient, kwargs: dict, status: int, code: str
) -> None:
    response = client.post("/api/search", **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    ("field", "value"), [("text", "Danaus plexippus"), ("record_id", "3"), ("query_id", "txt-0123")]
)
def test_a_photo_with_a_second_query_is_a_422_naming_both(
    client: TestClient, make_image: ImageFactory, field: str, value: str
) -> None:
    files = {"image": ("a.jpg", make_image(), "image/jpeg")}
    response = client.post("/api/search", files=files, data={field: value, "top_n": "5"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["details"] == [
        {
            "field": field,
            "problem": f"give only one of image, text, record_id or query_id; this request gives image and {field}",
        }
    ]


@pytest.mark.parametrize("blank", ["", "   ", "\ufeff", "\u200b \u2060"])
def test_a_blank_text_beside_a_photo_is_absent_as_any_blank_field(
    client: TestClient, make_image: ImageFactory, blank: str
) -> None:
    files = {"image": ("a.jpg", make_image(), "image/jpeg")}
    response = client.post("/api/search", files=files, data={"text": blank})
    # Past the form's checks: the photo goes to the embedder, which is down here.
    assert response.status_code == 503 and response.json()["error"]["code"] == "embedder_unavailable"


@pytest.mark.parametrize("path", ["/api/records/-3", "/api/records/x", "/api/images/1?size=giant"])
def test_bad_record_paths_get_422(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_unknown_api_path_is_a_json_404(client: TestClient) -> None:
    response = client.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_request_id_is_echoed(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc123"}).headers["x-request-id"] == "abc123"


def test_searches_over_the_per_minute_limit_get_429_with_retry_after(free_port: Callable[[], int]) -> None:
    settings = GatewaySettings(embedder_url=f"http://127.0.0.1:{free_port()}", searches_per_minute=2)
    with TestClient(create_app(settings)) as client:
        answers = [client.post("/api/search", json={"text": "Apis"}) for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 429]
    assert answers[2].json()["error"]["code"] == "rate_limited"
    assert 1 <= int(answers[2].headers["retry-after"]) <= 60


def test_unknown_query_id_is_gone_with_a_way_forward(client: TestClient) -> None:
    response = client.post("/api/search", json={"query_id": "img-0123456789abcdef"})
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "query_expired"
    assert "upload" in response.json()["error"]["message"]


def test_more_photos_than_one_query_takes_are_refused(client: TestClient, make_image: ImageFactory) -> None:
    files = [("image", (f"{i}.jpg", make_image(seed=i), "image/jpeg")) for i in range(9)]
    response = client.post("/api/search", files=files)
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_many_images"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "Apis", "record_id": 3}, "request"),
        ({"text": "Apis", "filters": [{"rank": "tribe", "value": "x"}]}, "filters"),
    ],
)
def test_ambiguous_or_invalid_json_queries_get_422(client: TestClient, body: dict, field: str) -> None:
    response = client.post("/api/search", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("params", [{}, {"record": "", "q": ""}], ids=str)
def test_a_query_string_without_a_query_names_its_own_parameters(client: TestClient, params: dict) -> None:
    response = client.get("/api/search", params=params)
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "text, record (a record id) or q (a query id)" in message and "record_id" not in message


# Whitespace as str.split() knows it, and characters the vocabulary's `clean` drops (format, control).
BLANKS = st.text(
    alphabet=st.sampled_from(
        " \t\n\r\x0b\x0c\x1c\x85\xa0\u1680\u2003\u2028\u2029\u202f\u3000"
        "\ufeff\u200b\u200c\u200d\u200e\u2060\u00ad\u061c\x00\x07\x1b\x7f"
    ),
    max_size=40,
)


@pytest.fixture(scope="module")
def down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A gateway whose services are all down (port 9): what it answers, it answers before calling one."""
    settings = GatewaySettings(embedder_url="http://127.0.0.1:9", search_url="http://127.0.0.1:9",
                               fetcher_url="http://127.0.0.1:9", searches_per_minute=100_000)  # fmt: skip
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@examples(max_examples=60, deadline=None)
@given(blank=BLANKS)
def test_a_blank_text_is_one_answer_as_json_and_in_a_query_string(down: TestClient, blank: str) -> None:
    assert clean(blank) == ""
    for response in (down.post("/api/search", json={"text": blank}), down.get("/api/search", params={"text": blank})):
        assert response.status_code == 400, (blank, response.text)
        assert response.json()["error"] == {"code": "empty_text", "message": "the text is blank"}


@examples(max_examples=30, deadline=None)
@given(blank=BLANKS)
def test_a_blank_text_beside_another_query_in_a_query_string_is_absent(down: TestClient, blank: str) -> None:
    response = down.get("/api/search", params={"text": blank, "record": "3"})
    # The record's search was tried: search is down here.
    assert response.status_code == 503 and response.json()["error"]["code"] == "search_unavailable"


def test_bad_filter_in_a_query_string_gets_422(client: TestClient) -> None:
    response = client.get("/api/search", params={"text": "Apis", "filter": "tribe:Danaini"})
    assert response.status_code == 422
    assert "filter" in response.json()["error"]["message"]


def test_taxon_suggestions_name_the_search_service_when_it_is_down(client: TestClient) -> None:
    response = client.get("/api/taxa", params={"prefix": "Dan"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "search_unavailable"


@pytest.mark.parametrize("params", [{"rank": "tribe"}, {"limit": "0"}, {"limit": "51"}, {"prefix": "x" * 201}])
def test_bad_taxon_suggestion_requests_get_422(client: TestClient, params: dict[str, str]) -> None:
    response = client.get("/api/taxa", params=params)
    assert response.status_code == 422 and response.json()["error"]["code"]


def test_a_query_the_gateway_does_not_hold_has_no_preview(client: TestClient) -> None:
    response = client.get("/api/queries/img-0123456789abcdef/preview")
    assert response.status_code == 410 and response.json()["error"]["code"] == "query_expired"
    assert client.get("/api/queries/" + "x" * 65 + "/preview").status_code == 422


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "GET", "url": "/api/search?text=Apis&topn=5"}, "query.topn"),
        ({"method": "POST", "url": "/api/search", "json": {"text": "Apis", "topn": 5}}, "topn"),
        ({"method": "POST", "url": "/api/search", "data": {"topN": "5"},
          "files": {"image": ("a.jpg", b"x", "image/jpeg")}}, "topN"),
        ({"method": "POST", "url": "/api/search?topn=5", "json": {"text": "Apis"}}, "query.topn"),
        ({"method": "POST", "url": "/api/search?top_n=5", "data": {},
          "files": {"image": ("a.jpg", b"x", "image/jpeg")}}, "query.top_n"),
    ],
    ids=["query-string", "json", "multipart", "post-json-query-string", "post-multipart-query-string"],
)  # fmt: skip
def test_an_unknown_parameter_is_a_422_naming_it_before_any_service_is_called(
    client: TestClient, kwargs: dict, field: str
) -> None:
    response = client.request(**kwargs)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["message"].startswith(f"{field}: not a parameter")
    assert error["details"] == [{"field": field, "problem": error["message"].removeprefix(f"{field}: ")}]


@pytest.mark.parametrize(
    ("query", "named"),
    [("q=img-0123456789&text=Apis", "q and text"), ("text=Apis&record=3", "text and record"),
     ("q=img-0123456789&text=Apis&record=3", "q and text and record")],
)  # fmt: skip
def test_two_queries_in_a_link_say_which_one_is_allowed(client: TestClient, query: str, named: str) -> None:
    response = client.get(f"/api/search?{query}")
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "give only one of q, text or record" in message and f"this request gives {named}" in message
    assert "Value error" not in message  # the validator's words, not pydantic's prefix


def test_two_queries_in_a_json_body_say_which_one_is_allowed(client: TestClient) -> None:
    response = client.post("/api/search", json={"text": "Apis", "record_id": 3})
    message = response.json()["error"]["message"]
    assert "give only one of text, record_id or query_id; this request gives text and record_id" in message
    assert "Value error" not in message  # the validator's words, not pydantic's prefix


def test_cors_is_off_unless_origins_are_configured(client: TestClient) -> None:
    preflight = client.options(
        "/api/search", headers={"Origin": "https://lab.example.org", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in client.get("/api/info", headers={"Origin": "https://x.org"}).headers


def test_configured_origins_may_call_the_api_and_others_may_not(free_port: Callable[[], int]) -> None:
    settings = GatewaySettings(
        search_url=f"http://127.0.0.1:{free_port()}", cors_origins="https://lab.example.org, http://127.0.0.1:9"
    )
    with TestClient(create_app(settings)) as client:
        asked = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        allowed = client.options("/api/search", headers={"Origin": "https://lab.example.org", **asked})
        refused = client.options("/api/search", headers={"Origin": "https://evil.example.com", **asked})
        simple = client.get("/api/info", headers={"Origin": "http://127.0.0.1:9", "X-Request-ID": "r1"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://lab.example.org"
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    assert simple.headers["access-control-allow-origin"] == "http://127.0.0.1:9"
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


@pytest.mark.parametrize("origins", ["lab.example.org", "https://lab.example.org/page", "ftp://x.org"])
def test_an_origin_that_no_browser_sends_is_refused_at_start(origins: str) -> None:
    with pytest.raises(ValueError, match="is not an origin"):
        GatewaySettings(cors_origins=origins)


def test_a_method_a_path_does_not_serve_is_405_allowing_every_method_it_does(client: TestClient) -> None:
    response = client.options("/api/search")
    assert response.status_code == 405 and response.headers["allow"] == "GET, POST"
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert client.delete("/api/records/3").headers["allow"] == "GET"


@pytest.mark.parametrize(
    "body", [{"record_id": False}, {"text": "Apis", "top_n": "5"}, {"text": "Apis", "predict": 1}], ids=str
)
def test_a_json_body_is_taken_as_typed(client: TestClient, body: dict) -> None:
    response = client.post("/api/search", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"


def test_query_string_parameters_are_checked_and_a_blank_one_is_the_default(client: TestClient) -> None:
    bad = client.get("/api/search", params={"text": "Apis", "top_n": "many"})
    assert bad.status_code == 422 and "top_n" in bad.json()["error"]["message"]
    # Valid (blank = default): it gets as far as the embedder, which is down.
    blank = client.get("/api/search", params={"text": "Apis", "top_n": "", "scope": "", "filter": "order:Lepidoptera"})
    assert blank.status_code == 503 and blank.json()["error"]["code"] == "embedder_unavailable"


def test_the_published_search_parameters_are_typed_from_the_vocabulary(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    search = document["paths"]["/api/search"]
    form = search["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["top_n"]["anyOf"][0]["type"] == "integer" and form["top_n"]["anyOf"][0]["maximum"] == 200
    assert form["scope"]["anyOf"][0]["enum"] == ["all", "url_only", "inaturalist", "bioclip2_training"]
    names = {parameter["name"] for parameter in search["get"]["parameters"]}
    assert {"top_n", "scope", "filter", "nprobe", "min_similarity", "rank", "q", "text", "record"} <= names
    assert search["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/QueryRequest"
    }
    assert "QueryRequest" in document["components"]["schemas"]
    assert "text/csv" in search["get"]["responses"]["200"]["content"]
