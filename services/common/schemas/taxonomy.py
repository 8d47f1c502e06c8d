"""A taxon's ranks, kingdom to species, as the embedder predicts them and the gateway shows them."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Taxonomy(BaseModel):
    """A taxon's path from kingdom down; ranks below the one known are null."""

    kingdom: str | None = None
    phylum: str | None = None
    class_: str | None = Field(None, alias="class")
    order: str | None = None
    family: str | None = None
    genus: str | None = None
    species: str | None = Field(None, description="The species epithet only, as in the TreeOfLife data.")

    model_config = {"populate_by_name": True}
