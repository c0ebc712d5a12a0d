"""Proves the real-Asterisk rig: sandbox, SIP peers and the ARI observer.

Uses a raw, minimal ARI connection (not the project's client) so a rig failure is
never confused with a client bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from rig.sandbox import AsteriskInstance
from tests.peers import BUSY, CallBehaviour, SipCaller, SipCarrier, SipPhone
from tests.support.asterisk import finish_asterisk, start_asterisk
from tests.support.observer import AriObserver, Event

pytestmark = pytest.mark.asterisk


class RawAri:
    """A few lines of ARI: REST calls and one app's event websocket."""

    def __init__(self, inst: AsteriskInstance, session: aiohttp.ClientSession) -> None:
        self.inst = inst
        self.session = session
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task[None] | None = None

    async def connect(self, app: str) -> None:
        self.ws = await self.session.ws_connect(f"{self.inst.ari_url}/ari/events?app={app}")
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.events.put_nowait(json.loads(msg.data))

    async def next_event(self, type_: str, timeout: float = 30.0) -> Event:
        async with asyncio.timeout(timeout):
            while True:
                e = await self.events.get()
                if e.get("type") == type_:
                    return e

    async def rest(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.session.request(method, f"{self.inst.ari_url}/ari{path}", **kwargs) as resp:
            text = await resp.text()
            assert resp.status < 300, f"{method} {path}: {resp.status} {text}"
            return json.loads(text) if text else None

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@pytest.fixture
async def raw_ari(asterisk: AsteriskInstance) -> AsyncIterator[RawAri]:
    headers = {"Authorization": aiohttp.encode_basic_auth(asterisk.ari_user, asterisk.ari_password)}
    async with aiohttp.ClientSession(headers=headers) as session:
        ari = RawAri(asterisk, session)
        await ari.connect(asterisk.app_name)
        try:
            yield ari
        finally:
            await ari.close()


async def test_caller_reaches_stasis_dtmf_and_our_hangup(
    asterisk: AsteriskInstance,
    raw_ari: RawAri,
    ari_observer: AriObserver,
    sip_caller: Callable[..., SipCaller],
) -> None:
    caller = sip_caller("7001", caller="5551234", digits=[(1.0, "1")], max_duration=60)
    caller.start()
    start = await raw_ari.next_event("StasisStart")
    ch = start["channel"]
    assert start["args"] == ["q7001"]
    assert ch["caller"]["number"] == "5551234"
    assert ch["dialplan"]["exten"] == "7001"
    await raw_ari.rest("POST", f"/channels/{ch['id']}/answer")
    await caller.wait_answered(30)
    dtmf = await raw_ari.next_event("ChannelDtmfReceived")
    assert dtmf["digit"] == "1"
    # The independent observer saw it too.
    await ari_observer.wait_type("ChannelDtmfReceived", channel_id=ch["id"], digit="1")
    # Prompts copied into the run dir play as sound:<prompts_dir>/<name>; MOH works.
    wav = asterisk.run_dir / "prompts" / "rig-beep.wav"
    sox = await asyncio.create_subprocess_exec(
        "sox", "-n", "-r", "8000", "-c", "1", "-b", "16", str(wav), "synth", "0.3", "sine", "440"
    )  # fmt: skip
    assert await sox.wait() == 0
    await raw_ari.rest("POST", f"/channels/{ch['id']}/moh")
    pb = await raw_ari.rest(
        "POST",
        f"/channels/{ch['id']}/play",
        params={"media": f"sound:{asterisk.prompts_dir}/rig-beep"},
    )
    finished = await raw_ari.next_event("PlaybackFinished")
    assert finished["playback"]["id"] == pb["id"]
    assert finished["playback"]["state"] == "done"
    hung_up = time.time()
    await raw_ari.rest("DELETE", f"/channels/{ch['id']}")
    result = await caller.wait(30)
    assert result.answered
    assert result.hung_up_by == "them", caller.describe()
    assert result.bye_received_at is not None and result.bye_received_at >= hung_up - 1
    assert result.exit_code == 0, caller.describe()
    await raw_ari.next_event("StasisEnd")


async def test_anonymous_caller_and_caller_hangup(
    raw_ari: RawAri, sip_caller: Callable[..., SipCaller]
) -> None:
    caller = sip_caller("7002", caller=None, hangup_after=1.0, send_info_at=0.3)
    caller.start()
    start = await raw_ari.next_event("StasisStart")
    assert start["args"] == ["q7002"]
    assert start["channel"]["caller"]["number"] in ("anonymous", "")
    await raw_ari.rest("POST", f"/channels/{start['channel']['id']}/answer")
    result = await caller.wait(30)
    assert result.answered and result.hung_up_by == "us", caller.describe()
    assert result.exit_code == 0, caller.describe()
    await raw_ari.next_event("StasisEnd")


async def test_unknown_number_is_rejected(sip_caller: Callable[..., SipCaller]) -> None:
    caller = sip_caller("5559999", max_duration=20)
    caller.start()
    result = await caller.wait(40)
    assert not result.answered
    assert result.rejected_with is not None and result.rejected_with >= 400, caller.describe()


async def test_originate_to_carrier_answered_and_busy(
    asterisk: AsteriskInstance,
    raw_ari: RawAri,
    ari_observer: AriObserver,
    sip_carrier: Callable[..., SipCarrier],
) -> None:
    carrier = sip_carrier(behaviours=[CallBehaviour(answer_after=0.3, digits=[(0.5, "1")]), BUSY])
    ch = await raw_ari.rest(
        "POST",
        "/channels",
        json={
            "endpoint": "PJSIP/5557654@carrier",
            "app": asterisk.app_name,
            "appArgs": "callback",
            "callerId": "Support <5550100>",
            "timeout": 30,
        },
    )
    (call,) = await carrier.wait_for_calls(1)
    assert call.dialled == "5557654"
    assert call.from_number == "5550100"
    start = await raw_ari.next_event("StasisStart")
    assert start["channel"]["id"] == ch["id"]
    dtmf = await raw_ari.next_event("ChannelDtmfReceived")
    assert dtmf["digit"] == "1"
    await raw_ari.rest("DELETE", f"/channels/{ch['id']}")
    await carrier.wait_for_calls(1, predicate=lambda c: c.bye_received_at is not None)

    # Second call: busy → Dial BUSY, and the channel is destroyed with cause 17.
    ch2 = await raw_ari.rest(
        "POST",
        "/channels",
        json={"endpoint": "PJSIP/5557655@carrier", "app": asterisk.app_name, "timeout": 30},
    )
    dial = await ari_observer.wait_for(
        lambda e: (
            e.get("type") == "Dial"
            and (e.get("peer") or {}).get("id") == ch2["id"]
            and e.get("dialstatus") == "BUSY"
        )
    )
    assert dial["dialstatus"] == "BUSY"
    destroyed = await ari_observer.wait_type("ChannelDestroyed", channel_id=ch2["id"])
    assert destroyed["cause"] == 17
    # sipp's trace may trail Asterisk by a moment: wait on it, never read it once.
    calls = await carrier.wait_for_calls(2, predicate=lambda c: c.ended)
    assert [c.dialled for c in calls] == ["5557654", "5557655"]
    assert calls[1].rejected_with == 486


async def test_originate_to_agent_with_header_and_dtmf(
    asterisk: AsteriskInstance,
    raw_ari: RawAri,
    sip_phone: Callable[..., SipPhone],
) -> None:
    phone = sip_phone("agent1", behaviours=CallBehaviour(answer_after=0.5, digits=[(0.5, "1")]))
    ch = await raw_ari.rest(
        "POST",
        "/channels",
        params={
            "endpoint": "PJSIP/agent1",
            "app": asterisk.app_name,
            "callerId": "Callback <5551234>",
            "timeout": "30",
        },
        json={"variables": {"PJSIP_HEADER(add,X-Work-Type)": "callback"}},
    )
    (call,) = await phone.wait_for_calls(1)
    assert call.header("X-Work-Type") == "callback"
    assert call.from_name == "Callback"
    assert call.from_number == "5551234"
    start = await raw_ari.next_event("StasisStart")
    assert start["channel"]["id"] == ch["id"]
    dtmf = await raw_ari.next_event("ChannelDtmfReceived")
    assert dtmf["digit"] == "1"
    await raw_ari.rest("DELETE", f"/channels/{ch['id']}")
    (call,) = await phone.wait_for_calls(1, predicate=lambda c: c.bye_received_at is not None)
    assert call.answered_at is not None


async def test_phone_behaviours_per_call(
    asterisk: AsteriskInstance,
    raw_ari: RawAri,
    ari_observer: AriObserver,
    sip_phone: Callable[..., SipPhone],
) -> None:
    """Call 1 rings until Asterisk's timeout (CANCEL), call 2 is answered and the
    phone hangs up itself."""
    phone = sip_phone(
        "agent2",
        behaviours=[
            CallBehaviour(answer_after="never"),
            CallBehaviour(answer_after=0, hangup_after=0.5),
        ],
    )
    ch1 = await raw_ari.rest(
        "POST", "/channels",
        json={"endpoint": "PJSIP/agent2", "app": asterisk.app_name, "timeout": 2},
    )  # fmt: skip
    await ari_observer.wait_type("ChannelDestroyed", channel_id=ch1["id"])
    (c1,) = await phone.wait_for_calls(1, predicate=lambda c: c.cancelled_at is not None)
    assert c1.answered_at is None
    ch2 = await raw_ari.rest(
        "POST", "/channels",
        json={"endpoint": "PJSIP/agent2", "app": asterisk.app_name, "timeout": 10},
    )  # fmt: skip
    # StasisStart goes to the app owning the channel only, not to subscribeAll observers.
    start = await raw_ari.next_event("StasisStart")
    assert start["channel"]["id"] == ch2["id"]
    await ari_observer.wait_type("ChannelDestroyed", channel_id=ch2["id"])
    calls = await phone.wait_for_calls(2)
    assert calls[1].answered_at is not None and calls[1].bye_sent_at is not None


async def test_registering_agent(
    asterisk: AsteriskInstance,
    raw_ari: RawAri,
    sip_phone: Callable[..., SipPhone],
) -> None:
    phone = sip_phone(asterisk.reg_user, behaviours=CallBehaviour(answer_after=0.2))
    await phone.wait_registered()
    ch = await raw_ari.rest(
        "POST", "/channels",
        json={"endpoint": f"PJSIP/{asterisk.reg_user}", "app": asterisk.app_name, "timeout": 20},
    )  # fmt: skip
    (call,) = await phone.wait_for_calls(1)
    start = await raw_ari.next_event("StasisStart")
    assert start["channel"]["id"] == ch["id"]
    await raw_ari.rest("DELETE", f"/channels/{ch['id']}")
    await phone.wait_for_calls(1, predicate=lambda c: c.bye_received_at is not None)
    assert call.dialled == asterisk.reg_user


async def test_restart_keeps_ports_and_credentials() -> None:
    """A separate instance (the session one stays untouched); also proves two
    instances run side by side from one rootfs."""
    inst = start_asterisk(agents=("agent1",))
    try:
        before = (inst.sip_port, inst.http_port, inst.ari_user, inst.ari_password)
        old_pid = inst.pid
        inst.restart()
        assert inst.pid != old_pid
        assert (inst.sip_port, inst.http_port, inst.ari_user, inst.ari_password) == before
        assert "Asterisk" in inst.cli("core show version")
        headers = {"Authorization": inst.auth_header()}
        async with (
            aiohttp.ClientSession(headers=headers) as s,
            s.get(f"{inst.ari_url}/ari/asterisk/info") as resp,
        ):
            assert resp.status == 200
    finally:
        finish_asterisk(inst)
    assert not inst.running()


async def test_asterisk_hangs_up_during_caller_pause_and_dtmf(
    raw_ari: RawAri, sip_caller: Callable[..., SipCaller]
) -> None:
    """Asterisk's BYE is taken at any moment: while a digit plays or mid-pause."""
    caller = sip_caller("7003", digits=[(0.0, "5"), (0.05, "#"), (20.0, "*")], max_duration=60)
    caller.start()
    start = await raw_ari.next_event("StasisStart")
    cid = start["channel"]["id"]
    await raw_ari.rest("POST", f"/channels/{cid}/answer")
    await raw_ari.next_event("ChannelDtmfReceived")
    await raw_ari.rest("DELETE", f"/channels/{cid}")
    t0 = time.monotonic()
    result = await caller.wait(15)
    assert time.monotonic() - t0 < 10, "sipp waited out its pause instead of taking the BYE"
    assert result.hung_up_by == "them" and result.exit_code == 0, caller.describe()


async def test_caller_gives_up_before_answer(
    raw_ari: RawAri, sip_caller: Callable[..., SipCaller]
) -> None:
    caller = sip_caller("7004", max_duration=2)
    caller.start()
    await raw_ari.next_event("StasisStart")  # never answered by us
    result = await caller.wait(30)
    assert not result.answered
    assert result.rejected_with == 487, caller.describe()
    await raw_ari.next_event("StasisEnd")


async def test_carrier_takes_concurrent_callbacks(
    asterisk: AsteriskInstance, raw_ari: RawAri, sip_carrier: Callable[..., SipCarrier]
) -> None:
    carrier = sip_carrier(behaviours=CallBehaviour(answer_after=0.5, hangup_after=1.0))
    numbers = ["5550001", "5550002", "5550003"]
    for n in numbers:
        await raw_ari.rest(
            "POST", "/channels",
            json={"endpoint": f"PJSIP/{n}@carrier", "app": asterisk.app_name, "timeout": 20},
        )  # fmt: skip
    calls = await carrier.wait_for_calls(3, predicate=lambda c: c.bye_sent_at is not None)
    assert sorted(c.dialled for c in calls) == numbers
    assert all(c.answered_at is not None for c in calls)
