"""Wiring: config -> store -> engine -> ARI -> flows -> web. Nothing else lives here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web

from ivr.ari import AriClient
from ivr.config import Config
from ivr.domain.items import SystemClock
from ivr.domain.queues import QueueEngine, QueuePolicy
from ivr.flows.agents import Dispatcher
from ivr.flows.context import FlowContext
from ivr.flows.switchboard import Switchboard
from ivr.store import SqliteStore
from ivr.web.api import TOKEN, make_web_app

log = logging.getLogger("ivr.app")


def policies(cfg: Config) -> list[QueuePolicy]:
    return [
        QueuePolicy(
            name=q.name,
            max_waiting=q.max_waiting,
            max_ewt=q.max_ewt,
            retry_interval=q.retry_interval,
            max_attempts=q.max_attempts,
            expire_after=q.expire_after,
        )
        for q in cfg.queues.values()
    ]


class Service:
    """The running product. ``start()`` returns once the ARI websocket is up."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.ari = AriClient(cfg.ari.url, cfg.ari.user, cfg.ari.password, cfg.ari.app)
        self.engine = QueueEngine(policies(cfg), SystemClock())
        self.store: SqliteStore | None = None
        self.ctx: FlowContext | None = None
        self.switchboard: Switchboard | None = None
        self.dispatcher: Dispatcher | None = None
        self._events: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.web_token = ""

    async def start(self, *, http: bool = True, connect_timeout: float = 30.0) -> None:
        self.cfg.store_path.parent.mkdir(parents=True, exist_ok=True)
        self.store = await SqliteStore.open(self.cfg.store_path)
        # R20/R21: the queues are rebuilt from the store before any call is taken.
        self.engine.restore(await self.store.load_open())
        await self.store.save(self.engine.drain_changes())
        self.ctx = FlowContext(self.cfg, self.ari, self.engine, self.store)
        self.switchboard = Switchboard(self.ctx)
        self.dispatcher = Dispatcher(self.ctx, self.switchboard)
        self.ctx.on_work_changed = self.dispatcher.kick
        self.ctx.on_item_closed = self.dispatcher.item_closed

        async def on_connect(reconnected: bool) -> None:
            assert self.switchboard is not None and self.dispatcher is not None
            await self.dispatcher.on_connect()
            await self.switchboard.on_connect(reconnected)

        self._events = asyncio.create_task(self.ari.run(self.switchboard.on_event, on_connect))
        await asyncio.wait_for(self.ari.connected.wait(), connect_timeout)
        self.dispatcher.start()
        if http:
            app = make_web_app(self.ctx, self.dispatcher)
            self.web_token = app[TOKEN]
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.cfg.http.bind, self.cfg.http.port)
            await site.start()
            log.info("HTTP API on %s:%d", self.cfg.http.bind, self.cfg.http.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.dispatcher is not None:
            await self.dispatcher.close()
        if self.switchboard is not None:
            await self.switchboard.close()
        await self.ari.close()
        if self._events is not None:
            self._events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events
        if self.store is not None:
            await self.store.close()


@contextlib.asynccontextmanager
async def running(cfg: Config, *, http: bool = False) -> AsyncIterator[Service]:
    svc = Service(cfg)
    try:
        await svc.start(http=http)
        yield svc
    finally:
        await svc.stop()


async def run_forever(cfg: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    svc = Service(cfg)
    await svc.start(connect_timeout=3600)
    log.info("ivr running: app=%s, %d queues, %d agents", cfg.ari.app, len(cfg.queues),
             len(cfg.agents))
    try:
        await stop.wait()
    finally:
        await svc.stop()
