"""The back-end services of the organism image search: embedder, search, fetcher."""
