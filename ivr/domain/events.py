"""What happened, as typed events (SPEC R19), and the one seam that carries them.

Flows publish; counters and metrics (and the consoles' live feed) subscribe. A flow
never names a counter: it says what happened. Each event names the counter it moves
(``ivr_events_total{event="…"}``), so the metric names stay stable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class Event:
    counter: ClassVar[str] = ""
    queue: str = ""
    item_id: str = ""


@dataclass(frozen=True)
class CallerArrived(Event):
    counter: ClassVar[str] = "arrivals"


@dataclass(frozen=True)
class CallToUnknownQueue(Event):
    counter: ClassVar[str] = "unknown_queue"


@dataclass(frozen=True)
class OfferPlayed(Event):
    """R3: the callback offer started playing to a waiting caller."""

    counter: ClassVar[str] = "offers"


@dataclass(frozen=True)
class CallbackRequested(Event):
    """R5: the caller pressed 1 (or confirmed another number)."""

    counter: ClassVar[str] = "callback_requests"


@dataclass(frozen=True)
class CallbackCommitted(Event):
    """R6/R20: the callback is durable; the confirmation plays."""

    counter: ClassVar[str] = "callbacks_committed"
    #: seconds from the caller's 1 to the confirmation's play request (app clock)
    latency: float = 0.0


@dataclass(frozen=True)
class CallbackNotStored(Event):
    """R20: the store refused the request; the caller keeps waiting, nothing promised."""

    counter: ClassVar[str] = "callback_not_stored"


@dataclass(frozen=True)
class DuplicateRequest(Event):
    """R12: a callback was already scheduled for this number."""

    counter: ClassVar[str] = "duplicates"


@dataclass(frozen=True)
class CallerAbandoned(Event):
    counter: ClassVar[str] = "abandoned"


@dataclass(frozen=True)
class AgentEvent(Event):
    agent: str = ""


@dataclass(frozen=True)
class OfferAccepted(AgentEvent):
    """R7: the agent pressed 1 in the preview."""

    counter: ClassVar[str] = "accepts"


@dataclass(frozen=True)
class OfferDeclined(AgentEvent):
    counter: ClassVar[str] = "declines"


@dataclass(frozen=True)
class OfferTimedOut(AgentEvent):
    counter: ClassVar[str] = "offer_timeouts"


@dataclass(frozen=True)
class OfferWithdrawn(AgentEvent):
    """The item was closed while the agent held it (cancelled, served inbound)."""

    counter: ClassVar[str] = "offers_withdrawn"


@dataclass(frozen=True)
class CustomerDialled(AgentEvent):
    counter: ClassVar[str] = "dials"
    #: seconds from the agent's accept to the originate request (app clock)
    latency: float = 0.0


@dataclass(frozen=True)
class CallbackConnected(AgentEvent):
    counter: ClassVar[str] = "callbacks_connected"


@dataclass(frozen=True)
class InboundConnected(AgentEvent):
    counter: ClassVar[str] = "inbound_connected"


@dataclass(frozen=True)
class CallbackAttemptFailed(AgentEvent):
    """R10: busy, no answer, refused, not verified: retried later or failed."""

    counter: ClassVar[str] = "callback_failures"
    reason: str = ""


@dataclass(frozen=True)
class AnsweringMachine(AgentEvent):
    """A callback was answered by an answering machine (AMD, queues with
    ``answering_machine``): ``action`` is ``retry`` (a failed attempt) or ``message``
    (the message was left and the callback closed); ``cause`` is AMD's ``AMDCAUSE``."""

    counter: ClassVar[str] = "answering_machines"
    action: str = ""
    cause: str = ""


@dataclass(frozen=True)
class TrunkFailed(AgentEvent):
    """The carrier never answered the INVITE: our outage, not the customer's."""

    counter: ClassVar[str] = "trunk_failures"


@dataclass(frozen=True)
class CallbackExpired(Event):
    counter: ClassVar[str] = "expired"


@dataclass(frozen=True)
class StoreFailed(Event):
    counter: ClassVar[str] = "store_failures"
    items: int = 0


@dataclass(frozen=True)
class WorkChanged(Event):
    """Work or agents may have changed: time for a dispatch pass (no counter)."""


@dataclass(frozen=True)
class OfferRevoked(Event):
    """A live caller chose a callback while an agent was being rung for them: that
    ring stops (no counter; the request and the commit count)."""


@dataclass(frozen=True)
class AgentChanged(Event):
    """An agent's status changed (no counter: the consoles follow it)."""

    agent: str = ""
    status: str = ""


@dataclass(frozen=True)
class StoreCommitted(Event):
    """A commit reached the disk (no counter: the commit-latency histogram)."""

    seconds: float = 0.0


@dataclass(frozen=True)
class ItemClosed(Event):
    """An item left the queue while it may be offered to an agent (the caller hung up,
    was found a duplicate, or R12 closed it): the leg holding it must stop (no counter;
    the specific event that closed it counts)."""


Subscriber = Callable[[Event], None]


@dataclass
class Notifier:
    """Synchronous fan-out in publish order. A subscriber that raises is removed from
    nothing and stops nothing: the error goes to ``on_error`` and the others still run."""

    subscribers: list[Subscriber] = field(default_factory=list)
    on_error: Callable[[Event, Exception], None] = lambda event, exc: None

    def subscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.append(subscriber)

    def publish(self, event: Event) -> None:
        for subscriber in list(self.subscribers):
            try:
                subscriber(event)
            except Exception as exc:
                self.on_error(event, exc)


@dataclass
class Counters:
    """Event counts exported as metrics (R19): a subscriber of the notifier."""

    values: dict[str, int] = field(default_factory=dict)

    def __call__(self, event: Event) -> None:
        if event.counter:
            self.values[event.counter] = self.values.get(event.counter, 0) + 1
