"""Live updates for the consoles: server-sent events, the last hour's samples, the day's
outcome funnel.

The feed is a subscriber of the flows' notifier: any event marks every open stream dirty;
each stream then sends one fresh snapshot (coalesced: a burst of events is one message)
and at least one every ``refresh`` seconds (waits grow without events). A snapshot is the
same typed body as the REST route (``/api/desk`` for an agent, ``/api/wallboard`` for a
supervisor), so the page renders one shape either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from ivr.domain import events
from ivr.flows.context import FlowContext
from ivr.web import models
from ivr.web.views import ts

#: one sample per this many seconds, one hour kept
SAMPLE_EVERY = 10.0
SAMPLES_KEPT = 360
#: the funnel is read from the store at most this often
FUNNEL_TTL = 2.0


@dataclass(frozen=True)
class Point:
    at: float
    depth: int
    longest_wait: float


class LiveFeed:
    """Dirty flags for the open event streams, plus the depth/wait samples."""

    def __init__(self, ctx: FlowContext, *, sample_every: float = SAMPLE_EVERY,
                 refresh: float = 5.0, coalesce: float = 0.2) -> None:
        self.ctx = ctx
        self.sample_every = sample_every
        self.refresh = refresh
        self.coalesce = coalesce
        self.samples: dict[str, deque[Point]] = {
            name: deque(maxlen=SAMPLES_KEPT) for name in ctx.cfg.queues}
        self._streams: set[asyncio.Event] = set()
        self._task: asyncio.Task[None] | None = None
        self.closing = asyncio.Event()
        self._funnel: tuple[float, dict[str, dict[str, int]]] | None = None
        ctx.notifier.subscribe(self._on_event)

    def _on_event(self, event: events.Event) -> None:
        if isinstance(event, events.StoreCommitted):
            return  # every change that matters has its own event
        self._funnel = None  # read afresh by the next snapshot
        for dirty in self._streams:
            dirty.set()

    # ---- samples

    def start(self) -> None:
        self.sample()
        self._task = asyncio.create_task(self._sampler(), name="live-sampler")

    async def close(self) -> None:
        self.closing.set()
        for dirty in self._streams:
            dirty.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sampler(self) -> None:
        while True:
            await asyncio.sleep(self.sample_every)
            self.sample()

    def sample(self) -> None:
        now = self.ctx.now()
        for name, points in self.samples.items():
            items = self.ctx.engine.items(name)
            longest = max((now - i.arrived_at for i in items), default=0.0)
            points.append(Point(now, len(items), round(longest, 1)))

    def series(self) -> list[models.Series]:
        """The samples, each queue's series ending with its state right now."""
        now = self.ctx.now()
        out = []
        for name, points in self.samples.items():
            items = self.ctx.engine.items(name)
            longest = max((now - i.arrived_at for i in items), default=0.0)
            current = Point(now, len(items), round(longest, 1))
            out.append(models.Series(queue=name, points=[
                models.Sample(at=ts(p.at), depth=p.depth, longest_wait=p.longest_wait)
                for p in (*points, current)]))
        return out

    # ---- the day's funnel

    async def stats(self) -> models.Stats:
        midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0,
                                                       microsecond=0)
        since = midnight.timestamp()
        cached = self._funnel
        if cached is None or time.monotonic() - cached[0] > FUNNEL_TTL:
            counts = await self.ctx.store.funnel(since)
            self._funnel = cached = (time.monotonic(), counts)
        funnel = []
        for name in self.ctx.cfg.queues:
            c = cached[1].get(name, {})
            funnel.append(models.Funnel(
                queue=name, offered=c.get("callback_offered", 0),
                requested=c.get("converted_to_callback", 0) + c.get("callback_requested", 0)
                + c.get("callback_scheduled", 0),
                scheduled=c.get("callback_scheduled", 0), accepted=c.get("dial_started", 0),
                connected=c.get("callback_connected", 0), failed=c.get("failed", 0),
                expired=c.get("expired", 0), cancelled=c.get("cancelled", 0)))
        return models.Stats(since=midnight, funnel=funnel, series=self.series())

    def forget_funnel(self) -> None:
        self._funnel = None

    # ---- streams

    async def stream(self, send: Callable[[], Awaitable[None]]) -> None:
        """Call ``send`` now, after each change (coalesced) and every ``refresh``
        seconds, until the client goes away or the service stops."""
        dirty = asyncio.Event()
        self._streams.add(dirty)
        try:
            while not self.closing.is_set():
                await send()
                with contextlib.suppress(TimeoutError):  # (asyncio.timeout: see Dispatcher)
                    async with asyncio.timeout(self.refresh):
                        await dirty.wait()
                if self.closing.is_set():
                    return
                await asyncio.sleep(self.coalesce)
                dirty.clear()
        finally:
            self._streams.discard(dirty)
