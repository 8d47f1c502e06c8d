"""The in-memory image cache: bounded by bytes of image data, least recently used evicted first."""

from __future__ import annotations

from services.fetcher.cache import CachedImage, MemoryCache, etag_of


def _image(size: int, fill: bytes = b"x") -> CachedImage:
    data = fill * size
    return CachedImage(data, "image/webp", etag_of(data))


def test_memory_cache_counts_bytes_and_evicts_the_least_recently_used() -> None:
    cache = MemoryCache(1000)
    for key in "abc":
        cache.put(key, _image(250))
    assert cache.bytes == 750 and len(cache) == 3
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", _image(250))
    cache.put("e", _image(250))  # 1250 bytes asked: b, the least recently used, goes
    assert cache.get("b") is None
    assert [cache.get(key) is not None for key in "acde"] == [True, True, True, True]
    assert cache.bytes == 1000 <= cache.max_bytes


def test_memory_cache_replacing_a_key_counts_only_the_new_image() -> None:
    cache = MemoryCache(1000)
    cache.put("a", _image(200))
    cache.put("a", _image(100, b"y"))
    assert cache.bytes == 100 and len(cache) == 1
    found = cache.get("a")
    assert found is not None and found.data == b"y" * 100


def test_memory_cache_refuses_an_image_over_a_quarter_of_its_size() -> None:
    cache = MemoryCache(1000)
    cache.put("small", _image(100))
    cache.put("big", _image(251))
    assert cache.get("big") is None and cache.get("small") is not None and cache.bytes == 100


def test_a_zero_byte_memory_cache_keeps_nothing() -> None:
    cache = MemoryCache(0)
    cache.put("a", _image(10))
    assert cache.get("a") is None and len(cache) == 0
