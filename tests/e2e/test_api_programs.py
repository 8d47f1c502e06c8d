"""The API as programs use it, against the real services as processes: the flat result, exports that
cite themselves, Accept: text/csv, HEAD on images, and the Python client and its command line."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from PIL import Image

from bioclip_search_client import ApiError, Client, Hit, Record, SearchResult
from bioclip_search_client.cli import main as cli
from gateway.export import COLUMNS
from tests.stack import Stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _published(stack: Stack, skip: int = 0) -> int:
    return [i for i, row in enumerate(stack.rows) if row["url"]][skip]


def _photo(stack: Stack, record_id: int) -> Path:
    return stack.images / stack.rows[record_id]["path"]


def test_the_search_result_is_flat_with_one_nprobe_and_one_stopped(stack: Stack) -> None:
    body = httpx.post(stack.gateway.url + "/api/search", json={"text": "Apis mellifera", "top_n": 3}, timeout=60).json()
    assert "search" not in body
    assert body["stopped"] == "filled" and body["exhausted"] is False and len(body["hits"]) == 3
    assert body["rounds"] >= 1 and body["candidates"] >= 3
    assert body["nprobe"] is None or body["nprobe"] >= 1  # as the search service reported it for this query
    assert set(body["timings"]) == {"index_ms", "screen_ms", "fetch_ms"}


def test_csv_and_json_exports_cite_the_query_the_model_the_index_and_the_date(stack: Stack) -> None:
    query = f"{stack.gateway.url}/api/search?text=Apis%20mellifera&top_n=2&scope=url_only&filter=order:Hymenoptera"
    exported = httpx.get(query + "&format=csv", timeout=60)
    assert exported.status_code == 200, exported.text
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 2
    first = rows[0]
    row = stack.rows[int(first["record_id"])]
    record = httpx.get(f"{stack.gateway.url}/api/records/{first['record_id']}", timeout=30).json()
    assert first["uuid"] == (record["uuid"] or "") and first["in_bioclip2_training"] == str(row["in_bioclip2_training"])
    assert first["query"] == "text" and first["label"] == "Apis mellifera" and first["query_id"].startswith("txt-")
    assert "top_n=2" in first["parameters"] and "filter=order%3AHymenoptera" in first["parameters"]
    assert first["model"] == "tiny-test-clip" and first["index"] and first["exported_at"].endswith("Z")
    as_json = httpx.get(query + "&format=json", timeout=60).json()
    cited = as_json["provenance"]
    assert cited["model"] == "tiny-test-clip" and cited["index"] == first["index"] and cited["collection"] is None
    assert cited["parameters"]["filters"] == [{"rank": "order", "value": "Hymenoptera"}]
    assert as_json["hits"][0]["in_bioclip2_training"] is row["in_bioclip2_training"]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_accept_text_csv_answers_the_hits_as_csv(stack: Stack, method: str) -> None:
    headers = {"Accept": "text/csv"}
    if method == "GET":
        answer = httpx.get(stack.gateway.url + "/api/search?text=Apis&top_n=2", headers=headers, timeout=60)
    else:
        answer = httpx.post(stack.gateway.url + "/api/search", json={"text": "Apis", "top_n": 2}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    assert len(list(csv.DictReader(io.StringIO(answer.text)))) == 2
    explicit = httpx.get(stack.gateway.url + "/api/search?text=Apis&top_n=2&format=json", headers=headers, timeout=60)
    assert explicit.headers["content-type"] == "application/json"  # format= outranks Accept


def test_head_on_an_image_gives_its_headers_and_no_bytes(stack: Stack) -> None:
    url = f"{stack.gateway.url}/api/images/{_published(stack)}?size=thumb"
    head = httpx.head(url, timeout=30)
    got = httpx.get(url, timeout=30)
    assert head.status_code == got.status_code == 200
    assert head.content == b"" and len(got.content) > 0
    assert head.headers["content-type"] == got.headers["content-type"] == "image/webp"
    assert head.headers["etag"] == got.headers["etag"]
    assert int(head.headers["content-length"]) == len(got.content)
    missing = httpx.head(f"{stack.gateway.url}/api/images/999999", timeout=30)
    assert missing.status_code == 404


def test_an_unknown_parameter_in_a_link_is_refused_by_name(stack: Stack) -> None:
    answer = httpx.get(stack.gateway.url + "/api/search?text=Apis&topn=5", timeout=30)
    assert answer.status_code == 422
    assert answer.json()["error"]["details"][0]["field"] == "query.topn"


def test_the_client_searches_by_photo_text_and_record_with_typed_results(stack: Stack) -> None:
    record_id = _published(stack)
    with Client(stack.gateway.url) as api:
        by_photo = api.search(_photo(stack, record_id), top_n=5, scope="all")
        by_text = api.search(text="Danaus plexippus", top_n=3, filters=["order:Lepidoptera"], predict=False)
        by_record = api.search(record=record_id, top_n=2)
        again = api.search(query_id=by_photo.query_id, top_n=2)
    assert isinstance(by_photo, SearchResult) and isinstance(by_photo.hits[0], Hit)
    assert by_photo.query == "image" and by_photo.hits[0].record_id == record_id
    assert by_photo.hits[0].similarity == pytest.approx(1.0, abs=1e-4) and by_photo.stopped == "filled"
    row = stack.rows[record_id]
    assert by_photo.hits[0].taxonomy.scientific_name == f"{row['genus']} {row['species']}"
    assert by_photo.hits[0].in_bioclip2_training is row["in_bioclip2_training"] and by_photo.predictions
    assert by_text.query == "text" and len(by_text.hits) == 3 and by_text.predictions == []
    assert all(hit.taxonomy.order == "Lepidoptera" for hit in by_text.hits)
    assert by_record.hits[0].record_id == record_id and again.query_id == by_photo.query_id


def test_the_client_reads_records_and_images(stack: Stack) -> None:
    record_id = _published(stack)
    with Client(stack.gateway.url) as api:
        record = api.record(record_id)
        image = api.image(record_id, "thumb")
    assert isinstance(record, Record) and record.record_id == record_id
    assert record.taxonomy.genus == stack.rows[record_id]["genus"] and record.image_url == stack.rows[record_id]["url"]
    picture = Image.open(io.BytesIO(image))
    assert picture.format == "WEBP" and max(picture.size) <= 256


@pytest.mark.parametrize(
    ("call", "status", "code"),
    [
        (lambda api: api.record(999_999), 404, "unknown_record"),
        (lambda api: api.search(text="Apis", topn=5), 422, "invalid_request"),
        (lambda api: api.search(text="Apis", scope="anywhere"), 422, "invalid_request"),
        (lambda api: api.search(b"not a photo"), 422, "not_an_image"),
        (lambda api: api.search(query_id="img-0123456789abcdef"), 410, "query_expired"),
    ],
    ids=["unknown-record", "unknown-parameter", "bad-scope", "not-an-image", "expired-query"],
)
def test_the_apis_errors_are_raised_with_their_status_and_code(stack: Stack, call, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    with Client(stack.gateway.url) as api, pytest.raises(ApiError) as raised:
        call(api)
    assert raised.value.status == status and raised.value.code == code and raised.value.message


def test_the_command_line_searches_a_folder_into_one_csv(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    chosen = [_published(stack, n) for n in range(3)]
    for n, record_id in enumerate(chosen):
        shutil.copy(_photo(stack, record_id), folder / ("nested" if n == 2 else "") / f"p{n}.jpg")
    (folder / "notes.txt").write_text("not a photo")
    out = tmp_path / "out.csv"
    status = cli(["--url", stack.gateway.url, "search", str(folder), "--top-n", "4", "--csv", str(out)])
    assert status == 0, capsys.readouterr().err
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert len(rows) == 12 and tuple(rows[0]) == ("photo", *COLUMNS)
    firsts = {Path(r["photo"]).name: int(r["record_id"]) for r in rows if r["rank"] == "1"}
    assert firsts == {f"p{n}.jpg": record_id for n, record_id in enumerate(chosen)}
    err = capsys.readouterr().err
    assert "3/3" in err and "3 of 3 searches written" in err  # the progress line, then the tally


def test_the_command_line_says_which_photo_failed_and_goes_on(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    shutil.copy(_photo(stack, _published(stack)), good)
    bad.write_bytes(b"no picture here")
    status = cli(["--url", stack.gateway.url, "search", str(bad), str(good), "--top-n", "2"])
    captured = capsys.readouterr()
    assert status == 1
    assert "bad.jpg: 422 not_an_image" in captured.err
    assert "good.jpg\t2 hits\tnearest:" in captured.out


def _requirement_names(dist: metadata.Distribution) -> list[str]:
    """The names a distribution requires on this Python, extras left out."""
    wanted = [Requirement(text) for text in dist.requires or []]
    return [req.name for req in wanted if req.marker is None or req.marker.evaluate({"extra": ""})]


def _copy_closure(name: str, site: Path) -> set[str]:
    """Copy `name` and what it requires, as installed here, into another environment's site-packages: the
    packages pip would fetch, without reaching a package index (the tests stay on this machine)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for file in dist.files or []:
            if ".." in file.parts:  # scripts in bin/: not needed to import the package
                continue
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(dist.locate_file(file), target)
        todo += _requirement_names(dist)
    return seen


