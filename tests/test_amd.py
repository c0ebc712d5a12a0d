"""Answering-machine detection on callbacks, on the real Asterisk with real SIP: the
carrier's "customer" answers and talks (sipp streams speech rendered at run time), AMD()
in the [ivr-amd] context classifies it, and the queue's ``answering_machine`` decides.

DIDs/queues 76xx. The config keys' checks at the end are fast-tier (no Asterisk)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ivr.app import Service
from ivr.config import ConfigError, QueueConfig
from ivr.domain.agents import AgentStatus
from ivr.domain.items import State
from ivr.flows.customer import amd_wait
from rig.sandbox import AsteriskInstance
from tests.peers import CallBehaviour, SipCaller, SipPhone
from tests.peers.amd import HUMAN_TEXT, MACHINE_TEXT, AmdCarrier, Greeting, duration, speech
from tests.support.config import CB_QUEUE, agents_cfg, write
from tests.support.observer import AriObserver
from tests.support.observing import bridged, is_playback, playback_chan, ts
from tests.support.store import stored_item
from tests.support.waiting import until

ACCEPT = CallBehaviour(answer_after=0.3, digits=[(0.6, "1")])


async def request_callback(sip_caller: Callable[..., SipCaller], did: str, number: str) -> None:
    """A caller hears the offer, presses 1 and is hung up on."""
    c = sip_caller(did, caller=number, digits=[(1.6, "1")], max_duration=30)
    c.start()
    result = await c.wait(30)
    assert result.hung_up_by == "them", c.describe()


def customer_channels(obs: AriObserver, inst: AsteriskInstance) -> list[str]:
    """Our callbacks' customer channels, in the order they were created."""
    prefix = f"{inst.app_name}-customer-"
    seen: list[str] = []
    for e in obs.find(lambda e: e.get("type") == "ChannelCreated"):
        cid = str(e["channel"]["id"])
        if cid.startswith(prefix) and cid not in seen:
            seen.append(cid)
    return seen


def amd_ran(obs: AriObserver, chan: str) -> bool:
    return bool(obs.find(lambda e: e.get("type") == "ChannelDialplan"
                         and e.get("dialplan_app") == "AMD" and e["channel"]["id"] == chan))


def machines(svc: Service) -> int:
    assert svc.ctx is not None
    return svc.ctx.counters.values.get("answering_machines", 0)


@pytest.fixture
def voices(tmp_path: Path) -> dict[str, Path]:
    """What the customers' phones say, rendered now (never committed)."""
    return {
        "human": speech(HUMAN_TEXT, tmp_path / "human.ulaw", silence_after=3.0),
        "machine": speech(MACHINE_TEXT, tmp_path / "machine.ulaw", silence_after=3.0),
    }


@pytest.fixture
def amd_carrier(
    asterisk: AsteriskInstance,
) -> Iterator[Callable[[list[CallBehaviour]], AmdCarrier]]:
    made: list[AmdCarrier] = []

    def make(behaviours: list[CallBehaviour]) -> AmdCarrier:
        c = AmdCarrier(asterisk, behaviours)
        made.append(c)
        c.start()
        return c

    yield make
    for c in made:
        c.stop()


