"""The vocabulary's rules: name normalisation, the scientific name, taxon filters, the scope table."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.common.vocabulary import (
    FILTER_RANKS,
    SCOPE_TABLE,
    SearchParameters,
    TaxonFilter,
    Taxonomy,
    clean,
    name_key,
    scientific_name,
    vocabulary,
)

texts = st.text(st.characters(codec="utf-8"), max_size=40)
INVISIBLE = ["\ufeff", "\u200b", "\u200c", "\u200d", "\u2060", "\x00", "\x07", "\x1b", "\u00ad"]


@given(texts)
def test_name_key_is_idempotent(text: str) -> None:
    assert name_key(name_key(text)) == name_key(text)
    assert clean(clean(text)) == clean(text)
    assert unicodedata.is_normalized("NFC", clean(text)) and unicodedata.is_normalized("NFC", name_key(text))


def test_an_invisible_character_between_a_letter_and_its_accent_still_composes() -> None:
    assert clean("e\u200d\u0301") == "\u00e9" == name_key("E\u0301")


@given(texts)
def test_composed_and_decomposed_forms_have_one_key(text: str) -> None:
    assert name_key(unicodedata.normalize("NFD", text)) == name_key(unicodedata.normalize("NFC", text))


@given(texts)
def test_name_key_ignores_case(text: str) -> None:
    assert name_key(text.upper()) == name_key(text.lower()) == name_key(text.casefold())


@given(texts, st.lists(st.sampled_from([*INVISIBLE, " ", "\t", "\n"]), max_size=6))
def test_invisible_characters_and_whitespace_runs_do_not_change_a_name(text: str, noise: list[str]) -> None:
    assert name_key("".join(noise) + text + "".join(noise)) == name_key(text)


def test_a_name_of_invisible_characters_only_is_empty() -> None:
    assert clean("".join(INVISIBLE)) == "" and name_key("\ufeff \u200b\t") == ""
    assert clean("  Danaus\u200b   plexippus\n") == "Danaus plexippus"
    assert name_key("Straße") == name_key("STRASSE")


values = texts.filter(lambda value: bool(clean(value)) and len(value) <= 200)


@given(st.sampled_from(FILTER_RANKS), values)
def test_taxon_filter_text_form_round_trips(rank: str, value: str) -> None:
    taxon = TaxonFilter(rank=rank, value=value)
    assert TaxonFilter.parse(str(taxon)) == taxon
    assert str(TaxonFilter.parse(str(taxon))) == str(taxon)


def test_taxon_filter_parse_trims_and_lowers_the_rank() -> None:
    assert TaxonFilter.parse(" Order : Lepidoptera ") == TaxonFilter(rank="order", value="Lepidoptera")
    for bad in ("tribe:Danaini", "order:", "order:\ufeff\u200b", "Lepidoptera"):
        with pytest.raises(ValidationError):
            TaxonFilter.parse(bad)


def test_scientific_name_needs_genus_and_epithet() -> None:
    assert scientific_name("Danaus", "plexippus") == "Danaus plexippus"
    assert scientific_name(None, "plexippus") is None and scientific_name("Danaus", "") is None
    assert Taxonomy(genus="Danaus", species="plexippus").at("species") == "Danaus plexippus"
    assert Taxonomy(genus="Danaus").at("species") is None and Taxonomy(class_="Insecta").at("class") == "Insecta"


def test_a_filter_matches_stored_names_whatever_their_form() -> None:
    stored = {"common_name": unicodedata.normalize("NFD", "Mariposa Monarca Común"), "genus": "Danaus"}
    assert TaxonFilter(rank="common_name", value="mariposa  monarca común").admits(stored)
    assert TaxonFilter(rank="genus", value="DANAUS\u200b").admits(stored)
    assert not TaxonFilter(rank="species", value="Danaus plexippus").admits(stored)  # no epithet stored


def test_each_scope_admits_what_its_sql_selects() -> None:
    duckdb = pytest.importorskip("duckdb")
    rows = [
        {"has_url": has_url, "source_dataset": source, "publisher": publisher, "in_bioclip2_training": training}
        for has_url in (True, False, None)
        for source in ("gbif", "eol", None)
        for publisher in ("iNaturalist.org", "Other", None)
        for training in (True, False, None)
    ]
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE metadata (n INTEGER, has_url BOOLEAN, source_dataset VARCHAR, publisher VARCHAR, "
        "in_bioclip2_training BOOLEAN)"
    )
    con.executemany("INSERT INTO metadata VALUES (?, ?, ?, ?, ?)", [[n, *row.values()] for n, row in enumerate(rows)])
    for rule in SCOPE_TABLE:
        selected = {n for (n,) in con.execute(f"SELECT n FROM metadata WHERE {rule.sql()}").fetchall()}
        assert selected == {n for n, row in enumerate(rows) if rule.admits(row)}, rule.name
    assert len({rule.bit for rule in SCOPE_TABLE}) == len(SCOPE_TABLE)


def test_the_vocabulary_document_carries_defaults_and_bounds() -> None:
    document = vocabulary().model_dump()
    top_n = document["parameters"]["top_n"]
    assert (
        top_n["default"] == SearchParameters().top_n and top_n["minimum"] == 1 and top_n["maximum"] >= top_n["default"]
    )
    assert [scope["name"] for scope in document["scopes"]] == [rule.name for rule in SCOPE_TABLE]
    assert document["filter_ranks"][: len(document["ranks"])] == document["ranks"]
