"""Work items: what a queue orders, offers, persists (SPEC R1, R6, R10, R12, R14).

Pure data plus the clock abstraction. No I/O: the engine (``queues.py``) mutates items,
the store (``ivr/store.py``) persists them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Kind(StrEnum):
    INBOUND = "inbound"  # a live caller on an Asterisk channel
    CALLBACK = "callback"  # we dial the customer back (converted caller or web form)


class State(StrEnum):
    WAITING = "waiting"  # live caller in the queue, on music on hold
    OFFERED = "offered"  # offered to one agent (ringing / preview)
    CONNECTED = "connected"  # inbound caller bridged to an agent: dequeued
    CALLBACK_PENDING = "callback_pending"  # callback keeping its place, maybe not yet eligible
    DIALLING = "dialling"  # agent accepted, we are dialling the customer
    DONE = "done"  # callback answered and bridged
    FAILED = "failed"  # callback gave up after max_attempts
    EXPIRED = "expired"  # callback older than expire_after
    CANCELLED = "cancelled"  # cancelled by a supervisor, the API, or a later inbound connect
    ABANDONED = "abandoned"  # live caller hung up before an agent answered


# Open items hold a place in their queue (they count for positions, overflow and EWT).
# DIALLING stays open because a failed attempt returns the item to the same place (R10).
OPEN_STATES: frozenset[State] = frozenset(
    {State.WAITING, State.OFFERED, State.CALLBACK_PENDING, State.DIALLING}
)
CLOSED_STATES: frozenset[State] = frozenset(State) - OPEN_STATES


@dataclass(slots=True)
class HistoryEntry:
    at: float
    event: str
    detail: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class WorkItem:
    """One caller or callback. Treat instances returned by the engine as read-only:
    the engine keeps indexes keyed on them and is the only writer.

    ``eq=False``: identity semantics, two snapshots of one item are not "equal" by
    accident of having the same fields at some moment.
    """

    id: str
    queue: str
    kind: Kind
    state: State
    arrived_at: float  # ORIGINAL arrival; never changes (R6 keeps the place by this)
    seq: int  # tie-breaker for equal arrival times; monotonic per engine
    number: str | None = None
    channel_id: str | None = None  # live caller's Asterisk channel; None once a callback
    attempts: int = 0  # dial attempts started (R10)
    next_eligible_at: float = 0.0  # callbacks: not dispatched before this (retry wait)
    offered_to: str | None = None
    declined_by: set[str] = field(default_factory=set)
    created_at: float = 0.0
    updated_at: float = 0.0
    expires_at: float | None = None  # callbacks: closes as EXPIRED after this (R14)
    predicted_wait: float | None = None  # EWT at arrival, for the EWT error metric (R16)
    #: the caller's language (the queue's, or chosen at entry): everything the customer
    #: hears later, the callback included, is in it; "" = the queue's language
    language: str = ""
    #: the Asterisk node a live caller's channel is on (``asterisk:`` nodes by name), or
    #: the node a callback was last dialled from; "" = the only node
    node: str = ""
    history: list[HistoryEntry] = field(default_factory=list)

    @property
    def key(self) -> tuple[float, int, str]:
        """Queue order: original arrival, then seq. The id never decides (seq is unique)
        but makes the key carry the item's identity into the sorted indexes."""
        return (self.arrived_at, self.seq, self.id)

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES


def new_item_id() -> str:
    return uuid.uuid4().hex


class Clock(Protocol):
    def now(self) -> float:
        """Epoch seconds."""
        ...


class SystemClock:
    """Wall clock: arrival times are persisted and must mean the same after a restart,
    so a monotonic clock (which restarts with the process) will not do."""

    def now(self) -> float:
        return time.time()


class FakeClock:
    """Deterministic clock for tests."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += seconds
        return self._now

    def set(self, at: float) -> None:
        self._now = at
