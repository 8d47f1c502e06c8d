# Every target works from a fresh clone: the ones that need .venv make it first.
.DEFAULT_GOAL := help
PY := .venv/bin/python

.PHONY: help install data run collection sidecar test lint format docs bench bench-embedder bench-search bench-scale bench-fetcher bench-load bench-reliability bench-footprint bench-milvus check-precision clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: ## Create .venv and install everything (skipped when up to date)
	@scripts/install.sh

data: install ## Download the real collection, labels and model into ./data (~22 GB); MILVUS=uri also loads it into Milvus
	$(PY) -m collection download $(ARGS)
	$(if $(MILVUS),$(PY) -m collection milvus-load --data data --uri "$(MILVUS)")

run: install ## Start the four services locally (the offline demo when no collection is configured)
	$(PY) -m stack

collection: install ## Build a collection: make collection MANIFEST=photos.csv OUT=data (python -m collection build)
	$(PY) -m collection build --manifest $(MANIFEST) --out $(OUT)

sidecar: install ## Make a metadata file's lookup sidecar: make sidecar METADATA=data/duckdb/metadata.duckdb
	$(PY) -m collection sidecar --metadata $(METADATA) --out $(basename $(METADATA)).lookup

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

bench: bench-embedder bench-search bench-fetcher bench-load bench-reliability ## Run every benchmark (minutes; results go in docs/benchmarks/)

bench-embedder: install ## Embedder latency, throughput and precision quality, ViT-L-14 with random weights, on this CPU and limited to AVX2
	@# setsid: a session (a scheduler autogroup) of its own, as the service it starts has; on a busy machine the
	@# in-process side would otherwise get only its shell session's share of the CPU.
	setsid -w $(PY) -m bench.embedder
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 setsid -w $(PY) -m bench.embedder --cpu-label avx2

check-precision: install ## Reduced precision vs fp32 on your weights and photos: MODEL=... PHOTOS=dir [CHECKPOINT= CONFIG= INDEX= PRECISIONS=int8]
	@test -n "$(MODEL)" -a -n "$(PHOTOS)" || { echo "usage: make check-precision MODEL=<hf-hub:name or architecture> PHOTOS=<folder> [CHECKPOINT=<weights>] [CONFIG=<architecture json>] [INDEX=<faiss index>] [PRECISIONS=int8,bf16]"; exit 2; }
	$(PY) -m bench.precision_check --model "$(MODEL)" --photos "$(PHOTOS)" --precisions "$(or $(PRECISIONS),int8)" \
		$(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)") $(if $(CONFIG),--architecture-config "$(CONFIG)") \
		$(if $(INDEX),--index "$(INDEX)")

bench-search: install ## Search latency, recall and metadata lookups on a synthetic TreeOfLife-shaped collection
	$(PY) -m bench.search

bench-scale: install ## Search at 1M, 10M, 50M and 200M vectors: make each collection, measure it, delete it (hours)
	nice -n 5 $(PY) -m bench.scale

bench-fetcher: install ## Fetcher wall time against slow and rate-limited local sources
	$(PY) -m bench.fetcher

bench-reliability: install ## Gateway memory under 20 concurrent slow 19 MB uploads; embedder restart to ready
	$(PY) -m bench.reliability all

bench-footprint: install ## The embedder's memory with ViT-L-14 (random weights) at ready and under a batch: sizes its containers
	$(PY) -m bench.footprint

bench-milvus: install ## FAISS IVF-PQ against milvus-lite on one synthetic collection: make bench-milvus VECTORS=30000
	nice -n 10 $(PY) -m bench.milvus --vectors $(or $(VECTORS),30000) $(if $(INDEX),--index-type $(INDEX))

bench-load: install ## The demo stack under 16 page users for 60 s (locust, through nginx when installed)
	$(PY) -m bench.load

clean: ## Remove the demo data, logs and caches (not .venv)
	rm -rf var .pytest_cache .ruff_cache
