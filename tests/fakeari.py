"""An in-process fake ARI (Asterisk 22) on aiohttp.web, for fault tests real calls cannot
time: a 500 on exactly one answer, a REST call that never returns, a malformed event
between two good ones, events out of order.

It speaks the REST paths and the ``/ari/events`` websocket that ``ivr.ari`` uses, checks
the Basic auth header, records every REST request, and keeps just enough state (channels
in Stasis, playbacks, bridges, endpoints) to answer the calls the service makes at start
and for a caller. Every event it emits is shaped from events recorded from a real
Asterisk 22 (``tests/fixtures/ari22_*.jsonl``; see ``tests/fixtures/README.md``), so
the fake cannot drift into a dialect of its own.

Usage::

    async with FakeAri() as fake:
        client = fake.client()            # a real AriClient with test-sized timings
        fake.fail("POST", "/channels/*/answer", 500, times=1)     # one 500
        fake.stall("POST", "/channels/*/moh", 5.0)                # a REST timeout
        chan = await fake.caller_enters("support", "5551234")     # StasisStart
        await fake.send_raw('{"type": "ChannelHangupRequest", "cause": 1e400}')
        await fake.dtmf(chan, "1")
        req = await fake.wait_for_request("POST", f"/channels/{chan}/answer")

Paths in patterns and records are DECODED and without the ``/ari`` prefix
(``/channels/<id>/answer``); ``Request.raw_path`` keeps what was sent on the wire.
Patterns are shell-style globs (``fnmatch``: ``*`` also matches ``/``); method ``"*"``
matches any method.

The whole service on the fake: ``async with service_on(fake, tmp_path) as (svc, base)``
(config from ``fake_config``: region US, queue ``support``, no agents unless given).

Out of scope on purpose: originated channels never ring or answer by themselves (a test
calls ``originated_answers``), no media, no Dial events, no ``ChannelDestroyed`` unless a
test sends one (``channel_event``), one Stasis app.

``python -m tests.fakeari record`` (root, the sandboxed Asterisk) records the fixtures
again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import fnmatch
import itertools
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import WSMsgType, web

from ivr.app import Service
from ivr.ari import AriClient
from ivr.config import Config
from rig.sandbox import free_port
from tests.support.config import write as write_test_config

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO = FIXTURES.parent.parent
#: the recorded event streams the fake takes its event shapes from
EVENT_FIXTURES = (
    "ari22_caller_press1.jsonl",
    "ari22_caller_hangs_up.jsonl",
    "ari22_agent_leg_bridge.jsonl",
)
#: recorded REST exchanges (method, path, query, status, body), one per line
REST_FIXTURE = "ari22_rest.jsonl"

Event = dict[str, Any]


# ------------------------------------------------------------------ fixtures


def load_jsonl(name: str) -> list[Event]:
    """One fixture file: one JSON object per line, exactly as Asterisk sent it."""
    path = FIXTURES / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


_templates: dict[str, Event] = {}


def template(event_type: str) -> Event:
    """A deep copy of the first recorded event of this type (KeyError if none)."""
    if not _templates:
        for name in EVENT_FIXTURES:
            for ev in load_jsonl(name):
                _templates.setdefault(str(ev["type"]), ev)
    return copy.deepcopy(_templates[event_type])


def rest_body(method: str, path_glob: str) -> Any:
    """The recorded response body of the first REST exchange matching ``path_glob``."""
    for ex in load_jsonl(REST_FIXTURE):
        if ex["method"] == method and fnmatch.fnmatchcase(ex["path"], path_glob):
            return copy.deepcopy(ex["body"])
    raise KeyError(f"{method} {path_glob}")


def ari_time(at: float | None = None) -> str:
    """A timestamp as ARI writes it: ``2026-11-28T09:00:00.123+0000``."""
    dt = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}+0000"


# ------------------------------------------------------------------ records and faults


@dataclass(frozen=True)
class Request:
    """One REST request the fake received."""

    method: str
    path: str
    """decoded, without ``/ari``: ``/channels/a/b/answer`` for id ``a/b``"""
    raw_path: str
    """as sent, without ``/ari``: ``/channels/a%2Fb/answer``"""
    segments: tuple[str, ...]
    """decoded path segments: ``("channels", "a/b", "answer")``"""
    query: dict[str, str]
    body: Any
    at: float
    status: int = 0
    """the status the fake answered (0: still being answered, or the client gave up)"""


@dataclass
class Fault:
    """An injected answer for requests matching ``method`` and the ``pattern`` glob:
    wait ``delay`` seconds, then answer ``status`` with ``body`` (a raw text; default a
    JSON ``{"message": ...}`` like Asterisk's), or, with ``status=None``, go on with the
    normal answer. ``times``: how many requests it applies to (None: all). ``gate``
    (``FakeAri.hold``): wait until ``release()`` instead of a delay."""

    method: str
    pattern: str
    status: int | None = 500
    delay: float = 0.0
    body: str | None = None
    times: int | None = None
    hits: int = 0
    gate: asyncio.Event | None = None

    def release(self) -> None:
        """Let the requests held by this fault (and any later ones) through."""
        if self.gate is not None:
            self.gate.set()

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return (self.method in ("*", method)) and fnmatch.fnmatchcase(path, self.pattern)


@dataclass
class _Playback:
    id: str
    channel_id: str
    media_uri: str
    task: asyncio.Task[None] | None = None
    state: str = "queued"


@dataclass
class _Bridge:
    id: str
    kind: str
    channels: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: ari_time())


_MESSAGES = {
    400: "Bad request", 404: "Resource not found", 409: "Conflict",
    500: "Internal Server Error", 503: "Service Unavailable",
}  # fmt: skip


class FakeAri:
    """A fake Asterisk 22 ARI server on 127.0.0.1 (a free port). See the module doc."""

    def __init__(
        self,
        *,
        user: str = "ivr",
        password: str = "fake-ari-secret",
        app: str = "ivr",
        playback_start_delay: float = 0.02,
        playback_duration: float = 0.2,
        asterisk_id: str = "02:fc:00:00:00:01",
    ) -> None:
        self.user = user
        self.password = password
        self.app = app
        #: seconds from POST .../play to PlaybackStarted, and from there to PlaybackFinished
        self.playback_start_delay = playback_start_delay
        self.playback_duration = playback_duration
        self.asterisk_id = asterisk_id
        self.port = 0
        #: channels in Stasis, as ARI JSON (what GET /channels answers)
        self.channels: dict[str, Event] = {}
        #: endpoint "TECH/resource" -> state ("online", "offline", "unknown"); unknown
        #: endpoints answer 404 like Asterisk
        self.endpoints: dict[str, str] = {}
        self.bridges: dict[str, _Bridge] = {}
        #: originated channels not (yet) answered: id -> (channel JSON, Stasis args)
        self.originated: dict[str, tuple[Event, list[str]]] = {}
        self.playbacks: dict[str, _Playback] = {}
        #: channels hung up through ARI or by the caller (ids), in order
        self.hung_up: list[str] = []
        #: every REST request, in arrival order
        self.requests: list[Request] = []
        #: every websocket frame sent (text), in order
        self.sent: list[str] = []
        self.faults: list[Fault] = []
        #: websocket upgrades accepted so far, and requests refused for bad credentials
        self.ws_accepted = 0
        self.auth_failures = 0
        #: answer websocket upgrades with this status instead (e.g. 503), None: accept
        self.refuse_websocket: int | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._seq = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._send_lock = asyncio.Lock()
        self._closing = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """The base URL to give ``AriClient`` (it appends ``/ari``)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeAri:
        app = web.Application()
        app.router.add_route("*", "/ari/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self._closing.set()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.drop_websockets()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def client(self, **kw: Any) -> AriClient:
        """A real ``AriClient`` for this fake, with test-sized timings (override any:
        ``heartbeat``, ``request_timeout``, ``patience``, ``backoff_initial``,
        ``backoff_max``)."""
        opts: dict[str, Any] = {"heartbeat": 1.0, "request_timeout": 0.5, "patience": 1.0,
                                "backoff_initial": 0.05, "backoff_max": 0.2}
        opts.update(kw)
        return AriClient(self.url, self.user, self.password, self.app, **opts)

    async def __aenter__(self) -> FakeAri:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ faults

    def fail(
        self,
        method: str,
        pattern: str,
        status: int = 500,
        *,
        body: str | None = None,
        times: int | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """Answer matching requests with ``status`` (after ``delay``)."""
        fault = Fault(method, pattern, status, delay, body, times)
        self.faults.append(fault)
        return fault

    def stall(self, method: str, pattern: str, seconds: float, *,
              times: int | None = None) -> Fault:
        """Hold matching requests ``seconds`` before the normal answer (a client with a
        shorter timeout sees a timeout)."""
        fault = Fault(method, pattern, None, seconds, None, times)
        self.faults.append(fault)
        return fault

    def hold(self, method: str, pattern: str, *, times: int | None = None) -> Fault:
        """Hold matching requests until ``fault.release()``, then give the normal answer
        (and its effect: a held answer answers the channel then): Asterisk carrying out a
        command long after the client stopped waiting for it, as late as the test says."""
        fault = Fault(method, pattern, None, 0.0, None, times, gate=asyncio.Event())
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    # ------------------------------------------------------------------ records

    def calls(self, method: str = "*", pattern: str = "*") -> list[Request]:
        """Recorded requests matching ``method`` (``"*"``: any) and the path glob."""
        return [r for r in self.requests
                if method in ("*", r.method) and fnmatch.fnmatchcase(r.path, pattern)]

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 5.0,
                       what: str = "condition") -> None:
        """Wait until ``cond()`` holds (re-checked on every request/frame, and 20x/s)."""
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                seen = ", ".join(f"{r.method} {r.path} -> {r.status}"
                                 for r in self.requests[-15:])
                raise TimeoutError(f"{what} not met within {timeout:.1f}s; last requests: "
                                   f"{seen}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.05))

    async def wait_for_request(self, method: str, pattern: str, timeout: float = 5.0,
                               *, after: int = 0) -> Request:
        """The first request (index >= ``after``) matching ``method`` and ``pattern``."""
        found: list[Request] = []

        def check() -> bool:
            found[:] = [r for r in self.requests[after:]
                        if method in ("*", r.method) and fnmatch.fnmatchcase(r.path, pattern)]
            return bool(found)

        await self.wait_for(check, timeout, f"a request {method} {pattern}")
        return found[0]

    async def wait_connected(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``count`` websockets were accepted in all and one is open now."""
        await self.wait_for(lambda: self.ws_accepted >= count and bool(self._sockets),
                            timeout, f"{count} websocket connection(s)")

    @property
    def websocket_open(self) -> bool:
        return bool(self._sockets)

    @property
    def open_websockets(self) -> int:
        return sum(1 for ws in self._sockets if not ws.closed)

    # ------------------------------------------------------------------ websocket out

    async def send_raw(self, text: str) -> int:
        """Send one text frame as is to every open events websocket; returns how many."""
        async with self._send_lock:
            self.sent.append(text)
            n = 0
            for ws in list(self._sockets):
                if ws.closed:
                    continue
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_str(text)
                    n += 1
            self._changed.set()
            return n

    async def send_binary(self, data: bytes) -> int:
        """Send one binary frame (ARI never does) to every open websocket."""
        n = 0
        for ws in list(self._sockets):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_bytes(data)
                n += 1
        return n

    async def send_event(self, event: Event) -> int:
        """Send one event; ``timestamp``, ``asterisk_id`` and ``application`` are added
        when missing, as Asterisk always sends them."""
        ev = dict(event)
        ev.setdefault("timestamp", ari_time())
        ev.setdefault("asterisk_id", self.asterisk_id)
        ev.setdefault("application", self.app)
        return await self.send_raw(json.dumps(ev, separators=(",", ":")))

    async def drop_websockets(self) -> None:
        """Close every open events websocket from the server side."""
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close()
        self._sockets.clear()

    # ------------------------------------------------------------------ event shapes

    def channel_json(self, channel_id: str, *, number: str = "5551234", name: str = "",
                     queue: str = "support", state: str = "Ring", exten: str = "5550100",
                     args: Iterable[str] | None = None) -> Event:
        """A caller channel as ARI describes it (shape of the recorded StasisStart)."""
        ch: Event = template("StasisStart")["channel"]
        seq = next(self._seq)
        app_args = list(args) if args is not None else [queue]
        ch.update({
            "id": channel_id,
            "name": f"PJSIP/carrier-{seq:08x}",
            "state": state,
            "protocol_id": f"{uuid.uuid4().hex[:12]}@127.0.0.2",
            "creationtime": ari_time(),
        })
        ch["caller"] = {"name": name, "number": number}
        ch["dialplan"] = dict(ch["dialplan"], exten=exten,
                              app_data=",".join([self.app, *app_args]))
        return ch

    def channel_event(self, event_type: str, channel_id: str, **fields: Any) -> Event:
        """An event about a known channel (its current JSON), shaped like the recorded
        one of that type; ``fields`` are set on top (e.g. ``digit="1"``)."""
        try:
            ev = template(event_type)
        except KeyError:
            ev = {"type": event_type}
        ch = self.channels.get(channel_id)
        ev["channel"] = copy.deepcopy(ch) if ch is not None else self.channel_json(channel_id)
        ev["timestamp"] = ari_time()
        ev.update(fields)
        return ev

    def new_channel_id(self) -> str:
        return f"fake-{int(time.time())}.{next(self._seq)}"

    # ------------------------------------------------------------------ callers

    async def caller_enters(
        self,
        queue: str = "support",
        number: str = "5551234",
        *,
        channel_id: str | None = None,
        name: str = "",
        args: Iterable[str] | None = None,
    ) -> str:
        """A call enters Stasis(app, queue) from the carrier: the channel appears in
        GET /channels and a StasisStart is sent. Returns the channel id."""
        cid = channel_id or self.new_channel_id()
        ch = self.channel_json(cid, number=number, name=name, queue=queue, args=args)
        self.channels[cid] = ch
        ev = template("StasisStart")
        ev["args"] = list(args) if args is not None else [queue]
        ev["channel"] = copy.deepcopy(ch)
        ev["timestamp"] = ari_time()
        await self.send_event(ev)
        return cid

    async def dtmf(self, channel_id: str, digit: str, duration_ms: int = 120) -> None:
        await self.send_event(self.channel_event(
            "ChannelDtmfReceived", channel_id, digit=digit, duration_ms=duration_ms))

    async def caller_hangs_up(self, channel_id: str) -> None:
        """The caller sends BYE: ChannelHangupRequest, StasisEnd (as recorded)."""
        await self._gone(channel_id, soft=False)

    async def stasis_end(self, channel_id: str) -> None:
        """Only a StasisEnd (the channel is forgotten without a hang-up request)."""
        ev = self.channel_event("StasisEnd", channel_id)
        self._forget(channel_id)
        await self.send_event(ev)

    async def endpoint_state(self, endpoint: str, state: str) -> None:
        """An agent's endpoint goes online/offline: EndpointStateChange."""
        self.endpoints[endpoint] = state
        tech, _, resource = endpoint.partition("/")
        ev = template("EndpointStateChange")
        ev.update(timestamp=ari_time(), endpoint={
            "technology": tech, "resource": resource, "state": state, "channel_ids": []})
        await self.send_event(ev)

    async def _gone(self, channel_id: str, *, soft: bool) -> None:
        await self._send_all(self._gone_events(channel_id, soft=soft))

    def _gone_events(self, channel_id: str, *, soft: bool) -> list[Event]:
        """The channel leaves (forgotten now); the events that tell it, as recorded."""
        hreq = self.channel_event("ChannelHangupRequest", channel_id)
        if soft:
            hreq.update(cause=32, soft=True)  # what an ARI DELETE looks like (recorded)
        else:
            hreq.pop("cause", None)
            hreq.pop("soft", None)
        end = self.channel_event("StasisEnd", channel_id)
        self._forget(channel_id)
        return [hreq, end]

    async def _send_all(self, events: list[Event]) -> None:
        for ev in events:
            await self.send_event(ev)

    def _forget(self, channel_id: str) -> None:
        if self.channels.pop(channel_id, None) is not None:
            self.hung_up.append(channel_id)
        for pb in [p for p in self.playbacks.values() if p.channel_id == channel_id]:
            if pb.task is not None:
                pb.task.cancel()
            self.playbacks.pop(pb.id, None)
        for b in self.bridges.values():
            if channel_id in b.channels:
                b.channels.remove(channel_id)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ HTTP in

    def _authorized(self, request: web.Request) -> bool:
        raw = f"{self.user}:{self.password}".encode()
        expected = "Basic " + base64.b64encode(raw).decode("ascii")
        return request.headers.get("Authorization") == expected

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0][len("/ari"):]
        segments = tuple(unquote(s) for s in raw_path.strip("/").split("/")) \
            if raw_path.strip("/") else ()
        if not self._authorized(request):
            self.auth_failures += 1
            self._changed.set()
            return web.json_response({"message": "Authentication required"}, status=401)
        if segments == ("events",) and request.method == "GET":
            return await self._events(request)
        body: Any = None
        if request.can_read_body:
            text = await request.text()
            with contextlib.suppress(ValueError):
                body = json.loads(text) if text.strip() else None
        path = "/" + "/".join(segments)
        rec = Request(request.method, path, raw_path, segments, dict(request.query), body,
                      time.time())
        index = len(self.requests)
        self.requests.append(rec)
        self._changed.set()
        resp = await self._answer(rec)
        self.requests[index] = Request(**{**rec.__dict__, "status": resp.status})
        self._changed.set()
        return resp

    async def _answer(self, rec: Request) -> web.StreamResponse:
        for fault in self.faults:
            if fault.matches(rec.method, rec.path):
                fault.hits += 1
                if fault.gate is not None:
                    await self._until(fault.gate)
                if fault.delay:
                    # A stall ends early when the fake closes, so teardown never waits.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), fault.delay)
                if fault.status is not None:
                    if fault.body is not None:
                        return web.Response(status=fault.status, text=fault.body,
                                            content_type="application/json")
                    msg = _MESSAGES.get(fault.status, "Injected fault")
                    return web.json_response({"message": msg}, status=fault.status)
                break
        try:
            return self._route(rec)
        except _NotFound as exc:
            return web.json_response({"message": str(exc)}, status=404)

    async def _until(self, gate: asyncio.Event) -> None:
        """Until ``gate`` is set, or the fake closes (so teardown never waits)."""
        waits = [asyncio.ensure_future(gate.wait()), asyncio.ensure_future(self._closing.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("app") != self.app:
            return web.json_response({"message": "Invalid application provided"}, status=400)
        if self.refuse_websocket is not None:
            return web.json_response({"message": "refused by test"},
                                     status=self.refuse_websocket)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        self.ws_accepted += 1
        self._changed.set()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._sockets.discard(ws)
            self._changed.set()
        return ws

    # ------------------------------------------------------------------ REST routes

    def _route(self, rec: Request) -> web.StreamResponse:
        m, s, q = rec.method, rec.segments, rec.query
        n = len(s)
        if s == ("asterisk", "info") and m == "GET":
            return web.json_response({"system": {"version": "22.0.0-fake",
                                                 "entity_id": self.asterisk_id}})
        if s[:1] == ("channels",):
            if n == 1 and m == "GET":
                return web.json_response(list(self.channels.values()))
            if n == 1 and m == "POST":
                return self._originate(q, rec.body)
            cid = s[1] if n > 1 else ""
            ch = self._channel(cid)
            if n == 2 and m == "GET":
                return web.json_response(ch)
            if n == 2 and m == "DELETE":
                self._spawn(self._send_all(self._gone_events(cid, soft=True)))
                return web.Response(status=204)
            if n == 3 and s[2] == "answer" and m == "POST":
                if ch["state"] != "Up":
                    ch["state"] = "Up"
                    self._spawn(self.send_event(self.channel_event("ChannelStateChange", cid)))
                return web.Response(status=204)
            if n == 3 and s[2] in ("moh", "ring") and m in ("POST", "DELETE"):
                return web.Response(status=204)
            if s[2:3] == ("play",) and m == "POST" and n in (3, 4):
                pid = s[3] if n == 4 else uuid.uuid4().hex
                return self._play(cid, pid, q.get("media", ""))
            raise _NotFound("Resource not found")
        if s[:1] == ("playbacks",) and n == 2 and m == "GET":
            if s[1] not in self.playbacks:
                raise _NotFound("Playback not found")
            return web.json_response(self._playback_json(self.playbacks[s[1]]))
        if s[:1] == ("playbacks",) and n == 2 and m == "DELETE":
            pb = self.playbacks.pop(s[1], None)
            if pb is None:
                raise _NotFound("Playback not found")
            if pb.task is not None:
                pb.task.cancel()
            self._spawn(self._playback_event("PlaybackFinished", pb, "done"))
            return web.Response(status=204)
        if s[:1] == ("endpoints",):
            if n == 1 and m == "GET":
                return web.json_response([self._endpoint(e) for e in self.endpoints])
            if n == 3 and m == "GET":
                # "PJSIP/agent1" is technology "PJSIP", resource "agent1" (split at the
                # first "/"): decoded segments are compared, so an id must be encoded.
                for name in self.endpoints:
                    if name.partition("/")[::2] == (s[1], s[2]):
                        return web.json_response(self._endpoint(name))
                raise _NotFound("Endpoint not found")
        if s[:1] == ("applications",) and n == 3 and s[2] == "subscription" and m == "POST":
            if s[1] != self.app:
                raise _NotFound("Application not found")
            body = rest_body("POST", "/applications/*/subscription")
            source = q.get("eventSource", "")
            body.update(name=self.app, endpoint_ids=[source.partition(":")[2]]
                        if source.startswith("endpoint:") else [])
            return web.json_response(body)
        if s[:1] == ("bridges",):
            return self._bridge_route(m, s, q)
        raise _NotFound("Resource not found")

    def _channel(self, cid: str) -> Event:
        ch = self.channels.get(cid)
        if ch is None:
            raise _NotFound("Channel not found")
        return ch

    def _endpoint(self, name: str) -> Event:
        tech, _, resource = name.partition("/")
        ids = [c for c, ch in self.channels.items() if ch.get("name", "").startswith(name + "-")]
        return {"technology": tech, "resource": resource, "state": self.endpoints[name],
                "channel_ids": ids}

    def _originate(self, q: dict[str, str], body: Any) -> web.StreamResponse:
        """Recorded only: the channel is returned (state Down, shape of the recorded
        answer) and kept in ``originated``; it never rings, answers or enters Stasis
        unless the test says so (``originated_answers``)."""
        endpoint = q.get("endpoint", "")
        if not endpoint or "/" not in endpoint:
            return web.json_response({"message": "Endpoint must be specified"}, status=400)
        cid = q.get("channelId") or self.new_channel_id()
        if cid in self.channels or cid in self.originated:
            return web.json_response({"message": "Channel with given unique ID already "
                                                 "exists"}, status=409)
        ch = rest_body("POST", "/channels")
        name, _, number = q.get("callerId", "").rpartition("<")
        ch.update(id=cid, name=f"{endpoint}-{next(self._seq):08x}", creationtime=ari_time(),
                  protocol_id=str(uuid.uuid4()))
        ch["caller"] = ch["connected"] = {"name": name.strip().strip('"'),
                                          "number": number.rstrip(">").strip()}
        self.originated[cid] = (ch, [a for a in q.get("appArgs", "").split(",") if a])
        return web.json_response(ch)

    async def originated_answers(self, channel_id: str) -> None:
        """An originated channel answers and enters Stasis with its ``appArgs``."""
        ch, args = self.originated.pop(channel_id)
        ch["state"] = "Up"
        ch["dialplan"] = dict(ch["dialplan"], app_name="Stasis",
                              app_data=",".join([self.app, *args]))
        self.channels[channel_id] = ch
        ev = template("StasisStart")
        ev.update(args=args, channel=copy.deepcopy(ch), timestamp=ari_time())
        await self.send_event(ev)

    def _play(self, cid: str, pid: str, media: str) -> web.StreamResponse:
        if pid in self.playbacks:
            return web.json_response({"message": "Playback ID already in use"}, status=409)
        pb = _Playback(pid, cid, media.split(",")[0])
        self.playbacks[pid] = pb
        pb.task = self._spawn(self._run_playback(pb))
        return web.json_response(self._playback_json(pb), status=201)

    def _playback_json(self, pb: _Playback) -> Event:
        return {"id": pb.id, "media_uri": pb.media_uri, "target_uri": f"channel:{pb.channel_id}",
                "language": "en", "state": pb.state}

    async def _run_playback(self, pb: _Playback) -> None:
        await asyncio.sleep(self.playback_start_delay)
        pb.state = "playing"
        await self._playback_event("PlaybackStarted", pb, "playing")
        await asyncio.sleep(self.playback_duration)
        if self.playbacks.pop(pb.id, None) is not None:
            await self._playback_event("PlaybackFinished", pb, "done")

    async def _playback_event(self, event_type: str, pb: _Playback, state: str) -> None:
        ev = template(event_type)
        pb.state = state
        ev["playback"] = self._playback_json(pb)
        ev["timestamp"] = ari_time()
        await self.send_event(ev)

    def _bridge_route(self, m: str, s: tuple[str, ...], q: dict[str, str]) -> web.StreamResponse:
        n = len(s)
        if n == 1 and m == "GET":
            return web.json_response([self._bridge_json(b) for b in self.bridges.values()])
        if n == 1 and m == "POST":
            bid = q.get("bridgeId") or uuid.uuid4().hex
            b = self.bridges.setdefault(bid, _Bridge(bid, q.get("type", "mixing")))
            return web.json_response(self._bridge_json(b))
        bridge = self.bridges.get(s[1]) if n > 1 else None
        if bridge is None:
            raise _NotFound("Bridge not found")
        if n == 2 and m == "GET":
            return web.json_response(self._bridge_json(bridge))
        if n == 2 and m == "DELETE":
            del self.bridges[bridge.id]
            self._spawn(self._bridge_events("BridgeDestroyed", bridge, []))
            return web.Response(status=204)
        if n == 3 and s[2] in ("addChannel", "removeChannel") and m == "POST":
            ids = [c for c in q.get("channel", "").split(",") if c]
            missing = [c for c in ids if c not in self.channels]
            if missing:
                return web.json_response({"message": "Channel not found"}, status=400)
            if s[2] == "addChannel":
                added = [c for c in ids if c not in bridge.channels]
                bridge.channels.extend(added)
                self._spawn(self._bridge_events("ChannelEnteredBridge", bridge, added))
            else:
                gone = [c for c in ids if c in bridge.channels]
                for c in gone:
                    bridge.channels.remove(c)
                self._spawn(self._bridge_events("ChannelLeftBridge", bridge, gone))
            return web.Response(status=204)
        raise _NotFound("Resource not found")

    def _bridge_json(self, b: _Bridge) -> Event:
        body: Event = rest_body("POST", "/bridges")
        body.update(id=b.id, bridge_type=b.kind, channels=list(b.channels),
                    creationtime=b.created)
        return body

    async def _bridge_events(self, event_type: str, b: _Bridge, ids: list[str]) -> None:
        if event_type == "BridgeDestroyed":
            await self.send_event({"type": event_type, "bridge": self._bridge_json(b)})
            return
        for cid in ids:
            ev = self.channel_event(event_type, cid)
            ev["bridge"] = self._bridge_json(b)
            await self.send_event(ev)


class _NotFound(Exception):
    pass


# ------------------------------------------------------------------ the service on the fake

#: queue settings for service tests: overflow above one waiting caller, a fast first offer
FAST_QUEUE: dict[str, Any] = {
    "max_waiting": 1,
    "first_offer_after": "0.3s",
    "repeat_offer_every": "30s",
    "ring_timeout": "4s",
    "preview_timeout": "6s",
    "retry_interval": "2s",
    "wrap_up": "0s",
}


def fake_config(
    fake: FakeAri,
    tmp_path: Path,
    queues: Mapping[str, Mapping[str, Any]] | None = None,
    agents: Mapping[str, Mapping[str, Any]] | None = None,
    **top: Any,
) -> Config:
    """A real config file (``tests.support.config.write``) pointed at the fake: queue
    ``support`` (DID ``did-support``) unless ``queues`` says otherwise, no agents unless
    given; ``top`` adds/overrides top-level keys."""
    qdoc = {name: {"did": f"did-{name}", "caller_id": "2015550100", **FAST_QUEUE, **q}
            for name, q in (queues or {"support": {}}).items()}
    ari = {"url": fake.url, "user": fake.user, "password": fake.password, "app": fake.app}
    return write_test_config(tmp_path, ari=ari, asterisk_dir="/prompts", queues=qdoc,
                             agents=agents, **top)


@contextlib.asynccontextmanager
async def service_on(
    fake: FakeAri,
    tmp_path: Path,
    *,
    token: str | None = "t0ken-for-tests",
    restart_backoff: float = 0.3,
    http_extra: Mapping[str, Any] | None = None,
    ari: Mapping[str, Any] | None = None,
    **cfg_kw: Any,
) -> AsyncIterator[tuple[Service, str]]:
    """``ivr.app.Service`` on the fake (a ``fake.client()`` with a 0.4 s request timeout)
    and its HTTP API on a free port; yields the service and the API base URL.
    ``token=None``: no token configured (the service keeps one in ``api-token``).
    ``http_extra``: more ``http:`` keys. ``ari``: ``fake.client`` options instead
    (``patience=``). ``cfg_kw`` go to ``fake_config`` (``queues=``, ``agents=``,
    top-level keys)."""
    port = free_port(udp=False)
    http: dict[str, Any] = {"bind": "127.0.0.1", "port": port}
    if token is not None:
        http["api_token"] = token
    http.update(http_extra or {})
    cfg = fake_config(fake, tmp_path, http=http, **cfg_kw)
    svc = Service(cfg, ari=fake.client(**{"request_timeout": 0.4, **(ari or {})}))
    svc.restart_backoff_initial = restart_backoff
    svc.restart_backoff_max = restart_backoff
    try:
        await svc.start(http=True, connect_timeout=5)
        yield svc, f"http://127.0.0.1:{port}"
    finally:
        await svc.stop()


# ------------------------------------------------------------------ recording (root)


def record(out: Path = FIXTURES) -> None:  # pragma: no cover - run by hand, as root
    """Record the fixtures from the sandboxed Asterisk 22 (``rig.sandbox``): what the
    events websocket of app ``ivr`` carries, frame by frame, and the REST answers."""
    frames, marks, rest = asyncio.run(_record())
    out.mkdir(parents=True, exist_ok=True)
    starts = [0, *marks[:-1]]
    for name, a, b in zip(EVENT_FIXTURES, starts, marks, strict=True):
        (out / name).write_text("".join(f + "\n" for f in frames[a:b]))
    (out / REST_FIXTURE).write_text("".join(json.dumps(x) + "\n" for x in rest))


async def _record() -> tuple[list[str], list[int], list[Event]]:  # pragma: no cover
    import aiohttp

    from rig import sandbox
    from tests.peers import CallBehaviour, SipCaller, SipPhone

    inst = sandbox.start(sandbox.provision(), config_src=REPO / "asterisk-config",
                         prompts_src=REPO / "prompts")
    frames: list[str] = []
    rest: list[Event] = []
    marks: list[int] = []
    try:
        async with aiohttp.ClientSession(headers={"Authorization": inst.auth_header()}) as s:
            base = inst.ari_url + "/ari"
            got: asyncio.Queue[Event] = asyncio.Queue()

            async def call(method: str, path: str, params: dict[str, str] | None = None) -> Any:
                async with s.request(method, base + path, params=params) as r:
                    text = await r.text()
                    body = json.loads(text) if text.strip() else None
                    rest.append({"method": method, "path": path, "query": params or {},
                                 "status": r.status, "body": body})
                    return body

            async def wait(pred: Callable[[Event], bool], timeout: float = 30.0) -> Event:
                end = time.monotonic() + timeout
                while True:
                    ev = await asyncio.wait_for(got.get(), end - time.monotonic())
                    if pred(ev):
                        return ev

            ws = await s.ws_connect(f"{base}/events?app={inst.app_name}", heartbeat=5)

            async def reader() -> None:
                async for msg in ws:
                    if msg.type == WSMsgType.TEXT:
                        frames.append(msg.data)
                        got.put_nowait(json.loads(msg.data))

            task = asyncio.create_task(reader())
            prompts = inst.prompts_dir
            await call("GET", "/channels")
            await call("GET", "/endpoints/PJSIP/agent1")
            await call("POST", f"/applications/{inst.app_name}/subscription",
                       {"eventSource": "endpoint:PJSIP/agent1"})
            await call("GET", "/channels/no-such-channel")

            # 1: a caller answered, on hold, hears the offer, presses 1 (barge-in), hears
            # the confirmation to its end and is hung up by the app.
            caller = SipCaller(inst, "7001", caller="5551234", digits=[(3.0, "1")],
                               max_duration=30)
            caller.start()
            chan = (await wait(lambda e: e["type"] == "StasisStart"))["channel"]["id"]
            await call("GET", "/channels")
            await call("POST", f"/channels/{chan}/answer")
            await call("POST", f"/channels/{chan}/moh", {"mohClass": "default"})
            await asyncio.sleep(1.0)
            await call("DELETE", f"/channels/{chan}/moh")
            await call("POST", f"/channels/{chan}/play/pb-offer-1",
                       {"media": f"sound:{prompts}/en/offer"})
            await wait(lambda e: e["type"] == "ChannelDtmfReceived")
            await call("DELETE", "/playbacks/pb-offer-1")
            await wait(lambda e: e["type"] == "PlaybackFinished")
            await call("POST", f"/channels/{chan}/play/pb-confirm-1",
                       {"media": f"sound:{prompts}/en/confirmation"})
            await wait(lambda e: e["type"] == "PlaybackFinished"
                       and e["playback"]["id"] == "pb-confirm-1", 60)
            await call("DELETE", f"/channels/{chan}", {"reason": "normal"})
            await wait(lambda e: e["type"] == "StasisEnd")
            await asyncio.sleep(1.0)
            await caller.wait(40)
            caller.stop()
            marks.append(len(frames))

            # 2: a caller on hold hangs up.
            caller = SipCaller(inst, "7002", caller="5551235", hangup_after=3.0,
                               max_duration=30)
            caller.start()
            chan = (await wait(lambda e: e["type"] == "StasisStart"))["channel"]["id"]
            await call("POST", f"/channels/{chan}/answer")
            await call("POST", f"/channels/{chan}/moh", {"mohClass": "default"})
            await wait(lambda e: e["type"] == "StasisEnd")
            await asyncio.sleep(1.0)
            await caller.wait(40)
            caller.stop()
            marks.append(len(frames))

            # 3: an agent leg originated into the app, bridged with a caller, then both
            # hung up by the app; the bridge destroyed.
            phone = SipPhone(inst, "agent1", CallBehaviour(answer_after=0.5))
            phone.start()
            caller = SipCaller(inst, "7003", caller="5551236", max_duration=30)
            caller.start()
            chan = (await wait(lambda e: e["type"] == "StasisStart"))["channel"]["id"]
            await call("POST", f"/channels/{chan}/answer")
            await call("POST", "/channels", {
                "endpoint": "PJSIP/agent1", "app": inst.app_name, "appArgs": "agent,item-1",
                "callerId": "CALLBACK 5551236 <5550100>", "timeout": "10",
                "channelId": "agent-leg-1"})
            await wait(lambda e: e["type"] == "StasisStart"
                       and e["channel"]["id"] == "agent-leg-1")
            await call("GET", "/channels")
            await call("POST", "/bridges", {"type": "mixing", "bridgeId": "bridge-1"})
            await call("POST", "/bridges/bridge-1/addChannel",
                       {"channel": f"{chan},agent-leg-1"})
            await asyncio.sleep(1.5)
            await call("GET", "/bridges")
            await call("DELETE", "/channels/agent-leg-1", {"reason": "normal"})
            await wait(lambda e: e["type"] == "StasisEnd"
                       and e["channel"]["id"] == "agent-leg-1")
            await call("DELETE", f"/channels/{chan}", {"reason": "normal"})
            await wait(lambda e: e["type"] == "StasisEnd" and e["channel"]["id"] == chan)
            await call("DELETE", "/bridges/bridge-1")
            await asyncio.sleep(1.0)
            await caller.wait(40)
            caller.stop()
            phone.stop()
            marks.append(len(frames))
            await ws.close()
            task.cancel()
    finally:
        inst.remove()
    return frames, marks, rest


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] != ["record"]:
        sys.exit("usage: python -m tests.fakeari record   (root: runs the sandboxed Asterisk)")
    record()
