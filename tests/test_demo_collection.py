"""The offline demo's manifest knows the address its images are published at, so a demo made for one
demo-source port is made again rather than served with every image URL pointing at nothing."""

from __future__ import annotations

from pathlib import Path

from stack.demo_collection import SPECIES, generate_collection, published_under, write_manifest


def test_a_demo_manifest_is_for_the_source_address_it_was_made_with_only(tmp_path: Path) -> None:
    rows = generate_collection(tmp_path / "images", per_species=2, base_url="http://127.0.0.1:8010/", species=SPECIES)
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    assert published_under(manifest, "http://127.0.0.1:8010")
    assert published_under(manifest, "http://127.0.0.1:8010/")
    assert not published_under(manifest, "http://127.0.0.1:30510")
    assert not published_under(manifest, "http://127.0.0.1:801")  # a prefix of the address is another address


def test_a_manifest_without_any_published_image_is_for_no_source(tmp_path: Path) -> None:
    rows = generate_collection(tmp_path / "images", per_species=1, base_url="http://127.0.0.1:8010", species=SPECIES)
    manifest = write_manifest([{**row, "url": ""} for row in rows], tmp_path / "manifest.csv")
    assert not published_under(manifest, "http://127.0.0.1:8010")
