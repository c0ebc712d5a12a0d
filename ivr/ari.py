"""A thin, typed Asterisk REST Interface client on aiohttp.

Transport only: REST calls with an ``Authorization`` header, the events websocket with a
heartbeat, reconnect with backoff, and a signal after every (re)connect so the app can
resync from ``GET /channels``: Asterisk 22 keeps channels in Stasis while the app is away
but does not replay the events missed meanwhile.

Why our own client: the ``ari`` package on PyPI is Python 2 only, and the async clients we
measured freeze, crash or stop silently when the websocket drops, and put the password in
the URL (``?api_key=``), where it ends up in access logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import quote

import aiohttp

log = logging.getLogger(__name__)

JSON = dict[str, Any]


# --------------------------------------------------------------------------- errors


class AriError(Exception):
    """An ARI request failed. ``status`` is the HTTP status (0: no answer at all)."""

    def __init__(self, method: str, path: str, status: int, reason: str) -> None:
        super().__init__(f"ARI {method} {path} -> {status} {reason}")
        self.method = method
        self.path = path
        self.status = status
        self.reason = reason


class AriNotFound(AriError):
    """404: the channel, bridge or playback is gone. Normal life when a caller hangs up."""


class AriConflict(AriError):
    """409: e.g. the channel is not in Stasis (yet or any more)."""


class AriBadRequest(AriError):
    """400/422: we sent something Asterisk refuses; a bug on our side or bad config."""


class AriUnavailable(AriError):
    """Asterisk did not answer (connection refused, timeout) or answered 5xx."""


class AriTimeout(AriUnavailable):
    """Asterisk took the request but gave no answer in time (the request timeout ran
    out, or it closed the connection without answering). Unlike a refusal or a 5xx the
    outcome is unknown: a saturated Asterisk queues channel commands and may still carry
    this one out, seconds later."""


def _error_for(method: str, path: str, status: int, reason: str) -> AriError:
    if status == 404:
        return AriNotFound(method, path, status, reason)
    if status == 409:
        return AriConflict(method, path, status, reason)
    if status in (400, 422):
        return AriBadRequest(method, path, status, reason)
    if status == 0 or status >= 500:
        return AriUnavailable(method, path, status, reason)
    return AriError(method, path, status, reason)


# --------------------------------------------------------------------------- resources


def _ts(value: object) -> float:
    """ARI timestamps look like ``2026-11-28T09:00:00.123+0000``; 0.0 when absent or odd.

    ``datetime.fromisoformat`` reads that form on 3.11 (``+0000`` included) and costs a
    fraction of ``strptime``, which showed up at 7% of CPU under load. A timestamp without
    an offset is taken as UTC (Asterisk always sends one). A time outside 2000..2100 is
    no time at all (it would put an adopted caller at the head of the queue)."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return 0.0
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ts = parsed.timestamp()
    except (ValueError, OverflowError, OSError):
        return 0.0
    return ts if _TS_MIN <= ts <= _TS_MAX else 0.0


_TS_MIN = 946_684_800.0  # 2000-01-01T00:00:00Z
_TS_MAX = 4_102_444_800.0  # 2100-01-01T00:00:00Z


def _str(d: Mapping[str, Any], key: str) -> str:
    v = d.get(key)
    return v if isinstance(v, str) else ""


def _obj(d: Mapping[str, Any], key: str) -> JSON:
    v = d.get(key)
    return cast(JSON, v) if isinstance(v, dict) else {}


def _list(value: object) -> list[Any]:
    """A REST body that should be a JSON array; ``[]`` when it is not."""
    return value if isinstance(value, list) else []


def _as_obj(value: object) -> Mapping[str, Any]:
    """A REST body or event field that should be a JSON object; ``{}`` when it is not."""
    return cast(JSON, value) if isinstance(value, dict) else {}


def _int(d: Mapping[str, Any], key: str, hi: int) -> int:
    """A small non-negative whole number (a Q.850 cause, a DTMF duration); 0 when absent,
    not a number, not finite or outside ``0..hi`` (``"cause": 1e400`` is JSON for inf)."""
    v = d.get(key)
    if isinstance(v, bool):
        return 0
    if isinstance(v, float):
        if not math.isfinite(v):
            return 0
        v = int(v)
    elif isinstance(v, str):
        v = v.strip()
        if not (0 < len(v) <= 12 and v.isascii() and v.isdigit()):
            return 0
        v = int(v)
    if not isinstance(v, int) or not 0 <= v <= hi:
        return 0
    return v