def test_the_client_installs_on_its_own_and_runs_from_a_fresh_venv(stack: Stack, tmp_path: Path) -> None:
    """In an empty venv holding only httpx and what httpx needs, pip installs the client from its folder
    (no index: nothing leaves this machine), it declares httpx as its one requirement, and it runs."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True, env=clean,
        ).stdout.strip()
    )  # fmt: skip
    copied = _copy_closure("httpx", site)
    # The build backend the client names (setuptools>=68), in place of the older one venv bundles.
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True, env=clean)
    _copy_closure("setuptools", site)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
         "--no-build-isolation", str(ROOT / "client")],
        capture_output=True, text=True, timeout=600, env=clean, cwd=tmp_path,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr  # --no-index: every requirement was already there
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True)
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "bioclip-search-client" in installed and "httpx" in copied
    assert not installed & {"fastapi", "pydantic", "numpy", "torch"}
    shown = subprocess.run([str(python), "-m", "pip", "show", "bioclip-search-client"], capture_output=True, text=True)
    assert "Requires: httpx" in shown.stdout
    record_id = _published(stack)
    run = subprocess.run(
        [str(python), "-m", "bioclip_search_client", "--url", stack.gateway.url, "record", str(record_id)],
        capture_output=True, text=True, timeout=60, env=clean, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["record_id"] == record_id
    assert sys.executable not in run.stdout
