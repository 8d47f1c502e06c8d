"""`python -m stack`: run everything locally (see stack/run.py)."""

from stack.run import main

raise SystemExit(main())
