"""The fetcher is polite to every source: request spacing, concurrency, back-off after 429/503,
bounded retries, and byte budgets over sliding windows (small windows here; an hour in service)."""

from __future__ import annotations

import io
import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.fetcher.app import create_app
from services.fetcher.policy import SlidingWindow
from services.fetcher.settings import FetcherSettings
from tests.conftest import ImageFactory
from tests.fetcher.conftest import fetcher_settings
from tests.sources import Route, Source


def _app(settings: FetcherSettings) -> TestClient:
    return TestClient(create_app(settings))


def _policy(tmp_path: Path, policy: dict[str, Any], **overrides: Any) -> FetcherSettings:
    return fetcher_settings(tmp_path / "cache", domain_policies={"127.0.0.1": policy}, **overrides)


def _images(source: Source, make_image: ImageFactory, count: int, **route: Any) -> list[str]:
    return [source.add(f"/img{i}.jpg", Route(body=make_image(64, 48, seed=i), **route)) for i in range(count)]


def _codes(batch: dict[str, Any]) -> list[str]:
    return [item["status"] for item in batch["results"]]


def test_a_rate_limited_domain_never_sees_two_requests_within_its_interval(
    tmp_path: Path, source: Source, make_image: ImageFactory
) -> None:
    urls = _images(source, make_image, 5, delay=0.05)
    settings = _policy(tmp_path, {"max_concurrency": 1, "requests_per_second": 4})
    with _app(settings) as client:
        batch = client.post("/v1/images", json={"urls": urls}).json()
    assert _codes(batch) == ["ok"] * 5
    gaps = [later - earlier for earlier, later in itertools.pairwise(source.arrivals)]
    assert len(source.arrivals) == 5 and min(gaps) >= 0.25, gaps


def test_every_other_host_gets_bounded_concurrency(tmp_path: Path, source: Source, make_image: ImageFactory) -> None:
    urls = _images(source, make_image, 6, delay=0.3)
    settings = fetcher_settings(tmp_path / "cache", domain_policies={"*": {"max_concurrency": 2}})
    with _app(settings) as client:
        started = time.monotonic()
        batch = client.post("/v1/images", json={"urls": urls}).json()
        elapsed = time.monotonic() - started
    assert _codes(batch) == ["ok"] * 6
    # Two at a time: three rounds of 0.3 s. All at once would be one round.
    assert elapsed >= 0.85, elapsed
    first_three = sorted(source.arrivals)[:3]
    assert first_three[2] - first_three[0] >= 0.25  # the third waited for a slot


def test_a_429_backs_the_domain_off_for_its_retry_after(
    tmp_path: Path, source: Source, make_image: ImageFactory
) -> None:
    limited = source.add("/limited.jpg", Route(status=429, content_type="text/plain", headers={"Retry-After": "30"}))
    other = source.add("/other.jpg", Route(body=make_image()))
    with _app(fetcher_settings(tmp_path / "cache", queue_timeout=2.0)) as client:
        first = client.get("/v1/image", params={"url": limited})
        second = client.get("/v1/image", params={"url": other})
        stats = client.get("/v1/stats").json()
    assert first.status_code == 429 and first.json()["error"]["code"] == "rate_limited"
    assert first.headers["retry-after"] == "30"
    # The domain is left alone: the next request is answered here, without going out.
    assert second.status_code == 429 and 28 <= int(second.headers["retry-after"]) <= 30
    assert [path for path, _ in source.requests] == ["/limited.jpg"]
    assert 28 <= stats["domains"][0]["backoff_seconds"] <= 30


def test_a_short_retry_after_is_waited_out_then_the_domain_is_used_again(
    tmp_path: Path, source: Source, make_image: ImageFactory
) -> None:
    busy = source.add("/busy.jpg", Route(status=503, content_type="text/plain", headers={"Retry-After": "1"}))
    fine = source.add("/fine.jpg", Route(body=make_image()))
    with _app(fetcher_settings(tmp_path / "cache")) as client:
        assert client.get("/v1/image", params={"url": busy}).json()["error"]["code"] == "rate_limited"
        response = client.get("/v1/image", params={"url": fine})
    assert response.status_code == 200
    assert source.arrivals[1] - source.arrivals[0] >= 1.0


def test_a_slow_source_is_retried_a_bounded_number_of_times_then_times_out(
    tmp_path: Path, source: Source, make_image: ImageFactory
) -> None:
    url = source.add("/slow.jpg", Route(body=make_image(), delay=1.5))
    settings = fetcher_settings(tmp_path / "cache", read_timeout=0.3, retries=2)
    with _app(settings) as client:
        response = client.get("/v1/image", params={"url": url})
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    assert len(source.requests) == 3  # the first try and two retries


