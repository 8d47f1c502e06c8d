"""What the gateway lets in: call slots with a bounded, deadlined queue; uploads in flight; and the
image URLs of hits it has served."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.admission import CallSlots, UploadSlots
from gateway.errors import ServiceBusy, TooManyUploads
from gateway.schemas import HitView
from gateway.served import ServedImages
from services.common.http_errors import DEFAULT_STATUS, status_of


def _slots(size: int = 1, *, max_waiting: int = 4, max_wait: float = 1.0) -> CallSlots:
    return CallSlots("search", size, max_waiting=max_waiting, max_wait=max_wait, retry_after=2.0)


async def _hold_for(slots: CallSlots, seconds: float, started: asyncio.Event) -> None:
    async with slots.hold(asyncio.get_running_loop().time() + 60):
        started.set()
        await asyncio.sleep(seconds)


def _busy_after(slots: CallSlots, held: float, deadline_in: float) -> tuple[ServiceBusy | None, float]:
    """Hold the one slot for `held` s, then ask for it with a deadline `deadline_in` s away."""

    async def scenario() -> tuple[ServiceBusy | None, float]:
        started = asyncio.Event()
        holder = asyncio.create_task(_hold_for(slots, held, started))
        await started.wait()
        loop = asyncio.get_running_loop()
        begun = loop.time()
        try:
            async with slots.hold(begun + deadline_in):
                return None, loop.time() - begun
        except ServiceBusy as exc:
            return exc, loop.time() - begun
        finally:
            await holder

    return asyncio.run(scenario())


def test_a_full_queue_sheds_at_once_with_503_naming_the_service() -> None:
    busy, waited = _busy_after(_slots(max_waiting=0), held=0.3, deadline_in=10)
    assert busy is not None and waited < 0.05
    assert busy.code == "search_busy" and busy.retry_after == 2.0 and "search" in busy.message
    assert status_of(busy, DEFAULT_STATUS) == (503, None)


def test_a_wait_longer_than_the_queue_wait_is_shed_when_it_runs_out() -> None:
    busy, waited = _busy_after(_slots(max_wait=0.2), held=2.0, deadline_in=10)
    assert busy is not None and 0.15 < waited < 1.0


def test_the_wait_never_passes_the_requests_deadline() -> None:
    busy, waited = _busy_after(_slots(max_wait=5.0), held=2.0, deadline_in=0.2)
    assert busy is not None and 0.15 < waited < 1.0


def test_a_deadline_already_past_is_shed_at_once() -> None:
    busy, waited = _busy_after(_slots(), held=0.3, deadline_in=-1)
    assert busy is not None and waited < 0.05


def test_a_slot_that_frees_up_in_time_is_taken() -> None:
    busy, waited = _busy_after(_slots(max_wait=2.0), held=0.2, deadline_in=10)
    assert busy is None and waited < 1.5


def test_uploads_beyond_the_bound_are_refused_and_the_bound_frees_up() -> None:
    uploads = UploadSlots(2, retry_after=3.0)
    with uploads.hold(), uploads.hold():
        with pytest.raises(TooManyUploads) as caught, uploads.hold():
            pass
        assert uploads.in_flight == 2
    assert caught.value.code == "too_many_uploads" and caught.value.retry_after == 3.0
    assert status_of(caught.value, DEFAULT_STATUS) == (503, None)
    with uploads.hold():
        assert uploads.in_flight == 1
    assert uploads.in_flight == 0


def _hit(record_id: int, url: str | None) -> HitView:
    return HitView.model_validate(
        {"rank": 1, "similarity": 0.5, "record_id": record_id, "taxonomy": {}, "image_url": url}
    )


@given(st.lists(st.tuples(st.integers(0, 50), st.sampled_from([None, "http://a/1.jpg", "http://b/2.png"]))))
def test_served_images_keep_the_latest_url_of_each_hit_within_the_bound(hits: list[tuple[int, str | None]]) -> None:
    served = ServedImages(10)
    served.remember(_hit(record_id, url) for record_id, url in hits)
    assert len(served) <= 10
    latest = {record_id: url for record_id, url in hits if url}
    for record_id in range(51):
        known = served.url(record_id)
        assert known is None or known == latest[record_id]
    if hits and (last := hits[-1])[1]:
        assert served.url(last[0]) == last[1]  # the most recently served is always kept


def test_served_images_off_keeps_nothing() -> None:
    served = ServedImages(0)
    served.remember([_hit(1, "http://a/1.jpg")])
    assert served.url(1) is None and len(served) == 0
