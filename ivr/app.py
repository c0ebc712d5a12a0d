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

from ivr import ari
from ivr.ari import AriClient
from ivr.config import DEFAULT_NODE, Config
from ivr.domain.agents import AgentBoard
from ivr.domain.items import SystemClock
from ivr.domain.queues import QueueEngine
from ivr.flows.context import FlowContext
from ivr.flows.dispatcher import Dispatcher
from ivr.flows.switchboard import Switchboard
from ivr.store import SqliteStore, Store, StoreError
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
        # One ARI client per Asterisk node (``ari:`` is one node); ``ari``: a test's.
        self.clients: dict[str, AriClient] = {
            name: AriClient(n.ari.url, n.ari.user, n.ari.password, n.ari.app,
                            request_timeout=n.ari.request_timeout,
                            patience=n.ari.give_up_after)
            for name, n in cfg.nodes.items()
        } if ari is None else {next(iter(cfg.nodes), DEFAULT_NODE): ari}
        #: the first node's client
        self.ari = next(iter(self.clients.values()))
        self.clock = SystemClock()
        self.engine = QueueEngine([q.policy for q in cfg.queues.values()], self.clock)
        self.store: Store | None = None
        #: "starting", "standby" (waiting for the active instance's lock), "active"
        self.role = "starting"
        #: set when the store lost the PostgreSQL session holding the active lock:
        #: another instance may be active now, this one must stop at once
        self.fenced = asyncio.Event()
        self.fenced_reason = ""
        self.ctx: FlowContext | None = None
        self.switchboard: Switchboard | None = None
        self.board = AgentBoard(cfg.agents.values(), self.clock)
        self.dispatcher: Dispatcher | None = None
        #: the events task of each node, supervised (restarted should it end)
        self._node_events: dict[str, _NodeEvents] = {}
        self._stopping = False
        self._runner: web.AppRunner | None = None
        self.web_token = ""

    async def start(self, *, http: bool = True, connect_timeout: float = 30.0) -> None:
        if self.cfg.store_url:
            await self._open_shared_store(http)
        else:
            # The store creates its directory (0700) and file (0600) itself.
            try:
                self.store = await SqliteStore.open(self.cfg.store_path)
            except (StoreError, sqlite3.Error, OSError, ValueError) as exc:
                raise StoreUnusable(f"cannot open the store {self.cfg.store_path}: {exc}") \
                    from exc
        self.role = "active"
        assert self.store is not None
        # R20/R21: the queues are rebuilt from the store before any call is taken.
        self.engine.restore(await self.store.load_open())
        await self.store.save(self.engine.drain_changes())
        self.ctx = FlowContext(self.cfg, self.ari, self.engine, self.store, self.clock,
                               nodes=self.clients)
        for item in self.engine.lost_dials():
            self.ctx.unresolved[item.id] = self.ctx.node_name(item.node)
        self.switchboard = Switchboard(self.ctx)
        self.dispatcher = Dispatcher(self.ctx, self.switchboard, self.board)
        for name, client in self.clients.items():
            self._node_events[name] = _NodeEvents(self, name, client)
        for events in self._node_events.values():
            events.start()
        # Carry on as soon as one node is up: a node that is down comes in when it
        # connects (its agents and callers join then).
        await asyncio.wait_for(_any_set([c.connected for c in self.clients.values()]),
                               connect_timeout)
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

    async def _open_shared_store(self, http: bool) -> None:
        """PostgreSQL: take the active lock, waiting as a standby (``/healthz`` says so)
        while another instance holds it."""
        standby: web.AppRunner | None = None

        def waiting() -> None:
            self.role = "standby"
            log.info("standby: another instance is active; waiting for its lock")

        def fenced(reason: str) -> None:
            self.fenced_reason = reason
            self.fenced.set()
            log.critical("lost the active lock (%s): stopping at once", reason)

        from ivr.pgstore import PgStore, redact_url  # late: SQLite users need no asyncpg

        if http:
            standby = await self._serve(_standby_app(self))
        delay = self.restart_backoff_initial
        try:
            while True:
                try:
                    self.store = await PgStore.open(self.cfg.store_url, on_waiting=waiting,
                                                     on_fenced=fenced)
                    break
                except StoreError as exc:
                    if self.role != "standby":  # never reached it: a configuration matter
                        raise StoreUnusable(f"cannot open the store "
                                            f"{redact_url(self.cfg.store_url)}: {exc}") \
                            from exc
                    # A standby whose wait was cut (the server restarted, a network
                    # blip): it waits again rather than exit.
                    log.warning("standby: lost the connection while waiting (%s); "
                                "again in %.0fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.restart_backoff_max)
        finally:
            if standby is not None:
                await standby.cleanup()
        log.info("active: holding the lock on %s", redact_url(self.cfg.store_url))

    async def _serve(self, app: web.Application) -> web.AppRunner:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, self.cfg.http.bind, self.cfg.http.port).start()
        return runner

    # ------------------------------------------------------------------ events task

    @property
    def _events(self) -> asyncio.Task[None] | None:
        """The first node's events task."""
        first = self._node_events.get(next(iter(self.clients)))
        return first.task if first is not None else None

    @property
    def events_task_alive(self) -> bool:
        return bool(self._node_events) and all(e.alive for e in self._node_events.values())

    @property
    def event_task_restarts(self) -> int:
        """Times an events task ended unexpectedly and was started again."""
        return sum(e.restarts for e in self._node_events.values())

    def health(self) -> dict[str, object]:
        """What ``/healthz`` reports: every true/false value must be true for a 200.
        Several nodes: up while one node is (the others' callers carry on); the nodes
        that are down are listed."""
        up = [name for name, c in self.clients.items() if c.connected.is_set()]
        out: dict[str, object] = {
            "role": self.role,
            "ari_connected": bool(up),
            "events_task_alive": self.events_task_alive,
        }
        if len(self.clients) > 1:
            out["nodes_down"] = [n for n in self.clients if n not in up]
        return out

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
        for events in self._node_events.values():
            events.cancel_restart()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.dispatcher is not None:
            await self.dispatcher.close()
        if self.switchboard is not None:
            await self.switchboard.close()
        for client in self.clients.values():
            await client.close()
        for events in self._node_events.values():
            await events.stop()
        if self.store is not None:
            await self.store.close()


