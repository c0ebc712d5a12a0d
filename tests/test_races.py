"""Races real calls cannot time, made deterministic on the in-process fake ARI.

The fast tier (no root, no Asterisk): the whole service (``ivr.app.Service``) runs
against ``tests/fakeari.py``, and the test decides exactly when each channel answers
or hangs up. The real-Asterisk tests stay the proof of every flow.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ivr.domain.agents import AgentStatus
from ivr.domain.events import WorkChanged
from ivr.domain.items import Kind, State
from tests.fakeari import FakeAri, service_on

AGENTS = {"ann": {"endpoint": "PJSIP/ann", "queues": ["support"]},
          "bob": {"endpoint": "PJSIP/bob", "queues": ["support"]}}
NUMBER = "+12015550123"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAri]:
    async with FakeAri() as f:
        f.endpoints["PJSIP/ann"] = "online"
        f.endpoints["PJSIP/bob"] = "online"
        yield f


def originated_to(fake: FakeAri, endpoint: str) -> list[str]:
    return [r.query.get("channelId", "") for r in fake.calls("POST", "/channels")
            if r.query.get("endpoint") == endpoint]


async def test_an_inbound_connect_withdraws_the_callback_an_agent_is_previewing(
    fake: FakeAri, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """R12 closes an OFFERED callback when the same customer gets through inbound. The
    agent previewing it must hear of it at once: the leg stops, nobody is dialled, the
    agent is free again (not not-ready: it did nothing wrong), and no flow crashes."""
    async with service_on(fake, tmp_path, agents=AGENTS) as (svc, _):
        await fake.wait_for(lambda: all(a.reachable for a in svc.board), what="endpoints")
        assert svc.ctx is not None
        svc.board.set_ready("bob", False)
        callback = svc.engine.add_callback("support", NUMBER)
        assert await svc.ctx.commit()
        svc.ctx.publish(WorkChanged())

        # Ann is rung for the callback, answers and hears the preview.
        await fake.wait_for(lambda: bool(originated_to(fake, "PJSIP/ann")), what="ring ann")
        [ann_chan] = originated_to(fake, "PJSIP/ann")
        await fake.originated_answers(ann_chan)
        await fake.wait_for(lambda: svc.board.get("ann").status == AgentStatus.PREVIEWING,
                            what="ann previewing")

        # Meanwhile the customer calls in and Bob takes the live call.
        caller = await fake.caller_enters("support", "2015550123")
        await fake.wait_for(lambda: len(svc.engine.items("support")) == 2, what="queued")
        svc.board.set_ready("bob", True)
        await fake.wait_for(lambda: bool(originated_to(fake, "PJSIP/bob")), what="ring bob")
        [bob_chan] = originated_to(fake, "PJSIP/bob")
        await fake.originated_answers(bob_chan)

        # The callback is closed behind Ann's back, and her leg is told.
        await fake.wait_for(lambda: callback.state is State.CANCELLED, what="cancelled")
        await fake.wait_for(lambda: ann_chan in fake.hung_up, what="ann's leg hung up")
        await fake.wait_for(lambda: svc.board.get("ann").status == AgentStatus.AVAILABLE,
                            what="ann free again")
        assert svc.board.get("bob").status == AgentStatus.BUSY
        assert caller in {c for b in fake.bridges.values() for c in b.channels}
        assert svc.ctx.counters.values.get("offers_withdrawn") == 1
        # Nobody dialled the customer back: the only originates were the two agents.
        assert {r.query.get("endpoint") for r in fake.calls("POST", "/channels")} == {
            "PJSIP/ann", "PJSIP/bob"}
        assert not [r for r in caplog.records if "crashed" in r.getMessage()]

    with sqlite3.connect(tmp_path / "ivr.sqlite3") as db:
        rows = dict(db.execute("SELECT kind, state FROM items WHERE number = ?", (NUMBER,)))
    assert rows == {Kind.CALLBACK.value: State.CANCELLED.value,
                    Kind.INBOUND.value: State.CONNECTED.value}