def test_a_dropped_connection_is_retried_and_the_fetch_succeeds(
    tmp_path: Path, source: Source, make_image: ImageFactory
) -> None:
    url = source.add("/flaky.jpg", Route(body=make_image(), drop_first=1))
    with _app(fetcher_settings(tmp_path / "cache")) as client:
        response = client.get("/v1/image", params={"url": url})
    assert response.status_code == 200
    assert len(source.requests) == 2


def test_a_domain_whose_queue_is_too_long_answers_rate_limited_at_once(
    tmp_path: Path, source: Source, make_image: ImageFactory
) -> None:
    urls = _images(source, make_image, 6)
    settings = _policy(tmp_path, {"max_concurrency": 1, "requests_per_second": 1}, queue_timeout=1.9)
    with _app(settings) as client:
        batch = client.post("/v1/images", json={"urls": urls}).json()
    codes = _codes(batch)
    # One now, one a second later; the rest could not have a turn within 1.9 s.
    assert codes.count("ok") == 2 and codes.count("rate_limited") == 4, codes
    assert all(item["retry_after"] >= 1 for item in batch["results"] if item["status"] == "rate_limited")
    assert len(source.requests) == 2


def _budget_settings(tmp_path: Path, seconds: float) -> FetcherSettings:
    # Each image is about 30 kB; a fetch reserves the 40 kB cap, so 3 fit in 110 kB and a 4th would not.
    return _policy(
        tmp_path,
        {"budgets": [{"bytes": 110_000, "seconds": seconds}]},
        max_image_bytes=40_000,
        cache_max_bytes=0,
        memory_cache_bytes=0,
    )


