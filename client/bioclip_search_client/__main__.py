"""`python -m bioclip_search_client ...`: the command line."""

from __future__ import annotations

import sys

from bioclip_search_client.cli import main

sys.exit(main())
