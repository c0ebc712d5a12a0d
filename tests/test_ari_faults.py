"""Faults a real call cannot time, against the fake ARI (``tests/fakeari.py``): malformed
events, events out of order, ARI errors and timeouts, a dead events task. Fast tier: no
root, no Asterisk. The real ``AriClient`` first, then the whole ``ivr.app.Service``.

Safe by default: no input from Asterisk stops event delivery, corrupts the queue or
takes the service down, and ``/healthz`` tells the truth meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import stat
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from ivr import ari
from ivr.app import TOKEN_FILE, Service
from ivr.domain.items import OPEN_STATES
from tests.fakeari import EVENT_FIXTURES, FakeAri, load_jsonl, service_on, template
from tests.support.recorder import Recorder

CALLER = "5551234"  # must never appear in a log line above DEBUG
E = TypeVar("E", bound=ari.Event)


# ------------------------------------------------------------------ helpers


@pytest.fixture
async def fake() -> AsyncIterator[FakeAri]:
    async with FakeAri() as f:
        yield f


@contextlib.asynccontextmanager
async def running_client(
    fake: FakeAri,
    rec: Recorder,
    on_connect: Callable[[bool], Any] | None = None,
    **kw: Any,
) -> AsyncIterator[tuple[ari.AriClient, asyncio.Task[None]]]:
    client = fake.client(**kw)
    task = asyncio.create_task(client.run(rec.on_event, on_connect or rec.on_connect))
    try:
        await asyncio.wait_for(client.connected.wait(), 5)
        yield client, task
    finally:
        await client.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def deep_object(depth: int) -> str:
    return '{"type":"StasisStart","x":' + '{"a":' * depth + "1" + "}" * depth + "}"


# Text frames no Asterisk should send, each of which once could kill the events task.
MALFORMED_FRAMES: list[str] = [
    '{"type":"ChannelHangupRequest","cause":1e400,"channel":{"id":"c-odd"}}',
    '{"type":"ChannelDestroyed","cause":-1e400,"cause_txt":7,"channel":{"id":"c-odd"}}',
    '{"type":"ChannelDestroyed","cause":NaN,"channel":{"id":"c-odd"}}',
    '{"type":"ChannelDtmfReceived","digit":"1","duration_ms":1e400,"channel":{"id":"c-odd"}}',
    '{"type":"ChannelDtmfReceived","digit":["1"],"duration_ms":"x","channel":{"id":"c-odd"}}',
    '{"type":"ChannelDtmfReceived","digit":"12","channel":{"id":"c-odd"}}',
    '{"type":"ChannelHangupRequest","cause":' + "9" * 5000 + ',"channel":{"id":"c-odd"}}',
    '{"type":"StasisStart","channel":"not-an-object","args":"q"}',
    '{"type":"StasisStart","channel":{"id":["a"]},"args":[{"x":1}]}',
    '{"type":"StasisStart","channel":{"id":"","caller":{"number":5551234}}}',
    '{"type":"StasisEnd","channel":null,"timestamp":12}',
    '{"type":"PlaybackFinished","playback":{"id":1e400,"target_uri":["channel:x"]}}',
    '{"type":"PlaybackStarted","playback":"x","timestamp":"9999-99-99T99:99:99.999+9999"}',
    '{"type":"Dial","peer":[],"dialstatus":{}}',
    '{"type":"EndpointStateChange","endpoint":{"technology":1,"channel_ids":[1,{}]}}',
    '{"type":"ChannelVarset","variable":"X","value":{"deep":[[[1]]]}}',
    '{"type":"NoSuchEventType","channel":{"id":"c-odd"}}',
    '{"type":5}',
    '{"type":null}',
    "{}",
    "not json at all",
    "{\"type\": \"StasisStart\", ",  # truncated
    "[1, 2, 3]",
    '"a string"',
    "null",
    "1e400",
    "",
    deep_object(10_000),
    "[" * 100_000 + "]" * 100_000,
    '{"type":"StasisStart","channel":{"id":"c-odd","channelvars":{"a":' + "1" * 5000 + "}}}",
]


def channel_items(svc: Service, channel_id: str) -> list[Any]:
    """Open work items of a caller channel, over every queue."""
    return [i for q in svc.cfg.queues for i in svc.engine.items(q)
            if i.channel_id == channel_id and i.state in OPEN_STATES]


def no_number_logged(caplog: pytest.LogCaptureFixture, number: str = CALLER) -> None:
    leaked = [r for r in caplog.records if r.levelno > logging.DEBUG
              and (number in r.getMessage() or number in (r.exc_text or ""))]
    assert not leaked, [r.getMessage() for r in leaked]


# ------------------------------------------------------------------ parse_event


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((*prefix, i))
            out.extend(_paths(v, (*prefix, i)))
    return out


def _replaced(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy: Any = dict(obj) if isinstance(obj, dict) else list(obj)
    copy[path[0]] = _replaced(obj[path[0]], path[1:], value)
    return copy


def _nested(depth: int) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for _ in range(depth):
        d = {"a": d}
    return d


ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 2**80, -(2**80), float("inf"), float("-inf"), float("nan"),
    1.5, "", "x" * 10_000, "\x00\ud800", [], {}, [1, "a", None], {"id": {"id": []}},
    _nested(5_000),
]


def recorded_events() -> list[dict[str, Any]]:
    return [ev for name in EVENT_FIXTURES for ev in load_jsonl(name)]


def test_recorded_streams_parse_to_typed_events() -> None:
    """The shapes Asterisk 22 really sends (recorded) parse to the typed events."""
    press1 = [ari.parse_event(e) for e in load_jsonl("ari22_caller_press1.jsonl")]
    start = press1[0]
    assert isinstance(start, ari.StasisStart)
    assert start.args == ("q7001",) and start.channel.caller_number == "5551234"
    assert start.channel.app_name == "Stasis" and start.channel.app_data == "ivr,q7001"
    assert start.timestamp > 1.7e9 and start.channel.created_at > 1.7e9
    dtmf = next(e for e in press1 if isinstance(e, ari.ChannelDtmfReceived))
    assert dtmf.digit == "1" and dtmf.duration_ms == 280
    assert dtmf.channel_id == start.channel.id
    pbs = [e for e in press1 if isinstance(e, ari.PlaybackEvent)]
    assert [type(e).__name__ for e in pbs] == ["PlaybackStarted", "PlaybackFinished"] * 2
    assert all(e.channel_id == start.channel.id for e in pbs)
    hang = next(e for e in press1 if isinstance(e, ari.ChannelHangupRequest))
    assert hang.cause == 32
    assert isinstance(press1[-1], ari.StasisEnd)
    varsets = [e for e in press1 if e.type == "ChannelVarset"]
    assert varsets and all(type(e) is ari.Event for e in varsets)
    bridge = [ari.parse_event(e) for e in load_jsonl("ari22_agent_leg_bridge.jsonl")]
    leg = [e for e in bridge if isinstance(e, ari.StasisStart) and e.args[:1] == ("agent",)]
    assert leg and leg[0].args == ("agent", "item-1") and leg[0].channel.id == "agent-leg-1"
    destroyed = [e for e in bridge if isinstance(e, ari.ChannelDestroyed)]
    assert destroyed and destroyed[0].cause == 16 and destroyed[0].cause_txt == "Normal Clearing"
    dials = [e for e in bridge if isinstance(e, ari.Dial)]
    assert {d.dialstatus for d in dials} >= {"RINGING", "ANSWER"}
    assert all(d.channel_id == "agent-leg-1" for d in dials)
    entered = [e for e in bridge if isinstance(e, ari.ChannelEnteredBridge)]
    assert {e.bridge_id for e in entered} == {"bridge-1"}
    eps = [e for e in bridge if isinstance(e, ari.EndpointStateChange)]
    assert eps and eps[0].endpoint.name == "PJSIP/agent1" and eps[0].endpoint.state == "online"


def test_timestamps_as_strptime_read_them() -> None:
    """fromisoformat (the fast path) agrees with the strptime format it replaced, on
    every recorded timestamp and on other offsets."""
    stamps = {e["timestamp"] for e in recorded_events()}
    stamps |= {"2026-11-28T09:00:00.123-0500", "2026-11-28T09:00:00.999+0530"}
    for s in stamps:
        expected = datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
        assert ari.parse_event({"type": "X", "timestamp": s}).timestamp == expected, s
    for odd in ("garbage", "", "2026-13-01T00:00:00.000+0000", "0001-01-01T00:00:00+2359",
                "9999-12-31T23:59:59.999-2359", "x" * 10_000, 5, None, ["2026"]):
        assert ari.parse_event({"type": "X", "timestamp": odd}).timestamp == 0.0, odd
    naive = ari.parse_event({"type": "X", "timestamp": "2026-11-28T09:00:00.000"}).timestamp
    assert naive == datetime.fromisoformat("2026-11-28T09:00:00+00:00").timestamp()


def test_parse_event_never_raises_wrong_types_everywhere() -> None:
    """Every field of every recorded event type, replaced by every odd value: a typed
    or untyped event comes back, never an exception."""
    samples: dict[str, dict[str, Any]] = {}
    for ev in recorded_events():
        samples.setdefault(ev["type"], ev)
    assert len(samples) >= 12
    count = 0
    for ev in samples.values():
        for path in _paths(ev):
            for value in ODD_VALUES:
                out = ari.parse_event(_replaced(ev, path, value))
                assert isinstance(out, ari.Event)
                assert isinstance(out.channel_id, str)
                count += 1
    assert count > 5_000


def test_parse_event_bounds_numbers_and_demotes_unusable_events() -> None:
    hang = ari.parse_event(json.loads(MALFORMED_FRAMES[0]))
    assert isinstance(hang, ari.ChannelHangupRequest) and hang.cause == 0
    assert isinstance(ari.parse_event({"type": "ChannelHangupRequest", "cause": 2**70,
                                       "channel": {"id": "c"}}), ari.ChannelHangupRequest)
    dest = ari.parse_event({"type": "ChannelDestroyed", "cause": "17", "channel": {"id": "c"}})
    assert isinstance(dest, ari.ChannelDestroyed) and dest.cause == 17
    dtmf = ari.parse_event({"type": "ChannelDtmfReceived", "digit": "5", "duration_ms": 1e400,
                            "channel": {"id": "c"}})
    assert isinstance(dtmf, ari.ChannelDtmfReceived) and dtmf.duration_ms == 0
    # No usable digit, or no channel id: no flow can act on it, so it is not typed.
    for bad in ({"type": "ChannelDtmfReceived", "digit": "", "channel": {"id": "c"}},
                {"type": "ChannelDtmfReceived", "digit": "12", "channel": {"id": "c"}},
                {"type": "StasisStart", "channel": {"id": ""}},
                {"type": "StasisStart", "channel": {"id": 7}},
                {"type": "StasisEnd"}):
        assert type(ari.parse_event(bad)) is ari.Event, bad
    start = ari.parse_event({"type": "StasisStart", "channel": {
        "id": "c", "channelvars": {"A": 1, "B": None, "C": "x", "D": [1]}},
        "args": ["q", 5, None, {"x": 1}]})
    assert isinstance(start, ari.StasisStart)
    assert start.args == ("q", "5") and dict(start.channel.variables) == {"A": "1", "C": "x"}


# ------------------------------------------------------------------ AriClient over the fake


async def test_malformed_frames_never_stop_event_delivery(
    fake: FakeAri, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rec = Recorder(timeout=5.0)
    async with running_client(fake, rec) as (client, task):
        for frame in MALFORMED_FRAMES:
            await fake.send_raw(frame)
        await fake.send_binary(b"\x00\xff binary")
        good = await fake.caller_enters("support", CALLER)
        await rec.wait(lambda: any(isinstance(e, ari.StasisStart) and e.channel.id == good
                                   for e in rec.events))
        assert not task.done() and client.connected.is_set()
        assert client.reconnects == 0 and fake.ws_accepted == 1
        # Objects that parse are passed on (typed or not); the rest are dropped, logged.
        assert rec.connects == [False]
        assert any(r.levelno == logging.WARNING and "nested too deeply" in r.getMessage()
                   for r in caplog.records)
    no_number_logged(caplog)


async def test_a_failing_handler_loses_only_its_event(
    fake: FakeAri, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder(timeout=5.0)
    seen: list[str] = []

    def handler(ev: ari.Event) -> None:
        seen.append(ev.type)
        if ev.type == "ChannelDtmfReceived":
            raise RuntimeError("bug in a handler")
        rec.on_event(ev)

    client = fake.client()
    task = asyncio.create_task(client.run(handler, rec.on_connect))
    try:
        await asyncio.wait_for(client.connected.wait(), 5)
        chan = await fake.caller_enters("support", CALLER)
        await fake.dtmf(chan, "1")
        await fake.caller_hangs_up(chan)
        await rec.wait(lambda: bool(rec.of(ari.StasisEnd)))
        assert seen == ["StasisStart", "ChannelDtmfReceived", "ChannelHangupRequest",
                        "StasisEnd"]
        assert not task.done() and client.reconnects == 0
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors and "ChannelDtmfReceived" in errors[0].getMessage()
    finally:
        await client.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    no_number_logged(caplog)


async def test_on_connect_failure_closes_and_reconnects_with_backoff(
    fake: FakeAri, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder(timeout=5.0)
    calls: list[bool] = []

    async def on_connect(reconnected: bool) -> None:
        calls.append(reconnected)
        if len(calls) <= 2:
            raise ValueError("resync blew up")
        await rec.on_connect(reconnected)

    t0 = time.monotonic()
    async with running_client(fake, rec, on_connect, backoff_initial=0.1) as (client, task):
        # Two failures (backing off 0.1 s then 0.2 s, +-20%), then a working connection.
        assert time.monotonic() - t0 >= 0.2
        assert fake.ws_accepted == 3 and calls == [False, False, False]
        await fake.wait_for(lambda: fake.open_websockets == 1, 2, "the failed ones closed")
        chan = await fake.caller_enters("support", CALLER)
        await rec.wait(lambda: bool(rec.of(ari.StasisStart)))
        assert rec.of(ari.StasisStart)[0].channel_id == chan
        assert not task.done() and client.reconnects == 0
    failures = [r for r in caplog.records if "connection failed" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info for r in failures)


async def test_server_drop_and_refusal_reconnect(fake: FakeAri) -> None:
    rec = Recorder(timeout=5.0)
    async with running_client(fake, rec) as (client, task):
        fake.refuse_websocket = 503
        await fake.drop_websockets()
        await fake.wait_for(lambda: not client.connected.is_set())
        await asyncio.sleep(0.3)  # a few refused attempts
        assert not task.done() and not client.connected.is_set()
        fake.refuse_websocket = None
        await asyncio.wait_for(client.connected.wait(), 5)
        assert client.reconnects == 1 and rec.connects == [False, True]
        chan = await fake.caller_enters("support", CALLER)
        await rec.wait(lambda: any(e.channel_id == chan for e in rec.events))


async def test_rest_faults_are_typed_errors(fake: FakeAri) -> None:
    # No patience: a timeout fails at once (``tests/test_ari_late.py``: with patience).
    client = fake.client(request_timeout=0.3, patience=0)
    try:
        chan = await fake.caller_enters("support", CALLER)
        fake.fail("POST", "/channels/*/answer", 500, times=1)
        with pytest.raises(ari.AriUnavailable) as e500:
            await client.answer(chan)
        assert e500.value.status == 500
        await client.answer(chan)  # the fault was for one request only
        fake.stall("POST", "/channels/*/moh", 2.0, times=1)
        t0 = time.monotonic()
        with pytest.raises(ari.AriTimeout) as slow:
            await client.start_moh(chan)
        assert slow.value.status == 0 and time.monotonic() - t0 < 1.5
        with pytest.raises(ari.AriNotFound):
            await client.answer("no-such-channel")
        fake.fail("POST", "/channels/*/ring", 409, times=1)
        with pytest.raises(ari.AriConflict):
            await client.start_ringing(chan)
        fake.fail("GET", "/channels", 200, body="{not json", times=1)
        with pytest.raises(ari.AriUnavailable):
            await client.list_channels()
        fake.fail("GET", "/channels", 200, body="[" * 100_000, times=1)
        with pytest.raises(ari.AriUnavailable):
            await client.list_channels()
        fake.fail("GET", "/channels", 200, body='{"not": "a list"}', times=1)
        assert await client.list_channels() == []
        fake.fail("GET", f"/channels/{chan}", 200, body="[1, 2]", times=1)
        assert (await client.get_channel(chan)).id == ""
        assert [c.id for c in await client.list_channels()] == [chan]
    finally:
        await client.close()
    bad = ari.AriClient(fake.url, fake.user, "wrong", fake.app)
    try:
        with pytest.raises(ari.AriError) as e401:
            await bad.list_channels()
        assert e401.value.status == 401 and fake.auth_failures == 1
    finally:
        await bad.close()


async def test_every_id_in_a_rest_path_is_percent_encoded(fake: FakeAri) -> None:
    odd = "a/b?c#d %e"
    chan = await fake.caller_enters("support", CALLER, channel_id=odd)
    fake.endpoints["PJSIP/x/y"] = "online"
    client = fake.client()
    try:
        await client.answer(chan)
        pb = await client.play(chan, "sound:x", playback_id="p/1?")
        assert pb.id == "p/1?" and pb.channel_id == odd
        await client.stop_playback("p/1?")
        await client.start_moh(chan)
        await client.stop_moh(chan)
        ep = await client.get_endpoint("PJSIP", "x/y")  # resource "x/y": ONE segment
        assert ep.resource == "x/y" and ep.state == "online"
        with pytest.raises(ari.AriNotFound):
            await client.get_endpoint("PJSIP/x", "y")
        bridge = await client.create_bridge("br/1")
        await client.add_to_bridge(bridge, [chan])
        await client.destroy_bridge(bridge)
        await client.hangup(chan)
    finally:
        await client.close()
    by_path = {r.path: r for r in fake.requests}
    for path in (f"/channels/{odd}/answer", f"/channels/{odd}/play/p/1?", "/playbacks/p/1?",
                 f"/channels/{odd}", "/bridges/br/1/addChannel", "/bridges/br/1",
                 "/endpoints/PJSIP/x/y"):
        assert path in by_path, (path, sorted(by_path))
    assert by_path[f"/channels/{odd}/answer"].raw_path == \
        "/channels/a%2Fb%3Fc%23d%20%25e/answer"
    assert by_path[f"/channels/{odd}/answer"].segments == ("channels", odd, "answer")
    assert by_path["/playbacks/p/1?"].segments == ("playbacks", "p/1?")
    eps = [(r.segments, r.raw_path, r.status) for r in fake.calls("GET", "/endpoints/*")]
    assert eps == [(("endpoints", "PJSIP", "x/y"), "/endpoints/PJSIP/x%2Fy", 200),
                   (("endpoints", "PJSIP/x", "y"), "/endpoints/PJSIP%2Fx/y", 404)]
    assert [r.status for r in fake.requests if r.status >= 300] == [404]


async def test_the_fake_speaks_like_the_recording(fake: FakeAri) -> None:
    """The fake's own behaviour, through the real client: what tests built on it rely on."""
    rec = Recorder(timeout=5.0)
    fake.endpoints["PJSIP/agent1"] = "online"
    async with running_client(fake, rec) as (client, _):
        chan = await fake.caller_enters("support", CALLER)
        await client.answer(chan)
        await client.play(chan, "sound:x", playback_id="pb1")
        await rec.wait(lambda: bool(rec.of(ari.PlaybackFinished)))
        assert [type(e).__name__ for e in rec.events] == [
            "StasisStart", "ChannelStateChange", "PlaybackStarted", "PlaybackFinished"]
        assert rec.events[1].raw["channel"]["state"] == "Up"
        assert (await client.get_endpoint("PJSIP", "agent1")).state == "online"
        await client.subscribe_endpoint("PJSIP", "agent1")
        await fake.endpoint_state("PJSIP/agent1", "offline")
        await rec.wait(lambda: bool(rec.of(ari.EndpointStateChange)))
        leg = await client.originate("PJSIP/agent1", app_args="agent,item-9",
                                     caller_id='"CALLBACK 5551234" <2015550100>',
                                     channel_id="leg-1")
        assert leg.id == "leg-1" and leg.state == "Down" and leg.caller_name == "CALLBACK 5551234"
        assert fake.calls("POST", "/channels")[0].query["appArgs"] == "agent,item-9"
        await fake.originated_answers("leg-1")
        await rec.wait(lambda: any(isinstance(e, ari.StasisStart) and e.channel.id == "leg-1"
                                   for e in rec.events))
        bridge = await client.create_bridge("br-1")
        await client.add_to_bridge(bridge, [chan, "leg-1"])
        await rec.wait(lambda: len(rec.of(ari.ChannelEnteredBridge)) == 2)
        assert [b["channels"] for b in await client.list_bridges()] == [[chan, "leg-1"]]
        await client.hangup("leg-1")
        await rec.wait(lambda: any(isinstance(e, ari.StasisEnd) and e.channel.id == "leg-1"
                                   for e in rec.events))
        hang = [e for e in rec.of(ari.ChannelHangupRequest) if e.channel_id == "leg-1"]
        assert hang and hang[0].cause == 32
        await client.destroy_bridge(bridge)
        await fake.caller_hangs_up(chan)
        await rec.wait(lambda: any(isinstance(e, ari.StasisEnd) and e.channel.id == chan
                                   for e in rec.events))
        assert fake.channels == {} and fake.hung_up == ["leg-1", chan]
        assert await client.list_channels() == []