def _noise_png(seed: int) -> bytes:
    """Noise compresses badly, so its size is predictable: about 30 kB at 100x100."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(100, 100, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def noisy_images(source: Source) -> list[str]:
    urls = []
    for i in range(5):
        body = _noise_png(i)
        assert 25_000 < len(body) < 35_000
        urls.append(source.add(f"/noisy{i}.png", Route(body=body, content_type="image/png")))
    return urls


def test_the_byte_budget_refuses_the_fetch_that_could_pass_it_then_slides(
    tmp_path: Path, source: Source, noisy_images: list[str]
) -> None:
    with _app(_budget_settings(tmp_path, seconds=2.0)) as client:
        for url in noisy_images[:3]:
            assert client.get("/v1/image", params={"url": url}).status_code == 200
        refused = client.get("/v1/image", params={"url": noisy_images[3]})
        budgets = client.get("/v1/stats").json()["domains"][0]["budgets"]
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exhausted"
        assert 1 <= int(refused.headers["retry-after"]) <= 3
        assert len(source.requests) == 3  # refused without asking the source
        assert budgets[0]["limit_bytes"] == 110_000 and budgets[0]["used_bytes"] > 85_000
        time.sleep(2.1)  # the first fetches leave the window
        assert client.get("/v1/image", params={"url": noisy_images[3]}).status_code == 200


def test_the_byte_budget_survives_a_restart(tmp_path: Path, source: Source, noisy_images: list[str]) -> None:
    settings = _budget_settings(tmp_path, seconds=600)
    with _app(settings) as client:
        for url in noisy_images[:3]:
            assert client.get("/v1/image", params={"url": url}).status_code == 200
    with _app(settings) as client:  # saved as the first one stopped
        refused = client.get("/v1/image", params={"url": noisy_images[3]})
    assert refused.json()["error"]["code"] == "budget_exhausted"
    assert len(source.requests) == 3


def test_the_byte_budget_survives_a_crash(tmp_path: Path, source: Source, noisy_images: list[str]) -> None:
    settings = _budget_settings(tmp_path, seconds=600)  # saved every 0.2 s while it changes
    crashed = tmp_path / "crashed"
    with _app(settings) as client:
        for url in noisy_images[:3]:
            assert client.get("/v1/image", params={"url": url}).status_code == 200
        time.sleep(0.6)
        shutil.copytree(settings.cache_dir, crashed)  # what a crash now would leave behind
    with _app(settings.model_copy(update={"cache_dir": crashed})) as client:
        refused = client.get("/v1/image", params={"url": noisy_images[3]})
    assert refused.json()["error"]["code"] == "budget_exhausted"


def test_a_sliding_window_forgets_each_amount_a_window_after_it_came() -> None:
    now = [1000.0]
    window = SlidingWindow(10.0, buckets=100, clock=lambda: now[0])
    window.add(5)
    now[0] += 6
    window.add(7)
    assert window.total() == 12
    now[0] += 4.2  # the first amount is 10.2 s old, the second 4.2 s: a fixed window would drop both or neither
    assert window.total() == 7
    assert window.seconds_until_below(0) == pytest.approx(5.9, abs=0.11)
    now[0] += 6
    assert window.total() == 0


def test_the_built_in_policies_keep_inaturalist_under_its_published_limits(tmp_path: Path) -> None:
    settings = _policy(tmp_path, {"max_concurrency": 8})  # naming another domain keeps the built-in ones
    inat = settings.domain_policies["static.inaturalist.org"]
    assert inat.max_concurrency == 1 and inat.requests_per_second == 1
    limits = {budget.seconds: budget.bytes for budget in inat.budgets}
    assert limits[3600] < 5_000_000_000 and limits[86400] < 24_000_000_000
    assert settings.domain_policies["inaturalist-open-data.s3.amazonaws.com"].max_concurrency > 1


# -- negative answers remembered -------------------------------------------------------------------------


def test_eight_views_of_a_missing_image_ask_the_source_once(tmp_path: Path, source: Source) -> None:
    missing = source.add("/gone.jpg", Route(status=404, body=b"no such photo", content_type="text/plain"))
    with _app(fetcher_settings(tmp_path / "cache")) as client:
        answers = [client.get("/v1/image", params={"url": missing}) for _ in range(8)]
        batch = client.post("/v1/images", json={"urls": [missing]}).json()
    assert [a.status_code for a in answers] == [404] * 8
    assert {a.json()["error"]["code"] for a in answers} == {"not_found"}
    assert "remembered" in answers[-1].json()["error"]["message"]
    assert _codes(batch) == ["not_found"]
    assert [path for path, _ in source.requests] == ["/gone.jpg"]


def test_a_5xx_is_remembered_for_less_time_then_asked_again(
    tmp_path: Path, source: Source, make_image: ImageFactory
) -> None:
    broken = source.add("/broken.jpg", Route(status=500, body=b"oops", content_type="text/plain"))
    gone = source.add("/gone.jpg", Route(status=410, body=b"gone", content_type="text/plain"))
    settings = _policy(tmp_path, {"server_error_seconds": 0.5, "not_found_seconds": 30})
    with _app(settings) as client:
        for _ in range(3):
            assert client.get("/v1/image", params={"url": broken}).status_code == 502
            assert client.get("/v1/image", params={"url": gone}).status_code == 404
        assert len(source.requests) == 2
        time.sleep(0.6)
        source.routes["/broken.jpg"] = Route(body=make_image())  # the source has recovered
        assert client.get("/v1/image", params={"url": broken}).status_code == 200
        assert client.get("/v1/image", params={"url": gone}).status_code == 404
    assert [path for path, _ in source.requests] == ["/broken.jpg", "/gone.jpg", "/broken.jpg"]


def test_a_timeout_is_not_remembered(tmp_path: Path, source: Source, make_image: ImageFactory) -> None:
    url = source.add("/slow.jpg", Route(body=make_image(), delay=0.6))
    settings = fetcher_settings(tmp_path / "cache", read_timeout=0.3, retries=0)
    with _app(settings) as client:
        assert client.get("/v1/image", params={"url": url}).json()["error"]["code"] == "timeout"
        source.routes["/slow.jpg"].delay = 0
        assert client.get("/v1/image", params={"url": url}).status_code == 200


# -- budgets kept in the store ---------------------------------------------------------------------------


def test_budgets_saved_by_an_earlier_version_are_read_once(
    tmp_path: Path, source: Source, noisy_images: list[str]
) -> None:
    settings = _budget_settings(tmp_path, seconds=600)
    settings.cache_dir.mkdir(parents=True)
    now = time.time()
    # The old format: per policy, each window's buckets [start, bytes].
    old = {"127.0.0.1": [{"seconds": 600, "buckets": [[now - 100, 50_000], [now - 10, 30_000]]}]}
    (settings.cache_dir / "budgets.json").write_text(json.dumps(old))
    for _ in range(2):  # the second start must not count them again
        with _app(settings) as client:
            budgets = client.get("/v1/stats").json()["domains"][0]["budgets"]
        assert budgets[0]["used_bytes"] == 80_000
    assert not (settings.cache_dir / "budgets.json").exists()
    assert (settings.cache_dir / "budgets.json.migrated").exists()


def test_a_domain_with_budgets_is_refused_when_its_budget_cannot_be_recorded(
    tmp_path: Path, source: Source, noisy_images: list[str], make_image: ImageFactory
) -> None:
    other = source.add("/other.jpg", Route(body=make_image()))
    settings = _budget_settings(tmp_path, seconds=600)
    store = tmp_path / "nowhere" / "budgets.sqlite3"
    store.parent.write_text("a file where the store's folder should be")
    with _app(settings.model_copy(update={"budget_store": store})) as client:
        refused = client.get("/v1/image", params={"url": noisy_images[0]})
    assert refused.status_code == 502 and refused.json()["error"]["code"] == "error"
    assert "budget" in refused.json()["error"]["message"]
    assert source.requests == []
    # A domain without budgets is served all the same.
    unbudgeted = fetcher_settings(tmp_path / "cache2", budget_store=store)
    with _app(unbudgeted) as client:
        assert client.get("/v1/image", params={"url": other}).status_code == 200