def _text(value: object) -> str | None:
    """A scalar as text (channel variables, Stasis args); None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and -(10**18) < value < 10**18:
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return None


# Q.850 causes are 0..127; Asterisk's own codes stay well below this bound.
MAX_CAUSE = 65535
# A DTMF tone longer than an hour is not a tone.
MAX_DTMF_MS = 3_600_000
DTMF_DIGITS = frozenset("0123456789*#ABCD")


@dataclass(frozen=True)
class Channel:
    id: str
    name: str
    state: str
    caller_number: str
    caller_name: str
    exten: str
    created_at: float
    app_name: str = ""
    app_data: str = ""
    variables: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: object) -> Channel:
        d = _as_obj(data)
        caller = _obj(d, "caller")
        dialplan = _obj(d, "dialplan")
        cvars = d.get("channelvars")
        return cls(
            id=_str(d, "id"),
            name=_str(d, "name"),
            state=_str(d, "state"),
            caller_number=_str(caller, "number"),
            caller_name=_str(caller, "name"),
            exten=_str(dialplan, "exten"),
            created_at=_ts(d.get("creationtime")),
            app_name=_str(dialplan, "app_name"),
            app_data=_str(dialplan, "app_data"),
            variables=_variables(cvars),
        )


def _variables(cvars: object) -> dict[str, str]:
    if not isinstance(cvars, dict):
        return {}
    out: dict[str, str] = {}
    for k, v in cvars.items():
        text = _text(v)
        if isinstance(k, str) and text is not None:
            out[k] = text
    return out


@dataclass(frozen=True)
class Playback:
    id: str
    media_uri: str
    target_uri: str
    state: str

    @classmethod
    def from_json(cls, data: object) -> Playback:
        d = _as_obj(data)
        return cls(
            id=_str(d, "id"),
            media_uri=_str(d, "media_uri"),
            target_uri=_str(d, "target_uri"),
            state=_str(d, "state"),
        )

    @property
    def channel_id(self) -> str:
        """The channel a playback targets (``channel:<id>``), or ``""``."""
        prefix = "channel:"
        return self.target_uri[len(prefix):] if self.target_uri.startswith(prefix) else ""


@dataclass(frozen=True)
class Endpoint:
    technology: str
    resource: str
    state: str
    channel_ids: tuple[str, ...]

    @classmethod
    def from_json(cls, data: object) -> Endpoint:
        d = _as_obj(data)
        ids = d.get("channel_ids")
        return cls(
            technology=_str(d, "technology"),
            resource=_str(d, "resource"),
            state=_str(d, "state"),
            channel_ids=tuple(i for i in ids if isinstance(i, str)) if isinstance(ids, list)
            else (),
        )

    @property
    def name(self) -> str:
        return f"{self.technology}/{self.resource}"


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    """Any ARI event. Subclasses exist for the events the app acts on; the rest arrive as
    plain ``Event`` with the JSON in ``raw`` (Asterisk adds event types across versions)."""

    type: str
    timestamp: float
    application: str
    raw: Mapping[str, Any]

    @property
    def channel_id(self) -> str:
        """The channel this event is about, if any (used to route it to a session)."""
        return ""


@dataclass(frozen=True)
class ChannelEvent(Event):
    channel: Channel

    @property
    def channel_id(self) -> str:
        return self.channel.id


@dataclass(frozen=True)
class StasisStart(ChannelEvent):
    args: tuple[str, ...]
    replace_channel_id: str


@dataclass(frozen=True)
class StasisEnd(ChannelEvent):
    pass


@dataclass(frozen=True)
class ChannelDtmfReceived(ChannelEvent):
    digit: str
    duration_ms: int


@dataclass(frozen=True)
class ChannelStateChange(ChannelEvent):
    pass


@dataclass(frozen=True)
class ChannelHangupRequest(ChannelEvent):
    cause: int


@dataclass(frozen=True)
class ChannelDestroyed(ChannelEvent):
    cause: int
    cause_txt: str


@dataclass(frozen=True)
class ChannelEnteredBridge(ChannelEvent):
    bridge_id: str


@dataclass(frozen=True)
class ChannelLeftBridge(ChannelEvent):
    bridge_id: str


@dataclass(frozen=True)
class PlaybackEvent(Event):
    playback: Playback

    @property
    def channel_id(self) -> str:
        return self.playback.channel_id


@dataclass(frozen=True)
class PlaybackStarted(PlaybackEvent):
    pass


@dataclass(frozen=True)
class PlaybackFinished(PlaybackEvent):
    pass


@dataclass(frozen=True)
class Dial(Event):
    """Progress of an originate/dial. ``peer`` is the outbound channel."""

    peer: Channel
    dialstatus: str

    @property
    def channel_id(self) -> str:
        return self.peer.id


@dataclass(frozen=True)
class EndpointStateChange(Event):
    endpoint: Endpoint


_CHANNEL_EVENTS: dict[str, type[ChannelEvent]] = {
    "StasisEnd": StasisEnd,
    "ChannelStateChange": ChannelStateChange,
}


def parse_event(d: Mapping[str, Any]) -> Event:
    """Turn one websocket message into a typed event. Never raises, whatever the JSON
    object holds: an unexpected shape becomes a plain ``Event`` (R22: ARI surprises never
    crash a flow). A channel event without a channel id, or a DTMF event without a real
    digit, is passed on untyped too: no flow can act on it."""
    try:
        etype = _str(d, "type")
        base: dict[str, Any] = {
            "type": etype,
            "timestamp": _ts(d.get("timestamp")),
            "application": _str(d, "application"),
            "raw": d,
        }
    except Exception:
        log.warning("ARI event that is not a JSON object; passed on untyped")
        return Event(type="", timestamp=0.0, application="", raw={})
    try:
        typed = _typed(etype, d, base)
        if typed is not None:
            return typed
    except Exception:
        log.warning("ARI event %s with an unexpected shape; passed on untyped",
                    _safe_type(etype))
    return Event(**base)


def _typed(etype: str, d: Mapping[str, Any], base: dict[str, Any]) -> Event | None:
    if etype in ("PlaybackStarted", "PlaybackFinished"):
        pcls = PlaybackStarted if etype == "PlaybackStarted" else PlaybackFinished
        return pcls(**base, playback=Playback.from_json(d.get("playback")))
    if etype == "Dial":
        return Dial(**base, peer=Channel.from_json(d.get("peer")),
                    dialstatus=_str(d, "dialstatus"))
    if etype == "EndpointStateChange":
        return EndpointStateChange(**base, endpoint=Endpoint.from_json(d.get("endpoint")))
    if etype not in _CHANNEL_TYPES:
        return None
    channel = Channel.from_json(d.get("channel"))
    if not channel.id:
        log.warning("ARI %s event without a channel id; passed on untyped", etype)
        return None
    if etype == "StasisStart":
        args = d.get("args")
        texts = [_text(a) for a in args] if isinstance(args, list) else []
        return StasisStart(
            **base,
            channel=channel,
            args=tuple(t for t in texts if t is not None),
            replace_channel_id=_str(_obj(d, "replace_channel"), "id"),
        )
    if etype in _CHANNEL_EVENTS:
        return _CHANNEL_EVENTS[etype](**base, channel=channel)
    if etype == "ChannelDtmfReceived":
        digit = _str(d, "digit")
        if digit not in DTMF_DIGITS:
            log.warning("ARI DTMF event without a valid digit; passed on untyped")
            return None
        return ChannelDtmfReceived(**base, channel=channel, digit=digit,
                                   duration_ms=_int(d, "duration_ms", MAX_DTMF_MS))
    if etype == "ChannelHangupRequest":
        return ChannelHangupRequest(**base, channel=channel, cause=_int(d, "cause", MAX_CAUSE))
    if etype == "ChannelDestroyed":
        return ChannelDestroyed(**base, channel=channel, cause=_int(d, "cause", MAX_CAUSE),
                                cause_txt=_str(d, "cause_txt"))
    cls = ChannelEnteredBridge if etype == "ChannelEnteredBridge" else ChannelLeftBridge
    return cls(**base, channel=channel, bridge_id=_str(_obj(d, "bridge"), "id"))


_CHANNEL_TYPES = frozenset({
    "StasisStart", *_CHANNEL_EVENTS, "ChannelDtmfReceived", "ChannelHangupRequest",
    "ChannelDestroyed", "ChannelEnteredBridge", "ChannelLeftBridge",
})

_TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def _safe_type(value: object) -> str:
    """An event type fit for a log line: payload fields never reach the logs above DEBUG
    (they hold phone numbers), and ``type`` is a payload field like any other."""
    if isinstance(value, str) and _TYPE_NAME.fullmatch(value):
        return value
    return "?"


# --------------------------------------------------------------------------- client

#: seconds a websocket must have stayed up for its loss to reconnect without backoff
STABLE_CONNECTION = 2.0
#: the longest a close of the events websocket may wait for Asterisk's close frame
WS_CLOSE_TIMEOUT = 5.0


def _q(segment: str) -> str:
    """One path segment: ids come from Asterisk, callers and config, never trusted raw."""
    return quote(segment, safe="")


#: ``settled`` of a patient command (``AriClient._patiently``): its outcome not visible yet
_PENDING = object()

EventHandler = Callable[[Event], None]
ConnectHandler = Callable[[bool], Awaitable[None]]


class AriClient:
    """REST + events for one Asterisk server and one Stasis application.

    ``run()`` keeps the events websocket up for ever: on a drop it reconnects with
    exponential backoff (with jitter) and awaits ``on_connect(reconnected)`` before any
    event of the new connection is delivered, so the app can resync first.

    Events are delivered to a synchronous handler in websocket order. The handler must not
    block: flows queue events per channel and act on them in their own tasks.

    REST: ``request_timeout`` is how long a sent request may go unanswered. The channel
    commands (answer, music, ring, playback, hang-up) are patient: a timeout is checked
    and the command sent again for up to ``patience`` seconds (``_patiently``), because
    a saturated Asterisk carries them out late rather than not at all.
    """

    def __init__(
        self,
        base_url: str,
        user: str,
        password: str,
        app: str,
        *,
        session: aiohttp.ClientSession | None = None,
        heartbeat: float = 5.0,
        request_timeout: float = 10.0,
        patience: float = 60.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 10.0,
        subscribe_all: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/ari"):
            self.base_url += "/ari"
        self.app = app
        self._auth = {"Authorization": aiohttp.encode_basic_auth(user, password)}
        self._own_session = session is None
        self._session = session
        self._heartbeat = heartbeat
        # The timeout runs from the moment the request is sent: time spent waiting for a
        # free connection of our own pool is not Asterisk being slow, and a request
        # that never left cannot have failed.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=request_timeout,
                                              sock_read=request_timeout)
        self._request_timeout = request_timeout
        #: how long a channel command whose answer timed out is checked and sent again
        #: before it counts as failed (0: fail at the first timeout)
        self.patience = patience
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._subscribe_all = subscribe_all
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._closing = False
        self.connected = asyncio.Event()
        #: completed websocket connections after the first (exported as a metric)
        self.reconnects = 0

    # ---- plumbing

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        self._closing = True
        ws = self._ws
        if ws is not None:
            # aiohttp's close() waits, with no timeout of its own, for a task sitting in
            # receive() (our events reader) to see the close: bounded, so a stop always
            # completes (the caller cancels the reader next).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.close(), WS_CLOSE_TIMEOUT)
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | float] | None = None,
        json: JSON | None = None,
    ) -> Any:
        """One REST call. Returns the decoded JSON body (``None`` for 204)."""
        url = self.base_url + path
        query = {k: str(v) for k, v in (params or {}).items()}
        try:
            async with self.session.request(
                method, url, params=query, json=json, headers=self._auth, timeout=self._timeout
            ) as resp:
                if resp.status >= 300:
                    reason = resp.reason or ""
                    with contextlib.suppress(Exception):
                        body = await resp.json(content_type=None)
                        if isinstance(body, dict) and isinstance(body.get("message"), str):
                            reason = body["message"]
                    raise _error_for(method, path, resp.status, reason)
                if resp.status == 204 or resp.content_length == 0:
                    return None
                body = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ServerDisconnectedError) as exc:
            raise AriTimeout(method, path, 0, str(exc) or type(exc).__name__) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise AriUnavailable(method, path, 0, str(exc) or type(exc).__name__) from exc
        if not body.strip():
            return None
        try:
            return jsonlib.loads(body)
        except (ValueError, RecursionError):
            # Asterisk answered, but not with JSON we can read: as good as no answer.
            raise AriUnavailable(method, path, status, "malformed JSON body") from None

    async def _patiently(
        self,
        method: str,
        path: str,
        settled: Callable[[], Awaitable[Any]],
        params: Mapping[str, str | int | float] | None = None,
        *,
        removal: bool = False,
    ) -> Any:
        """A channel command that is safe to send twice (answer, music, ring, hang-up,
        a playback with our own id). A timeout leaves its outcome unknown: a saturated
        Asterisk runs channel commands late, and failing the command would make the
        flow drop a caller whose channel is fine. So instead ask Asterisk how things
        stand (``settled``: a GET, which Asterisk serves without waiting for the
        channel) and, not done yet, send the command again; each attempt waits one
        request timeout, so this paces itself. Only after ``patience`` seconds of this
        does the timeout count as a failure (``AriTimeout``).

        ``settled`` returns ``_PENDING`` while the outcome is not visible, else the
        command's result; a gone channel raises ``AriNotFound`` from it, as the command
        itself would. ``removal`` (a hang-up, a playback stop): a 404 to a repeat is the
        first attempt having done it, not an error."""
        deadline = time.monotonic() + self.patience
        attempt = 1
        while True:
            try:
                return await self.request(method, path, params=params)
            except AriNotFound:
                if removal and attempt > 1:
                    return None
                raise
            except AriTimeout as exc:
                if time.monotonic() >= deadline:
                    log.error("ARI %s %s: no answer after %d attempt(s) in %.0fs; giving up",
                              method, path, attempt, self.patience)
                    raise
                log.warning("ARI %s %s: no answer within %gs (%s); checking before "
                            "sending it again", method, path, self._request_timeout,
                            exc.reason)
            try:
                result = await settled()
            except AriTimeout:
                result = _PENDING  # still nothing known: send again (or give up)
            if result is not _PENDING:
                log.info("ARI %s %s: done after all (attempt %d)", method, path, attempt)
                return result
            attempt += 1

    async def _channel_present(self, channel_id: str) -> object:
        """``settled`` for a command with no visible outcome (music, ring): the channel
        is there (send the command again) or gone (``AriNotFound``)."""
        await self.get_channel(channel_id)
        return _PENDING

    # ---- events

    def _events_url(self) -> str:
        url = f"{self.base_url}/events?app={_q(self.app)}"
        if self._subscribe_all:
            url += "&subscribeAll=true"
        return url

    async def run(self, on_event: EventHandler, on_connect: ConnectHandler | None = None) -> None:
        """Keep the events websocket up until ``close()`` or cancellation.

        Nothing else ends it: a failed connect, a dropped socket and an unexpected error
        inside a connection (``on_connect`` included) are logged, the socket is closed and
        the client reconnects with backoff (with jitter). A connection that stayed up for
        a while reconnects at once; one that failed or dropped quickly backs off."""
        delay = self._backoff_initial
        first = True
        while not self._closing:
            try:
                ws = await self.session.ws_connect(
                    self._events_url(), headers=self._auth, heartbeat=self._heartbeat
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("ARI websocket connect failed (%s); retry in %.1fs", exc, delay)
                delay = await self._backoff(delay)
                continue
            except Exception:
                log.exception("ARI websocket connect failed unexpectedly; retry in %.1fs", delay)
                delay = await self._backoff(delay)
                continue
            self._ws = ws
            if not first:
                self.reconnects += 1
            log.info("ARI websocket connected (app=%s, reconnect=%s)", self.app, not first)
            up_since = time.monotonic()
            failed = False
            try:
                if on_connect is not None:
                    await on_connect(not first)
                self.connected.set()
                first = False
                await self._read(ws, on_event)
            except Exception:
                failed = True
                log.exception("ARI events connection failed; closing it and reconnecting")
            finally:
                self.connected.clear()
                self._ws = None
                with contextlib.suppress(Exception):
                    await ws.close()
            if self._closing:
                break
            if failed or time.monotonic() - up_since < STABLE_CONNECTION:
                log.warning("ARI websocket closed; reconnecting in %.1fs", delay)
                delay = await self._backoff(delay)
            else:
                log.warning("ARI websocket closed; reconnecting")
                delay = self._backoff_initial

    async def _backoff(self, delay: float) -> float:
        """Sleep about ``delay`` (with jitter); returns the next delay."""
        await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
        return min(delay * 2, self._backoff_max)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, on_event: EventHandler) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self._dispatch(msg.data, on_event)
            elif msg.type == aiohttp.WSMsgType.ERROR:
                log.warning("ARI websocket error: %s", ws.exception())
                return
            elif msg.type == aiohttp.WSMsgType.BINARY:
                log.warning("ARI sent a binary websocket frame (%d bytes); ignored",
                            len(msg.data))

    def _dispatch(self, text: str, on_event: EventHandler) -> None:
        """Parse and deliver ONE message. Whatever goes wrong, only this message is lost:
        it is logged with its event type (its payload, which holds phone numbers, only at
        DEBUG) and the reader goes on with the next one."""
        try:
            data = jsonlib.loads(text)
        except RecursionError:
            log.warning("ARI sent a message nested too deeply to read; dropped")
            log.debug("dropped ARI message: %.2000s", text)
            return
        except ValueError:
            log.warning("ARI sent a non-JSON message; dropped")
            log.debug("dropped ARI message: %.2000s", text)
            return
        if not isinstance(data, dict):
            log.warning("ARI sent a JSON %s, not an object; dropped", type(data).__name__)
            return
        etype = _safe_type(data.get("type"))
        try:
            on_event(parse_event(data))
        except Exception:
            # A bug in one handler must not take the connection down for every call.
            log.exception("ARI event %s dropped: handling it failed", etype)
            log.debug("dropped ARI message: %.2000s", text)

    # ---- channels

    async def list_channels(self) -> list[Channel]:
        data = await self.request("GET", "/channels")
        return [Channel.from_json(c) for c in _list(data) if isinstance(c, dict)]

    async def get_channel(self, channel_id: str) -> Channel:
        return Channel.from_json(await self.request("GET", f"/channels/{_q(channel_id)}"))

    # Channel commands are patient (``_patiently``): a timeout is checked, not failed.

    async def answer(self, channel_id: str) -> None:
        async def up() -> object:
            return None if (await self.get_channel(channel_id)).state == "Up" else _PENDING

        await self._patiently("POST", f"/channels/{_q(channel_id)}/answer", up)

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        async def gone() -> object:
            try:
                await self.get_channel(channel_id)
            except AriNotFound:
                return None
            return _PENDING

        await self._patiently("DELETE", f"/channels/{_q(channel_id)}", gone,
                              params={"reason": reason}, removal=True)

    async def start_moh(self, channel_id: str, moh_class: str = "default") -> None:
        await self._patiently("POST", f"/channels/{_q(channel_id)}/moh",
                              lambda: self._channel_present(channel_id),
                              params={"mohClass": moh_class})

    async def stop_moh(self, channel_id: str) -> None:
        await self._patiently("DELETE", f"/channels/{_q(channel_id)}/moh",
                              lambda: self._channel_present(channel_id))

    async def start_ringing(self, channel_id: str) -> None:
        await self._patiently("POST", f"/channels/{_q(channel_id)}/ring",
                              lambda: self._channel_present(channel_id))

    async def stop_ringing(self, channel_id: str) -> None:
        await self._patiently("DELETE", f"/channels/{_q(channel_id)}/ring",
                              lambda: self._channel_present(channel_id))

    async def play(
        self,
        channel_id: str,
        media: str | Sequence[str],
        *,
        playback_id: str | None = None,
        lang: str | None = None,
    ) -> Playback:
        uris = [media] if isinstance(media, str) else list(media)
        params: dict[str, str | int | float] = {"media": ",".join(uris)}
        if lang:
            params["lang"] = lang
        if not playback_id:
            # Asterisk picks the id: nothing to check a timeout against.
            path = f"/channels/{_q(channel_id)}/play"
            return Playback.from_json(await self.request("POST", path, params=params))
        pid = playback_id

        async def exists() -> object:
            # Created: its events come as usual. Not there: sent again with the same id
            # once the channel is known to be there. (Asterisk does not refuse a second
            # playback with the same id: if the first one was created late and already
            # played to its end, the caller hears it twice; better than a lost caller.)
            try:
                found: object = await self.request("GET", f"/playbacks/{_q(pid)}")
            except AriNotFound:
                return await self._channel_present(channel_id)
            return found

        path = f"/channels/{_q(channel_id)}/play/{_q(pid)}"
        return Playback.from_json(await self._patiently("POST", path, exists, params=params))

    async def stop_playback(self, playback_id: str) -> None:
        async def stopped() -> object:
            try:
                await self.request("GET", f"/playbacks/{_q(playback_id)}")
            except AriNotFound:
                return None
            return _PENDING

        await self._patiently("DELETE", f"/playbacks/{_q(playback_id)}", stopped,
                              removal=True)

    async def originate(
        self,
        endpoint: str,
        *,
        app_args: str = "",
        caller_id: str | None = None,
        timeout: float = 30,
        variables: Mapping[str, str] | None = None,
        channel_id: str | None = None,
    ) -> Channel:
        """Originate a channel that enters our Stasis app when answered."""
        params: dict[str, str | int | float] = {
            "endpoint": endpoint,
            "app": self.app,
            "timeout": max(1, round(timeout)),
        }
        if app_args:
            params["appArgs"] = app_args
        if caller_id:
            params["callerId"] = caller_id
        if channel_id:
            params["channelId"] = channel_id
        body: JSON = {"variables": dict(variables)} if variables else {}
        data = await self.request("POST", "/channels", params=params, json=body)
        return Channel.from_json(data)

    async def continue_in_dialplan(self, channel_id: str, context: str,
                                   extension: str = "s", priority: int = 1) -> None:
        """Let a channel leave our app for the dialplan (``StasisEnd`` follows)."""
        await self.request(
            "POST",
            f"/channels/{_q(channel_id)}/continue",
            params={"context": context, "extension": extension, "priority": priority},
        )

    async def subscribe_channel(self, channel_id: str) -> None:
        """Keep receiving a channel's events (state, hang-up) while it is outside our
        app, e.g. in the dialplan; the channel must exist."""
        await self.request(
            "POST",
            f"/applications/{_q(self.app)}/subscription",
            params={"eventSource": f"channel:{channel_id}"},
        )

    # ---- bridges

    async def create_bridge(self, bridge_id: str | None = None, kind: str = "mixing") -> str:
        params: dict[str, str | int | float] = {"type": kind}
        if bridge_id:
            params["bridgeId"] = bridge_id
        data = await self.request("POST", "/bridges", params=params)
        return _str(data, "id") if isinstance(data, dict) else ""

    async def add_to_bridge(self, bridge_id: str, channel_ids: Sequence[str]) -> None:
        await self.request(
            "POST",
            f"/bridges/{_q(bridge_id)}/addChannel",
            params={"channel": ",".join(channel_ids)},
        )

    async def destroy_bridge(self, bridge_id: str) -> None:
        await self.request("DELETE", f"/bridges/{_q(bridge_id)}")

    async def list_bridges(self) -> list[JSON]:
        data = await self.request("GET", "/bridges")
        return [b for b in _list(data) if isinstance(b, dict)]

    # ---- endpoints

    async def list_endpoints(self) -> list[Endpoint]:
        data = await self.request("GET", "/endpoints")
        return [Endpoint.from_json(e) for e in _list(data) if isinstance(e, dict)]

    async def get_endpoint(self, technology: str, resource: str) -> Endpoint:
        path = f"/endpoints/{_q(technology)}/{_q(resource)}"
        return Endpoint.from_json(await self.request("GET", path))

    async def subscribe_endpoint(self, technology: str, resource: str) -> None:
        """Ask for EndpointStateChange of an endpoint no channel of ours has touched yet."""
        await self.request(
            "POST",
            f"/applications/{_q(self.app)}/subscription",
            params={"eventSource": f"endpoint:{technology}/{resource}"},
        )
