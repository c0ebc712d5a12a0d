"""The service under test: in-process (``serving``, behind the ``service`` fixture) or
as a subprocess, the way an operator runs it (``until_healthy``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from ivr.app import Service, running
from rig.sandbox import AsteriskInstance
from tests.support.config import write_config
from tests.support.waiting import until, until_async


class StartService(Protocol):
    """``await service(queues, agents, not_ready=[...], **top)``: see ``serving``."""

    async def __call__(
        self,
        queues: Mapping[str, Mapping[str, Any]],
        agents: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        not_ready: Iterable[str] = (),
        wait_reachable: bool = True,
        **top: Any,
    ) -> Service: ...


@contextlib.asynccontextmanager
async def serving(inst: AsteriskInstance, tmp_path: Path) -> AsyncIterator[StartService]:
    """Starts the real service in-process, as often as asked; stops every one started
    (the last first) on the way out.

    ``start(queues, agents, not_ready=[...], wait_reachable=True, **top)`` writes the
    config (``write_config``: ``top`` are further top-level keys), starts the service,
    waits until every agent's endpoint is reachable (``wait_reachable=False``: an agent
    without a contact stays offline), then sets the agents listed in ``not_ready``
    not-ready before any call arrives."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            queues: Mapping[str, Mapping[str, Any]],
            agents: Mapping[str, Mapping[str, Any]] | None = None,
            *,
            not_ready: Iterable[str] = (),
            wait_reachable: bool = True,
            **top: Any,
        ) -> Service:
            cfg = write_config(inst, tmp_path, queues, agents, **top)
            svc = await stack.enter_async_context(running(cfg))
            if wait_reachable:
                await until(lambda: all(a.reachable for a in svc.board))
            for name in not_ready:
                svc.board.set_ready(name, False)
            return svc

        yield start


async def until_healthy(
    url: str, alive: Callable[[], bool], log: Callable[[], str] = lambda: "",
    timeout: float = 30.0,
) -> None:
    """Until a service run as a subprocess answers its health probe ``url`` with 200
    (its ARI websocket is up and the resync done). A process that is no longer
    ``alive`` fails at once, with its ``log``, instead of at the deadline."""
    async with aiohttp.ClientSession() as http:

        async def healthy() -> bool:
            assert alive(), f"the service exited\n{log()}"
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return True
            return False

        await until_async(healthy, timeout, lambda: f"service not healthy\n{log()}", every=0.1)
