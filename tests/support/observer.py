"""An independent ARI observer: a second app with ``subscribeAll=true``.

It sees every channel, playback, DTMF and bridge event, including those of channels
the app under test controls (Asterisk 22 sends them to a subscribeAll app), so tests
assert on what Asterisk did rather than on the app's own account of it. Deliberately not
the project's ARI client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from rig.sandbox import AsteriskInstance

Event = dict[str, Any]


def channel_id(event: Event) -> str | None:
    ch = event.get("channel")
    return str(ch["id"]) if isinstance(ch, dict) and "id" in ch else None


class AriObserver:
    """Collects every ARI event of the instance; ``wait_for`` one with a deadline."""

    def __init__(self, instance: AsteriskInstance, app: str = "observer") -> None:
        self.instance = instance
        self.app = app
        self.events: list[Event] = []
        # Channels already handed out by ``observing.caller_channel``: a test's next
        # caller from the same number gets the next channel, not the first one again.
        self.claimed: set[str] = set()
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def headers(self) -> dict[str, str]:
        i = self.instance
        return {"Authorization": aiohttp.encode_basic_auth(i.ari_user, i.ari_password)}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(headers=self.headers)
        url = f"{self.instance.ari_url}/ari/events?app={self.app}&subscribeAll=true"
        self._ws = await self._session.ws_connect(url, heartbeat=20)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                event = json.loads(msg.data)
                event["_received"] = time.time()
                self.events.append(event)
                self._changed.set()
        self._changed.set()

    async def close(self) -> None:
        # The reader first: aiohttp's close() called while another task sits in
        # receive() waits, without a timeout, for that task to see the close (a run hung
        # there for good once). With no reader, close() has its own timeout.
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    def find(self, predicate: Callable[[Event], bool]) -> list[Event]:
        return [e for e in self.events if predicate(e)]

    async def wait_for(
        self, predicate: Callable[[Event], bool], timeout: float = 30.0, *, after: int = 0
    ) -> Event:
        """First event (from index ``after`` on) matching ``predicate``; TimeoutError
        listing the event types seen if none arrives within ``timeout``."""
        deadline = time.monotonic() + timeout
        i = after
        while True:
            while i < len(self.events):
                if predicate(self.events[i]):
                    return self.events[i]
                i += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [e.get("type") for e in self.events[after:]][-40:]
                raise TimeoutError(f"no matching ARI event within {timeout:.0f}s; saw {seen}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_type(self, type_: str, timeout: float = 30.0, **match: Any) -> Event:
        """Shorthand: event of ``type_`` whose top-level fields equal ``match``
        (``channel_id=`` matches the event's channel id)."""
        cid = match.pop("channel_id", None)

        def pred(e: Event) -> bool:
            if e.get("type") != type_:
                return False
            if cid is not None and channel_id(e) != cid:
                return False
            return all(e.get(k) == v for k, v in match.items())

        return await self.wait_for(pred, timeout)
