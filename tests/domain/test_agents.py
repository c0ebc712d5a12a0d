"""The agent board (R11, R15): status rules on a fake clock, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from ivr.domain.agents import Agent, AgentBoard, AgentStatus
from ivr.domain.items import FakeClock

S = AgentStatus


@dataclass(frozen=True)
class Spec:
    id: str
    name: str
    endpoint: str
    queues: tuple[str, ...]


def board() -> tuple[AgentBoard, FakeClock, list[tuple[str, S, S]]]:
    clock = FakeClock()
    changes: list[tuple[str, S, S]] = []
    b = AgentBoard([Spec("ann", "Ann", "PJSIP/ann", ("sales",)),
                    Spec("bob", "Bob", "PJSIP/bob", ("sales", "support"))], clock,
                   lambda agent, old: changes.append((agent.id, old, agent.status)))
    return b, clock, changes


def test_reachability_follows_the_endpoint() -> None:
    b, _, changes = board()
    ann = b.get("ann")
    assert not ann.free  # unreachable until Asterisk says otherwise
    assert b.reachability(ann, "online") and ann.free
    assert not b.reachability(ann, "unknown")  # unqualified static contact: still usable
    assert b.reachability(ann, "offline") and ann.status == S.OFFLINE
    assert b.reachability(ann, "online") and ann.status == S.AVAILABLE
    assert changes == [("ann", S.AVAILABLE, S.OFFLINE), ("ann", S.OFFLINE, S.AVAILABLE)]
    assert b.by_endpoint("PJSIP/bob") is b.get("bob") and b.by_endpoint("PJSIP/x") is None


def test_free_agents_longest_idle_first_and_serving_counts() -> None:
    b, clock, _ = board()
    for a in b:
        b.reachability(a, "online")
    clock.advance(5)
    b.set_status(b.get("ann"), S.RINGING, "item1")
    clock.advance(5)
    b.set_status(b.get("ann"), S.AVAILABLE)
    assert [a.id for a in b.free()] == ["bob", "ann"]  # bob idle since the start
    assert b.serving("support") == 1 and b.serving("sales") == 2
    assert b.set_ready("bob", False) == S.NOT_READY
    assert b.serving("sales") == 1 and [a.id for a in b.free()] == ["ann"]


def test_ready_is_the_agents_choice_only_when_idle() -> None:
    b, _, _ = board()
    ann = b.get("ann")
    b.reachability(ann, "online")
    b.set_status(ann, S.BUSY, "item1")
    assert b.set_ready("ann", False) == S.BUSY  # a call in progress is not interrupted
    b.set_status(ann, S.NOT_READY)
    assert b.set_ready("ann", True) == S.AVAILABLE


def status(agent: Agent) -> S:
    """Read it afresh (mypy would narrow ``agent.status`` across calls that change it)."""
    return agent.status


def test_release_after_an_offer() -> None:
    """R7/R9: unresponsive -> not ready; after a conversation wrap-up, then available."""
    b, clock, _ = board()
    ann = b.get("ann")
    b.reachability(ann, "online")
    b.set_status(ann, S.RINGING, "i1")
    b.release(ann, unresponsive=True, talked=False, wrap_up=10)
    assert status(ann) == S.NOT_READY
    b.set_status(ann, S.BUSY, "i2")
    b.release(ann, unresponsive=False, talked=True, wrap_up=10)
    assert status(ann) == S.WRAP_UP
    clock.advance(9.9)
    b.end_wrap_ups()
    assert status(ann) == S.WRAP_UP
    clock.advance(0.1)
    b.end_wrap_ups()
    assert status(ann) == S.AVAILABLE
    b.set_status(ann, S.PREVIEWING, "i3")
    b.release(ann, unresponsive=False, talked=False, wrap_up=10)
    assert status(ann) == S.AVAILABLE
    b.set_status(ann, S.NOT_READY)  # chose not-ready while the leg was ending
    b.release(ann, unresponsive=False, talked=False, wrap_up=10)
    assert status(ann) == S.NOT_READY
    b.set_status(ann, S.BUSY, "i4")
    b.release(ann, unresponsive=False, talked=True, wrap_up=0)
    assert status(ann) == S.AVAILABLE
