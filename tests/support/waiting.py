"""Waiting with a deadline, never a fixed sleep: poll a condition until it holds.

``until`` polls a plain condition (the service's state, the observer's events, a
peer's trace, the store); ``until_async`` one that must await (an HTTP or ARI request).
Both raise TimeoutError naming ``what`` was awaited once ``timeout`` seconds have passed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

What = str | Callable[[], str]


async def until(
    cond: Callable[[], bool], timeout: float = 30.0, what: What = "", *, every: float = 0.05
) -> None:
    """Poll ``cond`` every ``every`` seconds until it holds, for at most ``timeout``."""

    async def check() -> bool:
        return cond()

    await until_async(check, timeout, what, every=every)


async def until_async(
    cond: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: What = "", *,
    every: float = 0.2,
) -> None:
    """``until`` for a condition that awaits; polled every 0.2 s unless told otherwise
    (each check is a request of its own). ``what`` may be a function: it is called only
    on the timeout, so it can describe the state at that moment."""
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            about = what() if callable(what) else what
            raise TimeoutError(f"condition not met within {timeout:.0f}s"
                               + (f": {about}" if about else ""))
        await asyncio.sleep(every)
