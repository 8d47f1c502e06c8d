"""The search service: FAISS nearest neighbours plus DuckDB metadata, and the collection builder."""
