"""The ARI client against the real Asterisk 22: REST, typed errors, events, and staying
connected through a dropped websocket and an Asterisk restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest

from ivr import ari
from rig.sandbox import AsteriskInstance
from tests.peers import SipCaller
from tests.support.asterisk import finish_asterisk, start_asterisk
from tests.support.recorder import Recorder
from tests.support.tcpproxy import TcpProxy

E = TypeVar("E", bound=ari.Event)


async def _client(url: str, inst: AsteriskInstance, *, heartbeat: float = 5.0,
                  backoff_initial: float = 0.25, backoff_max: float = 10.0) -> ari.AriClient:
    return ari.AriClient(url, inst.ari_user, inst.ari_password, inst.app_name,
                         heartbeat=heartbeat, backoff_initial=backoff_initial,
                         backoff_max=backoff_max)


@pytest.fixture
async def running_client(asterisk: AsteriskInstance) -> AsyncIterator[tuple[ari.AriClient,
                                                                              Recorder]]:
    client = await _client(asterisk.ari_url, asterisk)
    rec = Recorder()
    task = asyncio.create_task(client.run(rec.on_event, rec.on_connect))
    await asyncio.wait_for(client.connected.wait(), 30)
    try:
        yield client, rec
    finally:
        await client.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_rest_and_typed_errors(asterisk: AsteriskInstance) -> None:
    client = await _client(asterisk.ari_url, asterisk)
    try:
        info = await client.request("GET", "/asterisk/info")
        assert info["system"]["version"].startswith("22")
        with pytest.raises(ari.AriNotFound) as nf:
            await client.hangup("no-such-channel")
        assert nf.value.status == 404
        with pytest.raises(ari.AriBadRequest):
            await client.request("POST", "/channels", params={"endpoint": ""})
    finally:
        await client.close()
    bad = ari.AriClient(asterisk.ari_url, asterisk.ari_user, "wrong", asterisk.app_name)
    try:
        with pytest.raises(ari.AriError) as err:
            await bad.request("GET", "/asterisk/info")
        assert err.value.status == 401
    finally:
        await bad.close()
    gone = ari.AriClient("http://127.0.0.1:9", "u", "p", "x", request_timeout=2)
    try:
        with pytest.raises(ari.AriUnavailable):
            await gone.request("GET", "/asterisk/info")
    finally:
        await gone.close()


async def test_call_enters_stasis_and_dtmf_arrives(
    asterisk: AsteriskInstance, running_client: tuple[ari.AriClient, Recorder],
    sip_caller: Callable[..., SipCaller],
) -> None:
    client, rec = running_client
    caller = sip_caller("7001", caller="5551234", digits=[(1.0, "1")], max_duration=20)
    caller.start()
    start = await rec.event(ari.StasisStart)
    assert start.args == ("q7001",)
    assert start.channel.caller_number == "5551234"
    chan = start.channel.id
    await client.answer(chan)
    media = f"sound:{asterisk.prompts_dir}/en/offer"
    pb = await client.play(chan, media, playback_id="pb-" + chan)
    assert pb.id == "pb-" + chan
    await rec.event(ari.PlaybackStarted, lambda e: e.playback.id == pb.id)
    dtmf = await rec.event(ari.ChannelDtmfReceived, lambda e: e.channel.id == chan)
    assert dtmf.digit == "1"
    await client.stop_playback(pb.id)
    await client.hangup(chan)
    await rec.event(ari.StasisEnd, lambda e: e.channel.id == chan)
    with pytest.raises(ari.AriNotFound):  # a vanished channel: normal life
        await client.answer(chan)
    result = await caller.wait(30)
    assert result.answered and result.hung_up_by == "them"


async def test_websocket_drop_reconnects_and_resyncs(
    asterisk: AsteriskInstance, sip_caller: Callable[..., SipCaller]
) -> None:
    """A cut connection: the client reconnects by itself, signals it, and the channel
    that stayed in Stasis meanwhile is controllable again (Asterisk keeps it)."""
    proxy = TcpProxy("127.0.0.1", asterisk.http_port)
    await proxy.start()
    client = await _client(proxy.url, asterisk, heartbeat=1.0, backoff_initial=0.1)
    rec = Recorder()
    task = asyncio.create_task(client.run(rec.on_event, rec.on_connect))
    caller = sip_caller("7002", caller="5551235", digits=[(6.0, "5")], max_duration=30)
    try:
        await asyncio.wait_for(client.connected.wait(), 30)
        caller.start()
        start = await rec.event(ari.StasisStart)
        chan = start.channel.id
        await client.answer(chan)
        assert proxy.cut() >= 1
        # The client notices, reconnects, and tells us it is a reconnect.
        await rec.wait(lambda: rec.connects == [False, True], timeout=30)
        assert client.reconnects == 1
        channels = await client.list_channels()
        resumed = [c for c in channels if c.id == chan]
        assert resumed and resumed[0].app_name == "Stasis"
        assert resumed[0].app_data == f"{asterisk.app_name},q7002"
        # Events flow again on the new connection, and we still control the channel.
        dtmf = await rec.event(ari.ChannelDtmfReceived, lambda e: e.channel.id == chan, 30)
        assert dtmf.digit == "5"
        await client.hangup(chan)
        result = await caller.wait(30)
        assert result.hung_up_by == "them"
    finally:
        await client.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await proxy.close()


def test_parse_event_tolerates_odd_shapes() -> None:
    assert type(ari.parse_event({})) is ari.Event
    ev = ari.parse_event({"type": "ChannelDtmfReceived", "channel": "not-a-dict",
                          "digit": 5, "duration_ms": "x"})
    assert ev.type == "ChannelDtmfReceived"
    ev2 = ari.parse_event({"type": "StasisStart", "channel": {"id": "c1"}, "args": "zz",
                           "timestamp": "garbage"})
    assert isinstance(ev2, ari.StasisStart) and ev2.args == () and ev2.timestamp == 0.0
    pb = ari.parse_event({"type": "PlaybackFinished", "playback": {
        "id": "p", "target_uri": "channel:abc", "state": "done"}})
    assert isinstance(pb, ari.PlaybackFinished) and pb.channel_id == "abc"


@pytest.mark.asterisk
async def test_asterisk_restart_reconnects_by_itself() -> None:
    """Asterisk goes away and comes back (same ports): the client retries with backoff
    and reconnects without help; REST calls meanwhile fail as AriUnavailable."""
    inst = start_asterisk()
    client = await _client(inst.ari_url, inst, heartbeat=1.0, backoff_initial=0.1,
                           backoff_max=1.0)
    rec = Recorder()
    task = asyncio.create_task(client.run(rec.on_event, rec.on_connect))
    try:
        await asyncio.wait_for(client.connected.wait(), 30)
        await asyncio.to_thread(inst.stop)
        await rec.wait(lambda: not client.connected.is_set(), timeout=20)
        with pytest.raises(ari.AriUnavailable):
            await client.request("GET", "/asterisk/info")
        await asyncio.to_thread(inst.launch)
        await rec.wait(lambda: rec.connects == [False, True], timeout=60)
        info = await client.request("GET", "/asterisk/info")
        assert info["system"]["version"].startswith("22")
    finally:
        await client.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        finish_asterisk(inst)
