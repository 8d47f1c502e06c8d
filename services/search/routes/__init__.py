"""The search service's routes, one router per resource: searches, records, stats."""
