"""The offline side: making a collection (index, metadata, lookup sidecar) that the search service reads."""