async def test_machine_is_a_failed_attempt_and_retried_later(
    asterisk: AsteriskInstance, ari_observer: AriObserver,
    sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone], amd_carrier: Callable[..., AmdCarrier],
    voices: dict[str, Path],
) -> None:
    """answering_machine: retry. A voicemail greeting: the attempt counts (reason
    "machine"), the agent hears the usual notice and is never bridged to the machine;
    after retry_interval the callback is dialled again (a person answers: connected)."""
    svc = await service({"q7601": {**CB_QUEUE, "answering_machine": "retry",
                                   "retry_interval": "3s", "max_attempts": 3}},
                        agents_cfg("agent1", queue="q7601"), not_ready=("agent1",))
    phone = sip_phone("agent1", behaviours=ACCEPT)
    carrier = amd_carrier([
        Greeting(answer_after=0.3, audio=voices["machine"]),
        Greeting(answer_after=0.3, audio=voices["human"], hangup_after=4.0),
    ])
    await request_callback(sip_caller, "7601", "2015550761")
    svc.board.set_ready("agent1", True)

    [first] = await carrier.wait_for_calls(1, 30, lambda c: c.ended)
    assert first.bye_received_at is not None  # we hung up on the machine
    await until(lambda: machines(svc) == 1, timeout=10)
    [item] = svc.engine.items("q7601")
    assert item.attempts == 1 and item.state in (State.CALLBACK_PENDING, State.OFFERED)
    failed = [h for h in item.history if h.event == "dial_failed"]
    assert [h.detail["reason"] for h in failed] == ["machine"]
    assert float(failed[0].detail["retry_at"]) >= failed[0].at + 3.0 - 0.01
    machine_chan = customer_channels(ari_observer, asterisk)[0]
    assert amd_ran(ari_observer, machine_chan)
    assert bridged(ari_observer, machine_chan) == []  # the agent never met the machine
    notice = await ari_observer.wait_for(lambda e: is_playback(
        e, "PlaybackFinished", None, "en/callback_failed"))
    assert playback_chan(notice) != machine_chan  # played to the agent

    calls = await carrier.wait_for_calls(2, 40, lambda c: c.ended)
    assert first.bye_received_at is not None
    assert calls[1].invited_at - first.bye_received_at >= 3.0 - 0.5  # retry_interval
    human_chan = customer_channels(ari_observer, asterisk)[1]
    await until(lambda: len(bridged(ari_observer, human_chan)) == 1, timeout=20)
    await until(lambda: not svc.engine.items("q7601"), timeout=20)
    stored = await stored_item(svc, "2015550761")
    assert stored.state == State.DONE and stored.attempts == 2
    assert [h.event for h in stored.history if h.event.startswith(("dial", "callback_c"))] \
        == ["dial_started", "dial_failed", "dial_started", "callback_connected"]
    assert machines(svc) == 1
    assert len(phone.calls()) == 2


async def test_machine_gets_the_message_and_the_callback_closes(
    asterisk: AsteriskInstance, ari_observer: AriObserver,
    sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone], amd_carrier: Callable[..., AmdCarrier],
    voices: dict[str, Path],
) -> None:
    """answering_machine: message. The machine hears callback_machine_message once its
    greeting is over (after the beep, not over the greeting); the callback closes
    (cancelled, reason machine_message) and is never dialled again."""
    svc = await service({"q7602": {**CB_QUEUE, "answering_machine": "message",
                                   "retry_interval": "1s"}},
                        agents_cfg("agent1", queue="q7602"), not_ready=("agent1",))
    phone = sip_phone("agent1", behaviours=ACCEPT)
    carrier = amd_carrier([Greeting(answer_after=0.3, audio=voices["machine"])])
    await request_callback(sip_caller, "7602", "2015550762")
    svc.board.set_ready("agent1", True)

    [answered] = await carrier.wait_for_calls(1, 30, lambda c: c.answered_at is not None)
    started = await ari_observer.wait_for(lambda e: is_playback(
        e, "PlaybackStarted", None, "en/callback_machine_message"), timeout=30)
    chan = playback_chan(started)
    assert chan == customer_channels(ari_observer, asterisk)[0]  # to the customer's line
    assert amd_ran(ari_observer, chan) and bridged(ari_observer, chan) == []
    assert answered.answered_at is not None
    greeting = duration(voices["machine"]) - 3.0
    assert ts(started) >= answered.answered_at + greeting - 0.5  # after the greeting
    finished = await ari_observer.wait_for(lambda e: is_playback(
        e, "PlaybackFinished", chan, "en/callback_machine_message"), timeout=20)
    assert finished["playback"]["state"] == "done"  # heard to the end
    [done] = await carrier.wait_for_calls(1, 20, lambda c: c.ended)
    assert done.bye_received_at is not None and done.bye_received_at >= ts(finished) - 0.5
    await until(lambda: not svc.engine.items("q7602"), timeout=10)
    stored = await stored_item(svc, "2015550762")
    assert stored.state == State.CANCELLED and stored.attempts == 1
    assert stored.history[-1].event == "cancelled"
    assert stored.history[-1].detail == {"reason": "machine_message"}
    assert machines(svc) == 1
    await until(lambda: svc.board.get("agent1").status == AgentStatus.AVAILABLE, timeout=10)
    for _ in range(3):  # nothing left to dial
        await svc.dispatcher.dispatch_pass()
    assert len(carrier.calls()) == 1 and len(phone.calls()) == 1


