"""The Milvus side of a search (SEARCH_BACKEND=milvus): a collection in a Milvus server, or in milvus-lite
(the embedded Milvus, same client API), searched with the scope and the taxon filters applied during the search.

A collection holds, per record, its id (the primary key, = the FAISS id and the metadata's `id`), its
vector, and scalar fields made from the vocabulary (services/common/vocabulary.py), so that Milvus can
filter while it searches:

    scope_<name>   BOOL, one per scope with conditions (`all` has none): the scope's predicate, evaluated once
                   at load by the same SQL the sidecar's flags come from. Milvus has no case-insensitive
                   match for `inaturalist`'s publisher condition, so it gets the verdict, not the columns.
    taxon_<rank>   INT64, one per filter rank (kingdom .. species, common_name) and `taxon_binomial`: a code
                   of the name's `name_key` (the rule filters compare by), 0 where the record has no name.

A taxon filter becomes `taxon_<rank> == code(filter.key)`. The code is 64 bits of BLAKE2b: two distinct
keys share one with odds of about 1e-7 at a million names, and a shared code only lets a wrong candidate
through to the engine's screen, which applies the exact rule (the record lookup) to every neighbour.

The hits' rows still come from the record lookup; Milvus gives ids and similarities only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from services.common.errors import DependencyFailed, DependencyTimeout, DependencyUnavailable
from services.common.vocabulary import FILTER_RANKS, SCOPE_TABLE, SCOPES, TaxonFilter
from services.search.errors import UnknownRecord
from services.search.nearest import Backend, Neighbours, StoredVector

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from services.search.filters import Criteria

logger = logging.getLogger(__name__)

FORMAT = 1
SERVICE = "milvus"  # the dependency's name in error responses
INFO_PROPERTY = "bioclip_search.info"
ID_FIELD = "id"
VECTOR_FIELD = "vector"
BINOMIAL_FIELD = "taxon_binomial"
SCOPE_FIELDS: dict[str, str] = {rule.name: f"scope_{rule.name}" for rule in SCOPE_TABLE if rule.conditions}
TAXON_FIELDS: dict[str, str] = {rank: f"taxon_{rank}" for rank in FILTER_RANKS}
# Milvus answers at most this many neighbours per query (its `topk` limit, limit + offset).
MAX_TOP_K = 16_384
# Index types whose search takes `nprobe` (lists), and those that take `ef` (a graph).
IVF_TYPES = {"IVF_FLAT", "IVF_SQ8", "IVF_PQ", "IVF_RABITQ", "SCANN"}
GRAPH_TYPES = {"HNSW", "HNSW_SQ", "HNSW_PQ", "HNSW_PRQ"}


class MilvusOpenError(RuntimeError):
    """No Milvus at the URI, no such collection, or a collection loaded from another metadata file."""


def is_lite(uri: str) -> bool:
    """A path ending in `.db` is a milvus-lite folder (pymilvus starts the embedded Milvus for it)."""
    return "://" not in uri and not uri.startswith("unix:") and uri.endswith(".db")


def taxon_field(taxon: TaxonFilter) -> str:
    """The scalar field a filter compares with (the binomial's for a genus-and-epithet species filter)."""
    return BINOMIAL_FIELD if taxon.binomial else TAXON_FIELDS[taxon.rank]


def taxon_code(key: str) -> int:
    """A name key's code (see the module doc): a signed 64-bit BLAKE2b digest, never 0 (0: no name)."""
    code = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little", signed=True)
    return code or 1


def filter_expression(criteria: Criteria) -> str:
    """A Milvus boolean expression for the scope and the filters; "" selects every record.

    Only the schema's field names and integers are written into it: nothing a caller typed."""
    parts = [f"{SCOPE_FIELDS[criteria.scope]} == true"] if SCOPES[criteria.scope].conditions else []
    parts += [f"{taxon_field(taxon)} == {taxon_code(taxon.key)}" for taxon in criteria.filters]
    return " and ".join(parts)


@dataclass(frozen=True)
class CollectionInfo:
    """What a loaded collection says of itself: JSON in a collection property (INFO_PROPERTY) and its description."""

    source: str  # the encoding the vectors came from: a FAISS class, or `vectors` (the builder's own)
    exact: bool  # False: the vectors are decoded approximations (PQ reconstructions), not the originals
    metadata: dict[str, Any] = field(default_factory=dict)  # the metadata file's name and size
    index_params: dict[str, Any] = field(default_factory=dict)  # as created (not every Milvus describes them back)
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CollectionInfo:
        try:
            found = json.loads(text or "{}")
            if found.get("format") != FORMAT:
                raise ValueError(f"format {found.get('format')}, expected {FORMAT}")
            return cls(
                source=str(found["source"]), exact=bool(found["exact"]), metadata=dict(found["metadata"]),
                index_params=dict(found.get("index_params") or {}),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            raise MilvusOpenError(
                f"the Milvus collection was not loaded by `python -m collection milvus-load` ({exc})"
            ) from exc


def connect(uri: str, *, token: str | None = None, timeout: float | None = None) -> MilvusClient:
    """A client for a Milvus server (http(s)://, tcp://, unix:) or a milvus-lite folder (a `.db` path)."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    options: dict[str, Any] = {}
    if is_lite(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        # pymilvus pings an idle channel every 10 s; milvus-lite's gRPC server keeps gRPC's default policy (a
        # ping at most every 5 min without calls) and ends such a channel with GOAWAY "too_many_pings". In-process
        # over loopback there is nothing to keep alive: no pings.
        options["grpc_options"] = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": 0}
    try:
        return MilvusClient(uri=uri, token=token or "", timeout=timeout, **options)
    except MilvusException as exc:
        raise MilvusOpenError(f"could not reach Milvus at {uri}: {exc}") from exc


def _call_errors() -> tuple[type[Exception], ...]:
    """What a Milvus call raises when Milvus fails: pymilvus's errors, and gRPC's own, which pymilvus passes on
    unwrapped for a call that runs out of time (DEADLINE_EXCEEDED) or a channel that breaks under it."""
    import grpc
    from pymilvus.exceptions import MilvusException

    return (MilvusException, grpc.RpcError)


def _as_dependency_error(exc: Exception) -> DependencyFailed:
    import grpc
    from pymilvus.client.types import Status
    from pymilvus.exceptions import ConnectError, MilvusUnavailableException

    text = str(exc)
    code = exc.code() if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)) else None
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or "DEADLINE_EXCEEDED" in text or "timed out" in text.lower():
        return DependencyTimeout(SERVICE, f"Milvus did not answer in time: {text}")
    # pymilvus reports a server it cannot (re)connect to as a plain MilvusException with CONNECT_FAILED.
    unreachable = getattr(exc, "code", None) == Status.CONNECT_FAILED or code == grpc.StatusCode.UNAVAILABLE
    if unreachable or isinstance(exc, ConnectError | MilvusUnavailableException) or "UNAVAILABLE" in text:
        return DependencyUnavailable(SERVICE, f"Milvus is unavailable: {text}")
    return DependencyFailed(SERVICE, f"Milvus failed: {text}")


class MilvusIndex:
    """A loaded Milvus collection (the `milvus` NearestIndex); pymilvus's client is safe across threads."""

    backend: Backend = "milvus"
    filters_in_search = True

    def __init__(
        self, client: MilvusClient, collection: str, *, uri: str, info: CollectionInfo, timeout: float | None = None
    ) -> None:
        self.client = client
        self.collection = collection
        self.uri = uri
        self.info = info
        self.timeout = timeout
        described = client.describe_collection(collection)
        vector = next((f for f in described["fields"] if f["name"] == VECTOR_FIELD), None)
        if vector is None:
            raise MilvusOpenError(f"the Milvus collection {collection!r} has no `{VECTOR_FIELD}` field")
        self._dim = int(vector["params"]["dim"])
        index = client.describe_index(collection, VECTOR_FIELD) or {}
        params = {**info.index_params, **index, **(index.get("params") or {})}
        self.index_type = str(params.get("index_type", "AUTOINDEX")).upper()
        self._metric = str(params.get("metric_type", "IP")).upper()
        self._nlist = int(params["nlist"]) if self.index_type in IVF_TYPES and "nlist" in params else None
        self._size = int(client.get_collection_stats(collection)["row_count"])

    @classmethod
    def open(
        cls,
        uri: str,
        collection: str,
        *,
        metadata: Path | None = None,
        rows: int | None = None,
        token: str | None = None,
        timeout: float | None = None,
    ) -> MilvusIndex:
        """Connect, check the collection belongs to this metadata file, and load it into memory.

        Raises MilvusOpenError (no Milvus, no collection, another metadata file's collection)."""
        from pymilvus.exceptions import MilvusException

        client = connect(uri, token=token, timeout=timeout)
        try:
            if not client.has_collection(collection):
                raise MilvusOpenError(
                    f"no Milvus collection {collection!r} at {uri}; load one with `python -m collection milvus-load`"
                )
            described = client.describe_collection(collection)
            info = CollectionInfo.from_json(
                (described.get("properties") or {}).get(INFO_PROPERTY) or described.get("description", "")
            )
            source = {"size": metadata.stat().st_size, "rows": rows} if metadata is not None else None
            if source is not None and {k: info.metadata.get(k) for k in source} != source:
                raise MilvusOpenError(
                    f"the Milvus collection {collection!r} was loaded from another metadata file than {metadata}; "
                    "load it again"
                )
            client.load_collection(collection)
            index = cls(client, collection, uri=uri, info=info, timeout=timeout)
        except MilvusException as exc:
            client.close()
            raise MilvusOpenError(f"could not open the Milvus collection {collection!r} at {uri}: {exc}") from exc
        except BaseException:
            client.close()
            raise
        logger.info(
            "opened Milvus collection %s at %s: %s, %d vectors, dim %d", collection, uri, index.kind, index.size,
            index.dim,
        )  # fmt: skip
        return index

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def size(self) -> int:
        return self._size

    @property
    def nlist(self) -> int | None:
        return self._nlist

    @property
    def kind(self) -> str:
        return f"Milvus {self.index_type}"

    @property
    def metric(self) -> str:
        return "l2" if self._metric == "L2" else "inner_product"

    @property
    def coarse_quantizer(self) -> str | None:
        return None

    @property
    def reconstructs(self) -> bool:
        return True

    def clamp_nprobe(self, nprobe: int) -> int | None:
        return None if self._nlist is None else max(1, min(nprobe, self._nlist))

    def search(
        self, queries: np.ndarray, k: int, nprobe: int, ef_search: int, criteria: Criteria | None = None
    ) -> Neighbours:
        """The k nearest of each normalised query that pass `criteria`, filtered by Milvus during the search."""
        k = max(1, min(k, self._size, MAX_TOP_K)) if self._size else 1
        used = self.clamp_nprobe(nprobe)
        ef = max(ef_search, k) if self.index_type in GRAPH_TYPES else None
        params: dict[str, Any] = {}
        if used is not None:
            params["nprobe"] = used
        if ef is not None:
            params["ef"] = ef
        expression = filter_expression(criteria) if criteria is not None else ""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        try:
            found = self.client.search(
                self.collection, data=queries.tolist(), limit=k, filter=expression, output_fields=[],
                search_params={"metric_type": self._metric, "params": params}, timeout=self.timeout,
            )  # fmt: skip
        except _call_errors() as exc:
            raise _as_dependency_error(exc) from exc
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        similarities = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for row, hits in enumerate(found):
            for column, hit in enumerate(list(hits)[:k]):
                ids[row, column] = int(hit["id"])
                similarities[row, column] = float(hit["distance"])
        if self._metric == "L2":
            # Squared L2 between unit vectors: |a - b|^2 = 2 - 2 cos.
            similarities = np.where(ids >= 0, 1.0 - similarities / 2.0, similarities).astype(np.float32)
        return Neighbours(similarities=similarities, ids=ids, nprobe=used, ef_search=ef)

    def reconstruct(self, record_id: int) -> StoredVector:
        """The vector as loaded: exact when loaded from the original vectors, else the decoded approximation."""
        if record_id < 0:
            raise UnknownRecord(f"the index holds no vector with id {record_id}")
        try:
            rows = self.client.get(self.collection, ids=[int(record_id)], output_fields=[VECTOR_FIELD])
        except _call_errors() as exc:
            raise _as_dependency_error(exc) from exc
        if not rows:
            raise UnknownRecord(f"the index holds no vector with id {record_id}")
        vector = np.asarray(rows[0][VECTOR_FIELD], dtype=np.float32)
        return StoredVector(id=int(record_id), vector=vector, exact=self.info.exact, encoding=self.info.source)

    def close(self) -> None:
        self.client.close()
