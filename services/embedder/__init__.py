"""The embedder service: an open_clip model that turns images and texts into vectors."""