# ------------------------------------------------------------------ the whole service


async def health(base: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as r:
        body: dict[str, Any] = await r.json()
        return r.status, body


async def answered_and_queued(fake: FakeAri, svc: Service, chan: str,
                              timeout: float = 5.0) -> None:
    await fake.wait_for_request("POST", f"/channels/{chan}/answer", timeout)
    await fake.wait_for_request("POST", f"/channels/{chan}/moh", timeout)
    await fake.wait_for(lambda: len(channel_items(svc, chan)) == 1, timeout,
                        f"an open item for {chan}")


async def test_service_survives_malformed_and_recorded_events(
    fake: FakeAri, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with service_on(fake, tmp_path) as (svc, base):
        first = await fake.caller_enters("support", CALLER)
        await answered_and_queued(fake, svc, first)
        for frame in MALFORMED_FRAMES:
            await fake.send_raw(frame)
        await fake.send_binary(b"\xff\xfe")
        # Real Asterisk streams too, ids and all: other queues, duplicates, agent legs
        # from "an earlier run" (hung up), varsets. None of it may hurt.
        for name in EVENT_FIXTURES:
            for ev in load_jsonl(name):
                await fake.send_raw(json.dumps(ev))
        second = await fake.caller_enters("support", "2015550123")
        await answered_and_queued(fake, svc, second)
        assert await health(base) == (200, {"ok": True, "role": "active",
                                             "ari_connected": True,
                                             "events_task_alive": True})
        assert svc.event_task_restarts == 0 and svc.ari.reconnects == 0
        assert len(channel_items(svc, first)) == 1
    no_number_logged(caplog)


async def test_service_tolerates_events_out_of_order(fake: FakeAri, tmp_path: Path) -> None:
    async with service_on(fake, tmp_path) as (svc, base):
        ghost = fake.new_channel_id()
        # Events about channels the service never saw enter Stasis.
        await fake.send_event(fake.channel_event("ChannelDtmfReceived", ghost, digit="1",
                                                 duration_ms=100))
        await fake.send_event(fake.channel_event("StasisEnd", ghost))
        await fake.send_event(fake.channel_event("ChannelDestroyed", ghost, cause=16))
        await fake.send_event({**template("PlaybackFinished"), "playback": {
            "id": "nobody", "target_uri": f"channel:{ghost}", "state": "done"}})
        # A caller whose StasisStart arrives twice, then a DTMF before any offer.
        a = await fake.caller_enters("support", CALLER)
        ev = fake.channel_event("StasisStart", a, args=["support"])
        await fake.send_event(ev)
        await answered_and_queued(fake, svc, a)
        await fake.dtmf(a, "1")
        await asyncio.sleep(0.1)
        assert len(fake.calls("POST", f"/channels/{a}/answer")) == 1
        assert len(channel_items(svc, a)) == 1
        # It hangs up; late events for it follow its StasisEnd.
        await fake.caller_hangs_up(a)
        await fake.dtmf(a, "2")
        await fake.send_event(fake.channel_event("ChannelHangupRequest", a))
        await fake.wait_for(lambda: not channel_items(svc, a), 5, "the item abandoned")
        # A DTMF and a StasisEnd before the StasisStart of the same channel.
        b = fake.new_channel_id()
        await fake.send_event(fake.channel_event("ChannelDtmfReceived", b, digit="1",
                                                 duration_ms=90))
        await fake.send_event(fake.channel_event("StasisEnd", b))
        await fake.caller_enters("support", "2015550123", channel_id=b)
        await answered_and_queued(fake, svc, b)
        c = await fake.caller_enters("support", "2015550124")
        await answered_and_queued(fake, svc, c)
        assert (await health(base))[0] == 200
        assert svc.event_task_restarts == 0


@pytest.mark.parametrize(
    ("method", "call", "fault"),
    [
        ("POST", "answer", "500"),
        ("POST", "moh", "500"),
        ("POST", "play/*", "500"),
        ("POST", "answer", "timeout"),
        ("POST", "moh", "timeout"),
        ("POST", "play/*", "timeout"),
    ],
)
async def test_ari_errors_on_a_callers_calls(
    fake: FakeAri, tmp_path: Path, method: str, call: str, fault: str
) -> None:
    """Asterisk answers 500 (or nothing at all, for longer than the client's patience:
    a late answer is checked and asked again, ``tests/test_ari_late.py``) on one
    caller's answer, music or offer: the service survives, that caller is hung up
    rather than left in silence, its work item does not stay open (it would hold a
    place for nobody), and the next callers are answered and queued."""
    async with service_on(fake, tmp_path) as (svc, base):
        victim = fake.new_channel_id()
        pattern = f"/channels/{victim}/{call}"
        if fault == "500":
            fake.fail(method, pattern, 500)
        else:
            fake.hold(method, pattern)  # never released
        # Valid US numbers: the number guard lets both be offered a callback.
        await fake.caller_enters("support", "2015550122", channel_id=victim)
        # A second caller puts the queue in overflow (max_waiting 1): offers are played.
        other = await fake.caller_enters("support", "2015550123")
        await answered_and_queued(fake, svc, other)
        await fake.wait_for_request(method, pattern)
        await fake.wait_for_request("DELETE", f"/channels/{victim}", 5)
        await fake.wait_for(lambda: not channel_items(svc, victim), 5,
                            "the victim's item closed (ivr/flows/switchboard.py on_crash)")
        if call == "play/*":
            await fake.wait_for_request("POST", f"/channels/{other}/play/*")
        third = await fake.caller_enters("support", "2015550124")
        await answered_and_queued(fake, svc, third)
        assert len(channel_items(svc, other)) == 1
        assert (await health(base))[0] == 200
        assert svc.event_task_restarts == 0


async def test_killed_events_task_is_restarted_and_health_is_honest(
    fake: FakeAri, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with service_on(fake, tmp_path) as (svc, base):
        assert (await health(base))[0] == 200
        # 1. Cancelled from outside.
        assert svc._events is not None
        svc._events.cancel()
        await fake.wait_for(lambda: not svc.events_task_alive, 2, "the task dead")
        status, body = await health(base)
        assert status == 503 and body["events_task_alive"] is False
        assert "events task" in body["reason"]
        await fake.wait_for(lambda: svc.events_task_alive and svc.ari.connected.is_set(), 5,
                            "the task restarted")
        assert svc.event_task_restarts == 1
        assert (await health(base))[0] == 200
        # 2. ari.run raising (once), then returning (once): both restarted.
        real_run = svc.ari.run
        plan = ["raise", "return"]

        async def flaky_run(*args: Any, **kwargs: Any) -> None:
            if plan:
                what = plan.pop(0)
                if what == "raise":
                    raise RuntimeError("events loop bug")
                return
            await real_run(*args, **kwargs)

        svc.ari.run = flaky_run  # type: ignore[method-assign]
        svc._events.cancel()
        await fake.wait_for(lambda: svc.event_task_restarts == 4 and svc.events_task_alive
                            and svc.ari.connected.is_set(), 5, "three more restarts")
        assert plan == []
        chan = await fake.caller_enters("support", CALLER)
        await answered_and_queued(fake, svc, chan)
        assert (await health(base))[0] == 200
        # 3. The websocket down (Asterisk refusing): 503 until it is back, no restart.
        fake.refuse_websocket = 503
        await fake.drop_websockets()
        await fake.wait_for(lambda: not svc.ari.connected.is_set(), 2, "disconnected")
        status, body = await health(base)
        assert status == 503 and body["ari_connected"] is False
        assert body["events_task_alive"] is True and "websocket" in body["reason"]
        fake.refuse_websocket = None
        await fake.wait_for(lambda: svc.ari.connected.is_set(), 5, "reconnected")
        assert (await health(base))[0] == 200 and svc.event_task_restarts == 4
    errors = [r.getMessage() for r in caplog.records
              if r.name == "ivr.app" and r.levelno >= logging.ERROR]
    assert len(errors) == 4, errors


async def test_api_token_file_is_made_once_0600_and_reused(
    fake: FakeAri, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IVR_API_TOKEN", raising=False)
    caplog.set_level(logging.INFO)
    token_file = tmp_path / TOKEN_FILE
    assert not token_file.exists()
    async with service_on(fake, tmp_path, token=None) as (svc, base):
        token = svc.web_token
        assert len(token) >= 32
        assert token_file.read_text().strip() == token
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        async with aiohttp.ClientSession() as http:
            auth = {"Authorization": f"Bearer {token}"}
            async with http.get(f"{base}/api/queues", headers=auth) as r:
                assert r.status == 200
            async with http.get(f"{base}/api/queues") as r:
                assert r.status == 401
    async with service_on(fake, tmp_path, token=None) as (svc2, base):
        assert svc2.web_token == token
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    lines = [r.getMessage() for r in caplog.records if r.name == "ivr.app"]
    assert any(str(token_file) in m for m in lines)
    assert not any(token in r.getMessage() for r in caplog.records)
    # A token file others may read is tightened; a configured token wins over the file.
    token_file.chmod(0o644)
    async with service_on(fake, tmp_path, token=None) as (svc3, _):
        assert svc3.web_token == token
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    async with service_on(fake, tmp_path, token="configured-token") as (svc4, _):
        assert svc4.web_token == "configured-token"
