"""A queue's rules for the engine (SPEC R2, R10, R14, R16): the one home of their ranges.

Config builds a ``QueuePolicy`` per queue and turns a ``PolicyError`` into an error that
names the key and line; the engine reads it. A new engine rule is added here and in the
config builder, nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass


class PolicyError(ValueError):
    """A rule out of range. ``field`` is the config key under the queue."""

    def __init__(self, queue: str, field: str, reason: str) -> None:
        super().__init__(f"queue {queue}: {field} {reason}")
        self.field = field
        self.reason = reason


def _seconds(x: float) -> str:
    return f"{x:g}s"


@dataclass(frozen=True)
class QueuePolicy:
    name: str
    max_waiting: int | None = None  # R2: overflow when waiting items exceed this
    max_ewt: float | None = None  # R2: overflow when EWT exceeds this, seconds
    retry_interval: float = 600.0  # R10
    max_attempts: int = 3  # R10
    expire_after: float = 7 * 86400.0  # R14
    ewt_alpha: float = 0.25  # app_queue's (old*3 + new)/4 weighting; see ewt.py
    initial_dequeue_interval: float = 60.0  # per-agent EWT prior before the first sample

    # (field, low, high, unit formatter): the ranges operators may set (R2 gives the
    # first two; the others keep a typo like "3d" for retry_interval from being taken).
    RANGES = (
        ("max_waiting", 1, 100, str),
        ("max_ewt", 30.0, 3600.0, _seconds),
        ("retry_interval", 0.1, 86400.0, _seconds),
        ("max_attempts", 1, 20, str),
        ("expire_after", 1.0, 90 * 86400.0, _seconds),
    )

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("queue name must not be empty")
        for name, lo, hi, show in self.RANGES:
            value = getattr(self, name)
            if value is not None and not lo <= value <= hi:
                raise PolicyError(self.name, name,
                                  f"must be between {show(lo)} and {show(hi)}")
        if not 0 < self.ewt_alpha <= 1:
            raise PolicyError(self.name, "ewt_alpha", "must be in (0, 1]")
        if not self.initial_dequeue_interval > 0:
            raise PolicyError(self.name, "initial_dequeue_interval", "must be > 0")
