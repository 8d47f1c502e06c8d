"""A client for the BioCLIP image search API: `Client.search`, `Client.record`, `Client.image`, and
`ApiError` for the API's error answers. Depends on httpx only."""

from __future__ import annotations

from bioclip_search_client.client import DEFAULT_URL, Client
from bioclip_search_client.errors import ApiError
from bioclip_search_client.results import Consensus, Hit, Prediction, Record, SearchResult, Taxonomy

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "Client",
    "Consensus",
    "Hit",
    "Prediction",
    "Record",
    "SearchResult",
    "Taxonomy",
]
__version__ = "0.1.0"
