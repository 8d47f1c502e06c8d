"""The fetcher service: brings a hit's image from where it is published, as a thumbnail or whole."""
