"""Concurrent requests share forward passes, and every caller still gets exactly its own vectors."""

from __future__ import annotations

import asyncio
import contextvars
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.embedder.batching import Batcher, BatcherClosed
from services.embedder.settings import EmbedderSettings
from tests.conftest import ImageFactory
from tests.embedder.conftest import running


class Doubler:
    """A batch function that records the batches it was given."""

    def __init__(self, fail_on: int | None = None, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on
        self.delay = delay

    async def __call__(self, values: list[int]) -> list[int]:
        self.batches.append(values)
        await asyncio.sleep(self.delay)
        if self.fail_on in values:
            raise ValueError(f"cannot double {self.fail_on}")
        return [2 * value for value in values]


def test_concurrent_callers_share_batches_and_get_their_own_results_in_order() -> None:
    async def scenario() -> tuple[list[list[int]], Doubler]:
        doubler = Doubler(delay=0.01)
        batcher = Batcher(doubler, max_size=4, max_wait=0.05)
        inputs = [[1, 2], [10, 20, 30], [100], [7, 8, 9, 11, 12]]
        results = await asyncio.gather(*(batcher.submit(values) for values in inputs))
        await batcher.close()
        return results, doubler

    results, doubler = asyncio.run(scenario())
    assert results == [[2, 4], [20, 40, 60], [200], [14, 16, 18, 22, 24]]
    assert all(len(batch) <= 4 for batch in doubler.batches)
    assert sum(len(batch) for batch in doubler.batches) == 11
    assert len(doubler.batches) < 4  # fewer passes than callers: they were batched together


def test_a_lone_item_runs_after_at_most_the_wait() -> None:
    async def scenario() -> float:
        batcher = Batcher(Doubler(), max_size=8, max_wait=0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await batcher.submit([3]) == [6]
        elapsed = loop.time() - started
        await batcher.close()
        return elapsed

    assert asyncio.run(scenario()) < 1.0


def test_an_announced_item_still_being_prepared_joins_the_batch() -> None:
    async def scenario() -> Doubler:
        doubler = Doubler()
        batcher = Batcher(doubler, max_size=8, max_wait=5.0)

        async def still_decoding() -> list[int]:
            with batcher.incoming(1) as reservation:
                await asyncio.sleep(0.05)  # decoding
                return await reservation.submit([2])

        async def ready_now() -> list[int]:
            await asyncio.sleep(0.01)  # the other request has announced its image by now
            return await batcher.submit([1])

        assert await asyncio.gather(ready_now(), still_decoding()) == [[2], [4]]
        await batcher.close()
        return doubler

    assert asyncio.run(scenario()).batches == [[1, 2]]


def test_a_lone_item_does_not_wait_for_company_nobody_announced() -> None:
    async def scenario() -> tuple[float, Doubler]:
        doubler = Doubler()
        batcher = Batcher(doubler, max_size=8, max_wait=5.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await batcher.submit([1]) == [2]
        elapsed = loop.time() - started
        await batcher.close()
        return elapsed, doubler

    elapsed, doubler = asyncio.run(scenario())
    assert elapsed < 1.0 and doubler.batches == [[1]]


def test_an_announcement_withdrawn_without_items_stops_the_wait() -> None:
    async def scenario() -> float:
        batcher = Batcher(Doubler(), max_size=8, max_wait=5.0)
        loop = asyncio.get_running_loop()

        async def fails_to_decode() -> None:
            with batcher.incoming(3):
                await asyncio.sleep(0.05)
                raise ValueError("corrupt image")

        started = loop.time()
        results = await asyncio.gather(batcher.submit([1]), fails_to_decode(), return_exceptions=True)
        elapsed = loop.time() - started
        await batcher.close()
        assert results[0] == [2] and isinstance(results[1], ValueError)
        return elapsed

    assert asyncio.run(scenario()) < 1.0  # not the 5 s cap


def test_waiting_for_announced_items_is_capped() -> None:
    async def scenario() -> float:
        batcher = Batcher(Doubler(), max_size=8, max_wait=0.1)
        loop = asyncio.get_running_loop()
        with batcher.incoming(1):  # announced, never delivered in time
            started = loop.time()
            assert await batcher.submit([5]) == [10]
            return loop.time() - started

    elapsed = asyncio.run(scenario())
    assert 0.09 <= elapsed < 2.0


def test_a_failed_batch_fails_its_callers_and_the_next_batch_runs() -> None:
    async def scenario() -> tuple[BaseException | list[int], list[int]]:
        batcher = Batcher(Doubler(fail_on=13), max_size=1, max_wait=0)
        failed, fine = await asyncio.gather(batcher.submit([13]), batcher.submit([4]), return_exceptions=True)
        await batcher.close()
        return failed, fine  # type: ignore[return-value]

    failed, fine = asyncio.run(scenario())
    assert isinstance(failed, ValueError) and "13" in str(failed)
    assert fine == [8]


def test_a_caller_that_goes_away_is_left_out_of_the_next_batch() -> None:
    async def scenario() -> Doubler:
        doubler = Doubler(delay=0.1)
        batcher = Batcher(doubler, max_size=8, max_wait=0)
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.02)  # the first batch is running now
        gone = asyncio.ensure_future(batcher.submit([2]))
        await asyncio.sleep(0.01)
        gone.cancel()
        assert await batcher.submit([3]) == [6]
        await first
        await batcher.close()
        return doubler

    assert asyncio.run(scenario()).batches == [[1], [3]]


def test_closing_fails_what_is_still_queued() -> None:
    async def scenario() -> BaseException | None:
        batcher = Batcher(Doubler(delay=0.2), max_size=1, max_wait=0)
        running_one = asyncio.ensure_future(batcher.submit([1]))
        queued = asyncio.ensure_future(batcher.submit([2]))
        await asyncio.sleep(0.05)
        await batcher.close()
        await asyncio.gather(running_one, return_exceptions=True)
        return (await asyncio.gather(queued, return_exceptions=True))[0]

    assert isinstance(asyncio.run(scenario()), BatcherClosed)


def test_concurrent_requests_are_batched_and_each_gets_its_unbatched_vectors(
    embedder_settings: EmbedderSettings, make_image: ImageFactory
) -> None:
    requests = [[make_image(seed=10 * r + i, width=80 + 8 * i) for i in range(r % 3 + 1)] for r in range(6)]

    def post(client, images: list[bytes]) -> np.ndarray:  # type: ignore[no-untyped-def]
        files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
        response = client.post("/v1/embed/image", files=files)
        assert response.status_code == 200, response.text
        return np.asarray(response.json()["vectors"], dtype=np.float32)

    alone_settings = embedder_settings.model_copy(update={"max_batch_size": 1})
    with running(alone_settings) as client:
        alone = [np.stack([post(client, [data])[0] for data in images]) for images in requests]
        assert client.app.state.embedder.batcher.stats.largest == 1  # type: ignore[attr-defined]

    batched_settings = embedder_settings.model_copy(update={"max_batch_size": 4, "max_batch_wait_ms": 500})
    with running(batched_settings) as client, ThreadPoolExecutor(len(requests)) as threads:
        together = list(threads.map(lambda images: post(client, images), requests))
        stats = client.app.state.embedder.batcher.stats  # type: ignore[attr-defined]
    assert stats.largest > 1 and stats.largest <= 4
    assert stats.items == sum(len(images) for images in requests)
    for mine, reference in zip(together, alone, strict=True):
        assert mine.shape == reference.shape
        np.testing.assert_allclose(mine, reference, atol=1e-5)


@pytest.mark.parametrize("max_batch_size", [1, 3])
def test_a_request_larger_than_a_batch_is_split_and_kept_in_order(
    embedder_settings: EmbedderSettings, make_image: ImageFactory, max_batch_size: int
) -> None:
    images = [make_image(seed=40 + i) for i in range(5)]
    files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    with running(embedder_settings.model_copy(update={"max_batch_size": max_batch_size})) as client:
        vectors = np.asarray(client.post("/v1/embed/image", files=files).json()["vectors"])
        singles = [client.post("/v1/embed/image", files=[files[i]]).json()["vectors"][0] for i in (0, 4)]
    np.testing.assert_allclose(vectors[[0, 4]], singles, atol=1e-5)


def test_after_a_shared_pass_the_next_waits_for_callers_not_yet_announced() -> None:
    """Clients answered together send again together; the first of them must not run alone."""

    async def scenario() -> Doubler:
        doubler = Doubler(delay=0.02)
        batcher = Batcher(doubler, max_size=8, max_wait=0.5)
        await asyncio.gather(*(batcher.submit([i]) for i in range(4)))  # a wave of four callers, one pass

        async def late(i: int) -> list[int]:
            await asyncio.sleep(0.02 * i)  # arriving one after another, nobody announced
            return await batcher.submit([10 + i])

        assert await asyncio.gather(*(late(i) for i in range(4))) == [[20], [22], [24], [26]]
        await batcher.close()
        return doubler

    assert asyncio.run(scenario()).batches == [[0, 1, 2, 3], [10, 11, 12, 13]]


def test_once_a_pass_ran_alone_a_lone_caller_stops_waiting() -> None:
    async def scenario() -> tuple[list[float], Doubler]:
        doubler = Doubler()
        batcher = Batcher(doubler, max_size=8, max_wait=0.3)
        loop = asyncio.get_running_loop()
        await asyncio.gather(batcher.submit([1]), batcher.submit([2]))  # shared
        took = []
        for value in (3, 4, 5):
            started = loop.time()
            await batcher.submit([value])
            took.append(loop.time() - started)
        await batcher.close()
        return took, doubler

    took, doubler = asyncio.run(scenario())
    assert doubler.batches == [[1, 2], [3], [4], [5]]
    assert took[0] >= 0.25  # waited once for company after the shared pass
    assert max(took[1:]) < 0.2  # then a lone caller runs at once again


def test_one_callers_many_items_do_not_make_the_next_pass_wait() -> None:
    async def scenario() -> float:
        batcher = Batcher(Doubler(), max_size=8, max_wait=0.5)
        loop = asyncio.get_running_loop()
        await batcher.submit([1, 2, 3])
        started = loop.time()
        await batcher.submit([4])
        elapsed = loop.time() - started
        await batcher.close()
        return elapsed

    assert asyncio.run(scenario()) < 0.2


def test_after_a_shared_pass_the_wait_ends_once_as_many_callers_are_back() -> None:
    """Two clients in lockstep: once both are back the pass runs, rather than waiting for an eighth that never comes."""

    async def scenario() -> tuple[float, Doubler]:
        doubler = Doubler()
        batcher = Batcher(doubler, max_size=8, max_wait=0.5)
        loop = asyncio.get_running_loop()
        await asyncio.gather(batcher.submit([1]), batcher.submit([2]))  # a pass the two shared

        async def second() -> list[int]:
            await asyncio.sleep(0.02)
            return await batcher.submit([4])

        started = loop.time()
        assert await asyncio.gather(batcher.submit([3]), second()) == [[6], [8]]
        elapsed = loop.time() - started
        await batcher.close()
        return elapsed, doubler

    elapsed, doubler = asyncio.run(scenario())
    assert doubler.batches == [[1, 2], [3, 4]]
    assert elapsed < 0.3  # not the whole max_wait


def test_callers_already_queued_after_a_shared_pass_do_not_count_as_the_ones_coming_back() -> None:
    """A caller that queued while the shared pass ran is company of its own: the pass still waits for both returners."""

    async def scenario() -> tuple[float, Doubler]:
        doubler = Doubler(delay=0.1)
        batcher = Batcher(doubler, max_size=8, max_wait=0.5)
        loop = asyncio.get_running_loop()

        async def client(value: int, again: int, pause: float) -> list[int]:
            first = await batcher.submit([value])
            await asyncio.sleep(pause)  # answered, then sends its next request
            return first + await batcher.submit([again])

        async def during_the_pass() -> list[int]:
            await asyncio.sleep(0.02)
            return await batcher.submit([3])

        started = loop.time()
        results = await asyncio.gather(client(1, 4, 0.01), client(2, 5, 0.03), during_the_pass())
        elapsed = loop.time() - started
        assert results == [[2, 8], [4, 10], [6]]
        await batcher.close()
        return elapsed, doubler

    elapsed, doubler = asyncio.run(scenario())
    assert doubler.batches == [[1, 2], [3, 4, 5]]
    assert elapsed < 0.5  # the second pass ran once both were back, not after the whole max_wait


def test_a_caller_still_queued_after_a_shared_pass_is_not_waited_for_as_if_coming_back() -> None:
    async def scenario() -> tuple[float, Doubler]:
        doubler = Doubler(delay=0.05)
        batcher = Batcher(doubler, max_size=4, max_wait=0.5)
        loop = asyncio.get_running_loop()

        async def small() -> list[int]:
            first = await batcher.submit([10])
            await asyncio.sleep(0.01)
            return first + await batcher.submit([11])

        started = loop.time()
        small_task = asyncio.create_task(small())
        await asyncio.sleep(0)  # queued first
        large = await batcher.submit([1, 2, 3, 4, 5])  # more than a pass: two of its items wait for the next
        assert await small_task == [20, 22]
        elapsed = loop.time() - started
        await batcher.close()
        assert large == [2, 4, 6, 8, 10]
        return elapsed, doubler

    elapsed, doubler = asyncio.run(scenario())
    assert doubler.batches == [[10, 1, 2, 3], [4, 5, 11]]
    assert elapsed < 0.4


def test_the_worker_does_not_carry_the_first_callers_context() -> None:
    # The request id that logs carry is a context variable: the worker, started by the first caller, must not
    # keep that caller's copy, or every later pass would be logged under the first request's id.
    request = contextvars.ContextVar("request", default="-")
    seen: list[str] = []

    async def run(values: list[int]) -> list[int]:
        seen.append(request.get())
        return values

    async def scenario() -> None:
        batcher = Batcher(run, max_size=4, max_wait=0)

        async def call(name: str) -> None:
            request.set(name)
            await batcher.submit([1])

        await asyncio.create_task(call("first"))
        await asyncio.create_task(call("second"))
        await batcher.close()

    asyncio.run(scenario())
    assert seen == ["-", "-"]
