"""What one simulated user of `make bench-load` does: the page's four kinds of request.

Run by bench/load.py (locust headless); every request is named by its kind, so locust's statistics
come per kind, and a failure is recorded as `<status> <error code>` so errors group by code.

    kind            request                                   weight
    upload search   POST /api/search, multipart photo          1
    text search     POST /api/search {"text": species name}    2
    record search   POST /api/search {"record_id": id}         2
    image           GET /api/images/{id}?size=thumb            12  (a page shows many thumbnails per search)

BENCH_PHOTOS (a folder of JPEGs, searched with) and BENCH_RECORDS (comma-separated ids with
published images) come from bench/load.py.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

from locust import HttpUser, between, task
from locust.clients import ResponseContextManager

from stack.demo_collection import SPECIES

logger = logging.getLogger(__name__)

PHOTOS = sorted(Path(os.environ.get("BENCH_PHOTOS", "var/demo/images/photos")).glob("*/original.jpg"))[:32]
PHOTO_BYTES = [path.read_bytes() for path in PHOTOS]
RECORDS = [int(r) for r in os.environ.get("BENCH_RECORDS", "0").split(",") if r]
NAMES = [f"{s.taxonomy[5]} {s.taxonomy[6]}" for s in SPECIES] + [s.common_name for s in SPECIES if s.common_name]


def _judge(response: ResponseContextManager) -> None:
    if response.status_code >= 400:
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):  # a non-JSON error is itself worth counting, by status
            code = "not_json"
        response.failure(f"{response.status_code} {code}")
    else:
        response.success()


class PageUser(HttpUser):
    wait_time = between(0.0, 0.1)

    @task(1)
    def upload_search(self) -> None:
        photo = random.choice(PHOTO_BYTES)
        files = {"image": ("photo.jpg", photo, "image/jpeg")}
        with self.client.post("/api/search", files=files, name="upload search", catch_response=True) as response:
            _judge(response)

    @task(2)
    def text_search(self) -> None:
        body = {"text": random.choice(NAMES)}
        with self.client.post("/api/search", json=body, name="text search", catch_response=True) as response:
            _judge(response)

    @task(2)
    def record_search(self) -> None:
        body = {"record_id": random.choice(RECORDS)}
        with self.client.post("/api/search", json=body, name="record search", catch_response=True) as response:
            _judge(response)

    @task(12)
    def image(self) -> None:
        path = f"/api/images/{random.choice(RECORDS)}?size=thumb"
        with self.client.get(path, name="image", catch_response=True) as response:
            _judge(response)
