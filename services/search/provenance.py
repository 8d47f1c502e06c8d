"""Where the served collection came from: the hub repo and commit that `make data` pinned beside it."""

from __future__ import annotations

import logging

from services.common.datalock import read_pins
from services.common.schemas.search import CollectionPin
from services.search.settings import INDEX_FILE, SearchSettings

logger = logging.getLogger(__name__)


def collection_pin(settings: SearchSettings) -> CollectionPin | None:
    """The collection's pin from data_dir's lock file (services/common/datalock.py); None when there is no
    lock file, or when the index is named elsewhere (SEARCH_INDEX_PATH), since the lock speaks for data_dir."""
    if settings.resolved_index_path != settings.data_dir / INDEX_FILE:
        return None
    pin = read_pins(settings.data_dir).get("collection")
    return CollectionPin(repo=pin.repo, revision=pin.revision, commit=pin.commit) if pin else None
