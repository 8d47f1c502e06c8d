# Every target works from a fresh clone: the ones that need .venv make it first.
.DEFAULT_GOAL := help
PY := .venv/bin/python

.PHONY: help install run test lint format docs bench bench-embedder bench-search bench-scale bench-fetcher clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: ## Create .venv and install everything (skipped when up to date)
	@scripts/install.sh

run: install ## Start the four services locally (the offline demo when no collection is configured)
	$(PY) -m stack

test: install ## Lint, then run every test (unit, end-to-end)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

lint: install ## Lint and check formatting only
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install ## Fix what ruff can fix and format the code
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

docs: install ## Regenerate docs/operations.md's settings tables from the settings classes
	$(PY) -m stack.settings_doc --write docs/operations.md

bench: bench-embedder bench-search bench-fetcher ## Run every benchmark (minutes; results go in docs/benchmarks/)

bench-embedder: install ## Embedder latency and throughput, ViT-L-14 with random weights
	$(PY) -m bench.embedder

bench-search: install ## Search latency, recall and metadata lookups on a synthetic TreeOfLife-shaped collection
	$(PY) -m bench.search

bench-scale: install ## Search at 1M, 10M, 50M and 200M vectors: make each collection, measure it, delete it (hours)
	nice -n 5 $(PY) -m bench.scale

bench-fetcher: install ## Fetcher wall time against slow and rate-limited local sources
	$(PY) -m bench.fetcher

clean: ## Remove the demo data, logs and caches (not .venv)
	rm -rf var .pytest_cache .ruff_cache
