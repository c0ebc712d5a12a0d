"""Pure queue domain: work items, the queue engine, EWT, the number guard.

No I/O and no asyncio here; time comes from an injected ``Clock``.
"""

from ivr.domain.items import (
    CLOSED_STATES,
    OPEN_STATES,
    Clock,
    FakeClock,
    HistoryEntry,
    Kind,
    State,
    SystemClock,
    WorkItem,
)
from ivr.domain.numbers import DEFAULT_TYPES, NumberGuard, PhoneNumber, parse
from ivr.domain.policy import PolicyError, QueuePolicy
from ivr.domain.queues import (
    DuplicateCallback,
    InvalidTransition,
    QueueEngine,
    QueueError,
    UnknownItem,
    UnknownQueue,
)

__all__ = [
    "CLOSED_STATES",
    "DEFAULT_TYPES",
    "OPEN_STATES",
    "Clock",
    "DuplicateCallback",
    "FakeClock",
    "HistoryEntry",
    "InvalidTransition",
    "Kind",
    "NumberGuard",
    "PhoneNumber",
    "PolicyError",
    "QueueEngine",
    "QueueError",
    "QueuePolicy",
    "State",
    "SystemClock",
    "UnknownItem",
    "UnknownQueue",
    "WorkItem",
    "parse",
]
