"""What an ``AriClient`` delivered (events, connect signals), with deadline waits."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

from ivr import ari

E = TypeVar("E", bound=ari.Event)


class Recorder:
    """Pass ``on_event`` / ``on_connect`` to ``AriClient.run``; wait on what came."""

    def __init__(self, timeout: float = 20.0) -> None:
        self.events: list[ari.Event] = []
        self.connects: list[bool] = []
        self.timeout = timeout
        self._changed = asyncio.Event()

    def on_event(self, ev: ari.Event) -> None:
        self.events.append(ev)
        self._changed.set()

    async def on_connect(self, reconnected: bool) -> None:
        self.connects.append(reconnected)
        self._changed.set()

    async def wait(self, cond: Callable[[], bool], timeout: float | None = None) -> None:
        """Until ``cond()`` holds (woken by every delivery); TimeoutError naming the
        last events otherwise."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("condition not met; events: "
                                   + ", ".join(e.type for e in self.events[-20:]))
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.05))

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    async def event(self, kind: type[E], pred: Callable[[E], bool] = lambda e: True,
                    timeout: float | None = None) -> E:
        """The first event of ``kind`` matching ``pred``, waiting for it."""
        found: list[E] = []

        def check() -> bool:
            found[:] = [e for e in self.of(kind) if pred(e)]
            return bool(found)

        await self.wait(check, timeout)
        return found[0]
