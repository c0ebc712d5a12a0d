"""Caller experience on the fake ARI (fast tier), where the order of events can be
forced: an agent whose phone vanishes while the caller is being connected hands the
caller back (a prompt, then waiting on in place); the 1 pressed while an agent rings
wins over the ring."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ivr.domain.items import Kind, State
from tests.fakeari import FakeAri, service_on
from tests.support.waiting import until

AGENT = {"agent1": {"endpoint": "PJSIP/agent1", "queues": ["support"]}}


@pytest.fixture
async def fake() -> AsyncIterator[FakeAri]:
    async with FakeAri() as f:
        f.endpoints["PJSIP/agent1"] = "online"
        yield f


def played(fake: FakeAri, channel: str, name: str) -> bool:
    """A play request of prompt ``name`` was sent to ``channel``."""
    return any(r.segments[:3] == ("channels", channel, "play")
               and r.query.get("media", "").endswith(f"/en/{name}")
               for r in fake.calls("POST"))


async def test_agent_vanishing_at_connect_hands_the_caller_back(fake: FakeAri,
                                                                 tmp_path: Path) -> None:
    async with service_on(fake, tmp_path, agents=AGENT,
                          queues={"support": {"max_waiting": 5}}) as (svc, _):
        svc.board.set_ready("agent1", False)
        chan = await fake.caller_enters("support", number="2015550401")
        await until(lambda: bool(svc.engine.items("support")), 5)
        [item] = svc.engine.items("support")
        # The agent answers, but its channel is gone by the time it is bridged.
        fake.fail("POST", "/bridges/*/addChannel", 404, times=1,
                  body='{"message": "Channel not found"}')
        svc.board.set_ready("agent1", True)
        await until(lambda: bool(fake.originated), 5, "the agent is rung")
        [agent_chan] = list(fake.originated)
        await fake.originated_answers(agent_chan)
        await until(lambda: played(fake, chan, "connect_failed"), 5,
                    lambda: f"the caller is told the connection failed: "
                    f"{[(r.method, r.path, r.query) for r in fake.calls('POST')][-8:]}")
        # Still on the line, in place, live (offered again at once: the only agent is
        # free again); never hung up, the agent not blamed as unresponsive.
        assert chan in fake.channels
        assert not any(r.method == "DELETE" and r.path == f"/channels/{chan}"
                       for r in fake.calls())
        current = svc.engine.get(item.id)
        assert current.kind == Kind.INBOUND and current.is_open
        assert svc.engine.position(item.id) == 1
        events = [h.event for h in item.history]
        assert events[events.index("offered") + 1] == "declined"
        assert svc.board.get("agent1").status != "not_ready"


async def test_a_1_while_the_agent_rings_wins_and_stops_the_ring(fake: FakeAri,
                                                                tmp_path: Path) -> None:
    queues = {"support": {"max_waiting": None, "max_ewt": "30s", "first_offer_after": "0.3s",
                          "repeat_offer_every": "60s", "ring_timeout": "30s"}}
    async with service_on(fake, tmp_path, agents=AGENT, queues=queues) as (svc, _):
        svc.board.set_ready("agent1", False)
        chan = await fake.caller_enters("support", number="2015550402")
        await until(lambda: played(fake, chan, "offer"), 5, "the offer plays")
        [item] = svc.engine.items("support")
        svc.board.set_ready("agent1", True)  # the agent's phone rings for this caller
        await until(lambda: svc.engine.get(item.id).state == State.OFFERED, 5)
        await until(lambda: bool(fake.originated), 5)
        [agent_chan] = list(fake.originated)
        await fake.dtmf(chan, "1")  # the caller presses 1 during the offer
        await until(lambda: played(fake, chan, "confirmation"), 5,
                    "the callback is taken: confirmation")
        await until(lambda: any(r.method == "DELETE" and r.path.endswith(agent_chan)
                                for r in fake.calls()), 5, "the ring is stopped")
        cb = svc.engine.get(item.id)
        assert cb.kind == Kind.CALLBACK and cb.state in (State.CALLBACK_PENDING,
                                                          State.OFFERED)
        assert [h.event for h in cb.history if h.event in (
            "offered", "offer_revoked", "converted_to_callback")][:3] == [
            "offered", "offer_revoked", "converted_to_callback"]
        # The agent did nothing wrong: not set not ready.
        assert svc.board.get("agent1").status != "not_ready"
