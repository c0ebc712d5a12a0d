"""Estimated wait time from the dequeue rate (SPEC R16).

EWT(p) = p x (smoothed time between dequeues per serving agent) / serving agents.

Why "per serving agent": the raw interval between dequeues shrinks as agents log in.
Normalising each sample by the number of agents serving at that moment gives a figure
close to the per-agent handle time, which stays valid when staffing changes; dividing
by the current number of agents turns it back into a queue interval. This is the
dequeue-rate model Cisco publishes for Courtesy Callback; Asterisk app_queue smooths its
hold time the same way with weight 1/4 (``(old * 3 + new) / 4``), hence the default
``alpha = 0.25`` in ``QueuePolicy``.

Idle time is not dequeue time: the interval runs from the later of the previous dequeue
and the moment the queue last became non-empty, so a queue that sat empty for an hour
does not look like a queue that takes an hour per caller.
"""

from __future__ import annotations

import math
from collections import deque

EWT_ERROR_SAMPLES = 1000  # bounded so a long-running process does not grow without limit


class DequeueEstimator:
    def __init__(self, alpha: float, initial_interval: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        if initial_interval <= 0:
            raise ValueError("initial_interval must be > 0")
        self.alpha = alpha
        self.per_agent_interval = initial_interval
        self.samples = 0
        self._since: float | None = None
        self.errors: deque[tuple[float, float]] = deque(maxlen=EWT_ERROR_SAMPLES)

    def queue_became_busy(self, at: float) -> None:
        """The queue went from empty to non-empty: the next interval starts now."""
        self._since = at

    def dequeued(self, at: float, serving_agents: int) -> float | None:
        """Record a dequeue; returns the per-agent sample used (None if none could be
        measured, e.g. the first dequeue after a restore without a start point)."""
        since = self._since
        self._since = at
        if since is None:
            return None
        sample = max(0.0, at - since) * max(1, serving_agents)
        if self.samples == 0:
            # The prior is a guess: the first real measurement replaces it rather than
            # being averaged with it, so a fresh queue converges in one dequeue.
            self.per_agent_interval = sample
        else:
            self.per_agent_interval += self.alpha * (sample - self.per_agent_interval)
        self.samples += 1
        return sample

    def estimate(self, position: int, serving_agents: int) -> float:
        """Expected wait for ``position`` (1-based). Nobody serving: the queue does not
        move, the honest answer is infinity (callers must not serialise it to JSON as is).
        """
        if position <= 0:
            return 0.0
        if serving_agents <= 0:
            return math.inf
        return position * self.per_agent_interval / serving_agents

    def record_error(self, predicted: float, actual: float) -> None:
        self.errors.append((predicted, actual))


#: what a caller is told of the wait: "unknown" (nobody serving), "under_minute",
#: "about" N minutes, or "more_than" N minutes
SpokenWait = tuple[str, int]
#: beyond this many minutes nobody plans by the exact figure: "more than 30 minutes"
SPOKEN_CAP_MINUTES = 30


def spoken_wait(seconds: float) -> SpokenWait:
    """The wait the way people say it: under a minute; about 1..10 minutes; about 15,
    20, 25, 30 (to the nearest 5); more than 30. An unbounded estimate (no agent serves
    the queue) is ``("unknown", 0)``: say so instead of a number."""
    if not math.isfinite(seconds):
        return ("unknown", 0)
    if seconds < 60:
        return ("under_minute", 0)
    minutes = seconds / 60
    if minutes < 10.5:
        return ("about", max(1, round(minutes)))
    if minutes <= SPOKEN_CAP_MINUTES + 2.5:
        return ("about", min(SPOKEN_CAP_MINUTES, 5 * round(minutes / 5)))
    return ("more_than", SPOKEN_CAP_MINUTES)
