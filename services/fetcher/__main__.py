"""`python -m services.fetcher`: run the fetcher with settings from FETCHER_* variables."""

from services.common.serve import serve
from services.fetcher.app import create_app
from services.fetcher.settings import FetcherSettings

raise SystemExit(serve("fetcher", create_app, FetcherSettings()))