class _NodeEvents:
    """One node's events task (``AriClient.run``), supervised: should it ever end while
    the service is not stopping (returned, raised, cancelled), the error is logged and
    it is started again after a short backoff."""

    def __init__(self, svc: Service, node: str, client: AriClient) -> None:
        self.svc = svc
        self.node = node
        self.client = client
        self.task: asyncio.Task[None] | None = None
        self.restarts = 0
        self._started = 0.0
        self._delay = svc.restart_backoff_initial
        self._restart: asyncio.TimerHandle | None = None

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self) -> None:
        self._restart = None
        svc = self.svc
        if svc._stopping:
            return
        assert svc.switchboard is not None and svc.dispatcher is not None
        switchboard, dispatcher, node = svc.switchboard, svc.dispatcher, self.node

        def on_event(ev: ari.Event) -> None:
            switchboard.on_event(ev, node)

        async def on_connect(reconnected: bool) -> None:
            dispatcher.resyncing.add(node)
            try:
                await dispatcher.on_connect(node)
                await switchboard.on_connect(reconnected, node)
            finally:
                # No await between here and the client setting "connected".
                dispatcher.resyncing.discard(node)

        self._started = time.monotonic()
        task = asyncio.create_task(self.client.run(on_event, on_connect),
                                   name=f"ari-events-{node}")
        task.add_done_callback(self._ended)
        self.task = task

    def _ended(self, task: asyncio.Task[None]) -> None:
        svc = self.svc
        if svc._stopping or task is not self.task:
            if not task.cancelled() and task.exception() is not None:
                log.debug("ARI events task ended while stopping", exc_info=task.exception())
            return
        if task.cancelled():
            log.error("ARI events task (node %s) was cancelled while the service runs; "
                      "restarting", self.node)
        elif (exc := task.exception()) is not None:
            log.error("ARI events task (node %s) failed; restarting", self.node, exc_info=exc)
        else:
            log.error("ARI events task (node %s) ended while the service runs; restarting",
                      self.node)
        if time.monotonic() - self._started >= svc.restart_backoff_reset:
            self._delay = svc.restart_backoff_initial
        delay = self._delay
        self._delay = min(delay * 2, svc.restart_backoff_max)
        self.restarts += 1
        log.info("ARI events task restart #%d in %.1fs", self.restarts, delay)
        self._restart = asyncio.get_running_loop().call_later(delay, self.start)

    def cancel_restart(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            # Its end was logged by _ended; stopping must not fail on it.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


async def _any_set(flags: list[asyncio.Event]) -> None:
    """Returns once one of ``flags`` is set."""
    waiters = [asyncio.ensure_future(f.wait()) for f in flags]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def _standby_app(svc: Service) -> web.Application:
    """What a standby serves: ``/healthz`` saying so (503, so a load balancer sends the
    consoles to the active instance)."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "role": svc.role,
                                  "reason": "standby: another instance is active"},
                                 status=503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    return app


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


class Fenced(Exception):
    """The active instance lost its PostgreSQL session (and with it the lock): another
    instance may be active already, so this one stopped at once."""


async def run_forever(cfg: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    svc = Service(cfg)
    # A standby waits inside start() (for the active lock): a signal must end that too.
    starting = asyncio.create_task(svc.start(connect_timeout=3600))
    signalled = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await svc.stop()
            log.info("ivr stopped (%s)", svc.role)
            return
        starting.result()
    except BaseException:
        signalled.cancel()
        await svc.stop()
        raise
    log.info("ivr running: app=%s, %d queues, %d agents, %d Asterisk node(s)", cfg.ari.app,
             len(cfg.queues), len(cfg.agents), len(svc.clients))
    fenced = asyncio.create_task(svc.fenced.wait())
    try:
        await asyncio.wait({signalled, fenced}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
        fenced.cancel()
        # Fenced: not a moment of grace (another instance may be active already).
        graceful = stop.is_set() and not svc.fenced.is_set()
        await svc.stop(grace=SHUTDOWN_GRACE if graceful else None)
    if svc.fenced.is_set():
        raise Fenced(svc.fenced_reason)
    log.info("ivr stopped")
