"""The fetcher's routes, one router per resource: images, stats."""
