"""The API's answers as dataclasses. Each keeps the JSON it was made from in `raw`, so a field a newer
gateway adds is still at hand; fields this client does not know are otherwise ignored."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any

logger = logging.getLogger(__name__)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in data.items() if key in names}


@dataclass(frozen=True)
class Taxonomy:
    """Kingdom to species (the epithet alone, as in the records), the binomial and the common name."""

    kingdom: str | None = None
    phylum: str | None = None
    class_: str | None = None
    order: str | None = None
    family: str | None = None
    genus: str | None = None
    species: str | None = None
    scientific_name: str | None = None
    common_name: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Taxonomy:
        data = dict(data or {})
        data["class_"] = data.pop("class", None)  # `class` is a Python keyword
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class Record:
    """A record of the collection (GET /api/records/{id}); see docs/api.md "Record view"."""

    record_id: int
    taxonomy: Taxonomy
    uuid: str | None = None
    source_dataset: str | None = None
    source_id: str | None = None
    publisher: str | None = None
    img_type: str | None = None
    basis_of_record: str | None = None
    in_bioclip2_training: bool | None = None
    license: str | None = None
    rights_holder: str | None = None
    rights: str | None = None
    image_url: str | None = None
    source_record_url: str | None = None
    thumbnail_url: str | None = None
    medium_url: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        known = _known(cls, data)
        known["taxonomy"] = Taxonomy.from_json(data.get("taxonomy"))
        return cls(**known, raw=data)


@dataclass(frozen=True)
class Hit(Record):
    """A record found by a search: `rank` (1 = nearest) and `similarity` (cosine, -1 to 1)."""

    rank: int = 0
    similarity: float = 0.0


@dataclass(frozen=True)
class Prediction:
    """One zero-shot prediction: a taxon `name` at `rank`, with its `probability` (0 to 1)."""

    name: str
    rank: str
    probability: float
    common_name: str | None = None


@dataclass(frozen=True)
class Consensus:
    """The hits' similarity-weighted vote at `rank`: `share` of the total similarity (0 to 1), `hits` of it."""

    rank: str
    name: str
    share: float
    hits: int


@dataclass(frozen=True)
class SearchResult:
    """POST/GET /api/search: the hits, what the search did (`nprobe`, `stopped`, `exhausted`), the
    prediction and consensus, and what answered (`identity`, `permalink`). See docs/api.md."""

    query: str
    query_id: str
    label: str
    parameters: dict[str, Any]
    hits: list[Hit]
    exhausted: bool
    stopped: str
    nprobe: int | None
    candidates: int
    rounds: int
    predictions: list[Prediction]
    prediction_error: str | None
    consensus: Consensus | None
    identity: dict[str, str | None]
    permalink: str
    took_ms: float
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchResult:
        prediction = data.get("prediction") or {}
        consensus = data.get("consensus")
        return cls(
            query=data["query"],
            query_id=data["query_id"],
            label=data.get("label", ""),
            parameters=data.get("parameters", {}),
            hits=[Hit.from_json(hit) for hit in data.get("hits", [])],
            exhausted=bool(data.get("exhausted")),
            stopped=data.get("stopped", "filled"),
            nprobe=data.get("nprobe"),
            candidates=int(data.get("candidates", 0)),
            rounds=int(data.get("rounds", 1)),
            predictions=[Prediction(**_known(Prediction, p)) for p in prediction.get("predictions", [])],
            prediction_error=data.get("prediction_error"),
            consensus=Consensus(**_known(Consensus, consensus)) if consensus else None,
            identity=data.get("identity", {}),
            permalink=data.get("permalink", ""),
            took_ms=float(data.get("took_ms", 0.0)),
            raw=data,
        )