async def test_a_person_is_connected_to_the_agent(
    asterisk: AsteriskInstance, ari_observer: AriObserver,
    sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone], amd_carrier: Callable[..., AmdCarrier],
    voices: dict[str, Path],
) -> None:
    """A short "Hello?" then silence is a person (HUMAN): bridged to the agent, done."""
    svc = await service({"q7603": {**CB_QUEUE, "answering_machine": "message"}},
                        agents_cfg("agent1", queue="q7603"), not_ready=("agent1",))
    sip_phone("agent1", behaviours=ACCEPT)
    carrier = amd_carrier([Greeting(answer_after=0.3, audio=voices["human"],
                                    hangup_after=5.0)])
    await request_callback(sip_caller, "7603", "2015550763")
    svc.board.set_ready("agent1", True)

    [call] = await carrier.wait_for_calls(1, 30, lambda c: c.answered_at is not None)
    chan = customer_channels(ari_observer, asterisk)[0]
    await until(lambda: len(bridged(ari_observer, chan)) == 1, timeout=20)
    entered = bridged(ari_observer, chan)[0]
    assert amd_ran(ari_observer, chan)
    assert call.answered_at is not None and ts(entered) - call.answered_at < 6.0
    [done] = await carrier.wait_for_calls(1, 20, lambda c: c.ended)
    assert done.bye_sent_at is not None  # the customer hung up after talking
    await until(lambda: not svc.engine.items("q7603"), timeout=10)
    stored = await stored_item(svc, "2015550763")
    assert stored.state == State.DONE and stored.attempts == 1
    assert machines(svc) == 0
    assert not ari_observer.find(lambda e: is_playback(
        e, "PlaybackStarted", chan, "en/callback_machine_message"))


# ---------------------------------------------------------------------- config (fast tier)

def _queue(tmp_path: Path, **keys: Any) -> QueueConfig:
    cfg = write(tmp_path, ari={"url": "http://127.0.0.1:8088", "user": "u", "password": "p"},
                asterisk_dir="/x", queues={"support": {"did": "5550100", "max_waiting": 3,
                                                       **keys}})
    return cfg.queues["support"]


def test_answering_machine_is_off_by_default(tmp_path: Path) -> None:
    q = _queue(tmp_path)
    assert q.answering_machine == "off" and q.amd_options == ""


@pytest.mark.parametrize("mode", ["off", "retry", "message", "Message"])
def test_answering_machine_modes(tmp_path: Path, mode: str) -> None:
    assert _queue(tmp_path, answering_machine=mode).answering_machine == mode.lower()


@pytest.mark.parametrize(("keys", "named"), [
    ({"answering_machine": "voicemail"}, "queues.support.answering_machine"),
    ({"answering_machine": True}, "queues.support.answering_machine"),
    ({"amd_options": "2500,abc"}, "queues.support.amd_options"),
    ({"amd_options": "2500,-1"}, "queues.support.amd_options"),
    ({"amd_options": "1,2,3,4,5,6,7,8,9,10"}, "queues.support.amd_options"),
    ({"amd_options": "${EVIL}"}, "queues.support.amd_options"),
])
def test_bad_answering_machine_keys_are_named(tmp_path: Path, keys: dict[str, Any],
                                              named: str) -> None:
    with pytest.raises(ConfigError) as err:
        _queue(tmp_path, **keys)
    assert named in str(err.value)


def test_amd_options_and_the_wait_for_the_result(tmp_path: Path) -> None:
    q = _queue(tmp_path, answering_machine="retry", amd_options="2000, 1500,,7000")
    assert q.amd_options == "2000,1500,,7000"
    assert amd_wait(q) == pytest.approx(7.0 + 5.0)
    assert amd_wait(_queue(tmp_path, answering_machine="retry")) == pytest.approx(5.0 + 5.0)
    # message: also the wait for the end of the greeting
    assert amd_wait(_queue(tmp_path, answering_machine="message")) > 20.0
