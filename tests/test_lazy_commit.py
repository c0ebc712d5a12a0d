"""A caller's hang-up is committed lazily (``FlowContext.commit_soon``): nobody is
promised anything on it, and a crash before it is committed is repaired at the next
start (its channel is gone: the item is abandoned at resync). It goes with the next
commit of any flow, or the dispatcher's pass commits it after ``lazy_commit_after``.
A press 1 stays committed before the confirmation plays (R20): see test_store_crash.

Against the fake ARI; steps wait for events (requests, store contents), never for a
time: the lazy delay is configuration, set here to "never" or "at once"."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ivr.app import Service
from ivr.domain.items import State
from ivr.store import SqliteStore
from tests.fakeari import FakeAri, service_on


@pytest.fixture
async def fake() -> AsyncIterator[FakeAri]:
    async with FakeAri() as f:
        yield f


async def queued(fake: FakeAri, svc: Service, number: str) -> tuple[str, str]:
    """A caller enters and is queued (its arrival committed): (channel, item id)."""
    chan = await fake.caller_enters("support", number)
    await fake.wait_for_request("POST", f"/channels/{chan}/moh")
    items = [i for i in svc.engine.items("support") if i.channel_id == chan]
    assert len(items) == 1
    return chan, items[0].id


async def stored_state(svc: Service, item_id: str) -> State | None:
    assert svc.store is not None
    item = await svc.store.load(item_id)
    return item.state if item is not None else None


async def test_a_hang_up_rides_with_the_next_commit(fake: FakeAri, tmp_path: Path) -> None:
    async with service_on(fake, tmp_path) as (svc, _):
        assert svc.ctx is not None and isinstance(svc.store, SqliteStore)
        svc.ctx.lazy_commit_after = 3600.0  # only another flow's commit carries it
        a, a_id = await queued(fake, svc, "2015550122")
        commits = svc.store.commits
        await fake.caller_hangs_up(a)
        await fake.wait_for(lambda: svc.engine.get(a_id).state == State.ABANDONED, 5,
                            "abandoned in the engine")
        assert await stored_state(svc, a_id) == State.WAITING  # not committed on its own
        assert svc.store.commits == commits
        _, b_id = await queued(fake, svc, "2015550123")  # B's arrival commit carries it
        assert await stored_state(svc, a_id) == State.ABANDONED
        assert await stored_state(svc, b_id) == State.WAITING
        assert svc.store.commits == commits + 1
        assert svc.ctx.commit_due is None


async def test_a_hang_up_alone_is_committed_by_the_dispatcher(
    fake: FakeAri, tmp_path: Path
) -> None:
    async with service_on(fake, tmp_path) as (svc, _):
        assert svc.ctx is not None
        svc.ctx.lazy_commit_after = 0.0  # the dispatcher's next pass commits it
        a, a_id = await queued(fake, svc, "2015550122")
        await fake.caller_hangs_up(a)
        # Abandoned in the engine and the lazy commit made (the store is FIFO: a read
        # queued after that commit sees it).
        await fake.wait_for(lambda: svc.engine.get(a_id).state == State.ABANDONED
                            and svc.ctx is not None and svc.ctx.commit_due is None, 5,
                            "the lazy commit made")
        assert await stored_state(svc, a_id) == State.ABANDONED
