"""Turn the search service's records into what the page and API clients see: taxonomy and links."""

from __future__ import annotations

from urllib.parse import quote

from gateway.schemas import HitView, RecordView, Taxonomy
from services.common.schemas.search import Hit, Record


def source_record_url(record: Record) -> str | None:
    """The source's own page for a record: for GBIF rows, the occurrence page."""
    if record.source_dataset == "gbif" and record.source_id:
        return f"https://www.gbif.org/occurrence/{quote(record.source_id)}"
    if record.source_dataset == "eol" and record.source_id and record.source_id.isdigit():
        return f"https://eol.org/media/{record.source_id}"
    return None


def record_view(record: Record) -> RecordView:
    return RecordView(**_fields(record))


def hit_view(hit: Hit) -> HitView:
    return HitView(rank=hit.rank, similarity=hit.similarity, **_fields(hit.record))


def _fields(record: Record) -> dict[str, object]:
    has_image = record.url is not None
    return {
        "record_id": record.id,
        "uuid": record.uuid,
        "taxonomy": Taxonomy.model_validate({**record.ranks(), "common_name": record.common_name}),
        "source_dataset": record.source_dataset,
        "source_id": record.source_id,
        "publisher": record.publisher,
        "img_type": record.img_type,
        "basis_of_record": record.basis_of_record,
        "in_bioclip2_training": record.in_bioclip2_training,
        "license": record.license,
        "rights_holder": record.rights_holder,
        "rights": record.rights,
        "image_url": record.url,
        "source_record_url": source_record_url(record),
        "thumbnail_url": f"/api/images/{record.id}?size=thumb" if has_image else None,
        "medium_url": f"/api/images/{record.id}?size=medium" if has_image else None,
    }
