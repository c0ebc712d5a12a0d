"""Wiring: config -> store -> engine -> ARI -> flows -> web. Nothing else lives here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from ivr.ari import AriClient, ConnectHandler
from ivr.config import Config
from ivr.domain.agents import AgentBoard
from ivr.domain.items import SystemClock
from ivr.domain.queues import QueueEngine
from ivr.flows.context import FlowContext
from ivr.flows.dispatcher import Dispatcher
from ivr.flows.switchboard import Switchboard
from ivr.store import SqliteStore, StoreError
from ivr.web.api import make_web_app

log = logging.getLogger("ivr.app")


class StoreUnusable(Exception):
    """The store could not be opened at start (a configuration problem: exit 2)."""


#: the generated API token lives next to the store database, readable by its owner only
TOKEN_FILE = "api-token"
_TOKEN_TEXT = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")


def api_token(cfg: Config) -> str:
    """The bearer token of the HTTP API.

    ``http.api_token`` / ``IVR_API_TOKEN`` when set. Otherwise one is generated ONCE and
    kept in ``<store dir>/api-token`` (created 0600, reused by every later start), so the
    operator can read it there; its path is logged, the token never is."""
    if cfg.http.api_token:
        return cfg.http.api_token
    path = cfg.store_path.parent / TOKEN_FILE
    token = _read_token(path)
    if token is None:
        token = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            # Another process made one just now (or an unusable file is in the way).
            existing = _read_token(path)
            if existing is None:
                raise RuntimeError(
                    f"{path} exists but holds no usable API token: fix or remove it, "
                    "or set http.api_token / IVR_API_TOKEN"
                ) from None
            token = existing
        else:
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            log.info("generated an API token in %s (set http.api_token or IVR_API_TOKEN "
                     "to choose one)", path)
            return token
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s is readable by others (mode %o): tightening to 0600", path, mode)
        os.chmod(path, 0o600)
    log.info("API token read from %s", path)
    return token


def _read_token(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    return text if _TOKEN_TEXT.fullmatch(text) else None


class Service:
    """The running product. ``start()`` returns once the ARI websocket is up.

    The events task (``ari.run``) is supervised: should it ever end while the service is
    not stopping (returned, raised, cancelled), the error is logged and it is started
    again after a short backoff; ``event_task_restarts`` counts those restarts. ``/healthz``
    is 200 only while the websocket is connected and that task is alive."""

    #: first and largest pause before the events task is restarted (doubling in between)
    restart_backoff_initial = 0.5
    restart_backoff_max = 10.0
    #: a run that lasted this long resets the restart backoff
    restart_backoff_reset = 60.0

    def __init__(self, cfg: Config, *, ari: AriClient | None = None) -> None:
        self.cfg = cfg
        self.ari = ari or AriClient(cfg.ari.url, cfg.ari.user, cfg.ari.password, cfg.ari.app)
        self.clock = SystemClock()
        self.engine = QueueEngine([q.policy for q in cfg.queues.values()], self.clock)
        self.store: SqliteStore | None = None
        self.ctx: FlowContext | None = None
        self.switchboard: Switchboard | None = None
        self.board = AgentBoard(cfg.agents.values(), self.clock)
        self.dispatcher: Dispatcher | None = None
        self._events: asyncio.Task[None] | None = None
        self._on_connect: ConnectHandler | None = None
        self._events_started = 0.0
        self._restart: asyncio.TimerHandle | None = None
        self._restart_delay = self.restart_backoff_initial
        self._stopping = False
        self._runner: web.AppRunner | None = None
        self.web_token = ""
        #: times the events task ended unexpectedly and was started again
        self.event_task_restarts = 0

    async def start(self, *, http: bool = True, connect_timeout: float = 30.0) -> None:
        # The store creates its directory (0700) and file (0600) itself.
        try:
            self.store = await SqliteStore.open(self.cfg.store_path)
        except (StoreError, sqlite3.Error, OSError, ValueError) as exc:
            raise StoreUnusable(f"cannot open the store {self.cfg.store_path}: {exc}") \
                from exc
        # R20/R21: the queues are rebuilt from the store before any call is taken.
        self.engine.restore(await self.store.load_open())
        await self.store.save(self.engine.drain_changes())
        self.ctx = FlowContext(self.cfg, self.ari, self.engine, self.store, self.clock)
        self.switchboard = Switchboard(self.ctx)
        self.dispatcher = Dispatcher(self.ctx, self.switchboard, self.board)

        async def on_connect(reconnected: bool) -> None:
            assert self.switchboard is not None and self.dispatcher is not None
            await self.dispatcher.on_connect()
            await self.switchboard.on_connect(reconnected)

        self._on_connect = on_connect
        self._start_events()
        await asyncio.wait_for(self.ari.connected.wait(), connect_timeout)
        self.dispatcher.start()
        if http:
            self.web_token = api_token(self.cfg)
            app = make_web_app(self.ctx, self.board, self.dispatcher, token=self.web_token,
                               health=self.health)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.cfg.http.bind, self.cfg.http.port)
            await site.start()
            log.info("HTTP API on %s:%d", self.cfg.http.bind, self.cfg.http.port)

    # ------------------------------------------------------------------ events task

    @property
    def events_task_alive(self) -> bool:
        return self._events is not None and not self._events.done()

    def health(self) -> dict[str, bool]:
        """What ``/healthz`` reports: every value must be true for a 200."""
        return {
            "ari_connected": self.ari.connected.is_set(),
            "events_task_alive": self.events_task_alive,
        }

    def _start_events(self) -> None:
        self._restart = None
        if self._stopping:
            return
        assert self.switchboard is not None
        self._events_started = time.monotonic()
        task = asyncio.create_task(self.ari.run(self.switchboard.on_event, self._on_connect),
                                   name="ari-events")
        task.add_done_callback(self._events_ended)
        self._events = task

    def _events_ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping or task is not self._events:
            if not task.cancelled() and task.exception() is not None:
                log.debug("ARI events task ended while stopping", exc_info=task.exception())
            return
        if task.cancelled():
            log.error("ARI events task was cancelled while the service runs; restarting")
        elif (exc := task.exception()) is not None:
            log.error("ARI events task failed; restarting", exc_info=exc)
        else:
            log.error("ARI events task ended while the service runs; restarting")
        if time.monotonic() - self._events_started >= self.restart_backoff_reset:
            self._restart_delay = self.restart_backoff_initial
        delay = self._restart_delay
        self._restart_delay = min(delay * 2, self.restart_backoff_max)
        self.event_task_restarts += 1
        log.info("ARI events task restart #%d in %.1fs", self.event_task_restarts, delay)
        self._restart = asyncio.get_running_loop().call_later(delay, self._start_events)

    async def stop(self, *, grace: float | None = None) -> None:
        """Stop. ``grace``: a graceful stop (SIGTERM) first lets in-flight steps finish
        for up to that many seconds while events still flow (see ``Dispatcher.drain``);
        waiting callers are left in Stasis for the next start to re-adopt."""
        if grace is not None and self.dispatcher is not None and not self._stopping:
            log.info("graceful stop: no new offers; finishing what is in flight (≤ %.0fs)",
                     grace)
            await self.dispatcher.drain(grace)
            if self.ctx is not None:
                await self.ctx.commit()
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        if self._runner is not None:
            await self._runner.cleanup()
        if self.dispatcher is not None:
            await self.dispatcher.close()
        if self.switchboard is not None:
            await self.switchboard.close()
        await self.ari.close()
        if self._events is not None:
            self._events.cancel()
            # Its end was logged by _events_ended; stopping must not fail on it.
            with contextlib.suppress(asyncio.CancelledError, Exception):
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


#: how long a graceful stop (SIGTERM/SIGINT) waits for in-flight steps
SHUTDOWN_GRACE = 10.0


async def run_forever(cfg: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    svc = Service(cfg)
    try:
        await svc.start(connect_timeout=3600)
    except BaseException:
        await svc.stop()
        raise
    log.info("ivr running: app=%s, %d queues, %d agents", cfg.ari.app, len(cfg.queues),
             len(cfg.agents))
    try:
        await stop.wait()
    finally:
        await svc.stop(grace=SHUTDOWN_GRACE if stop.is_set() else None)
    log.info("ivr stopped")
