"""`python -m services.search`: run the search service with settings from SEARCH_* variables."""

from services.common.serve import serve
from services.search.app import create_app
from services.search.settings import SearchSettings

raise SystemExit(serve("search", create_app, SearchSettings()))
