"""The agent's half on the real Asterisk: sipp softphones as agents, sipp as the carrier
that receives the callbacks (SPEC R7-R11, R14, R15)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ivr.app import Service
from ivr.domain.agents import AgentStatus
from ivr.domain.items import Kind, State
from tests.peers import BUSY, RING_FOREVER, CallBehaviour, ReceivedCall, SipCaller, SipPhone
from tests.support.config import CB_QUEUE, agents_cfg
from tests.support.observer import AriObserver, Event
from tests.support.observing import bridged, caller_channel, is_playback, playbacks, ts
from tests.support.store import stored_item
from tests.support.waiting import until

ACCEPT = CallBehaviour(answer_after=0.3, digits=[(0.6, "1")])
DECLINE = CallBehaviour(answer_after=0.3, digits=[(0.6, "2")])
SILENT = CallBehaviour(answer_after=0.3)


def status(svc: Service, agent: str) -> AgentStatus:
    return svc.board.get(agent).status


async def nothing_left(svc: Service) -> None:
    """No channel of ours in Asterisk and no bridge: nothing half-up after the flows."""
    await until(lambda: not svc.switchboard or not svc.switchboard.sessions, timeout=20)
    channels = await svc.ari.list_channels()
    assert [c.name for c in channels if c.app_data.startswith(svc.cfg.ari.app)] == []
    assert await svc.ari.list_bridges() == []


async def request_callback(sip_caller: Callable[..., SipCaller], obs: AriObserver, did: str,
                           number: str) -> str:
    """A caller waits, hears the offer, presses 1, is hung up on; returns the channel."""
    c = sip_caller(did, caller=number, digits=[(1.6, "1")], max_duration=30)
    c.start()
    chan, _ = await caller_channel(obs, number)
    result = await c.wait(30)
    assert result.hung_up_by == "them", c.describe()
    return chan


# ---------------------------------------------------------------------- inbound (R9)


async def test_inbound_caller_is_bridged_to_the_free_agent(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone],
) -> None:
    svc = await service({"q7201": {"max_waiting": 5, "wrap_up": "2s"}},
                        agents_cfg("agent1", queue="q7201"))
    phone = sip_phone("agent1", behaviours=CallBehaviour(answer_after=0.5, hangup_after=3.0))
    caller = sip_caller("7201", caller="2015550201", caller_name="Ada", max_duration=30)
    caller.start()
    chan, _ = await caller_channel(ari_observer, "2015550201")
    [call] = await phone.wait_for_calls(1, 20)
    assert call.header("X-Work-Type") == "inbound"
    assert call.from_number == "+12015550201" and call.from_name == "Ada"
    await until(lambda: len(bridged(ari_observer, chan)) == 1)
    bridge_id = bridged(ari_observer, chan)[0]["bridge"]["id"]
    members = ari_observer.find(lambda e: e.get("type") == "ChannelEnteredBridge"
                                and e["bridge"]["id"] == bridge_id)
    assert len(members) == 2  # caller and agent in one bridge: the audio path
    result = await caller.wait(30)
    assert result.hung_up_by == "them"  # the agent hung up; we tore the caller down
    [done] = await phone.wait_for_calls(1, 10, lambda c: c.ended)
    assert done.bye_sent_at is not None and result.bye_received_at is not None
    assert result.bye_received_at >= done.bye_sent_at - 0.5
    stored = await stored_item(svc, "2015550201")
    assert stored.state == State.CONNECTED
    # Wrap-up after the call, then available again by itself.
    await until(lambda: status(svc, "agent1") == AgentStatus.WRAP_UP, timeout=10)
    await until(lambda: status(svc, "agent1") == AgentStatus.AVAILABLE, timeout=10)
    await nothing_left(svc)


async def test_offer_stops_when_an_agent_takes_the_caller(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone],
) -> None:
    """R3: connected to an agent while the offer plays -> the offer stops at once."""
    svc = await service({"q7202": {"max_waiting": None, "max_ewt": "30s",
                                   "first_offer_after": "1s", "repeat_offer_every": "60s"}},
                        agents_cfg("agent1", queue="q7202"), not_ready=("agent1",))
    phone = sip_phone("agent1", behaviours=CallBehaviour(answer_after=0.2, hangup_after=2.0))
    caller = sip_caller("7202", caller="2015550202", max_duration=30)
    caller.start()
    chan, _ = await caller_channel(ari_observer, "2015550202")
    await until(lambda: bool(playbacks(ari_observer, chan, "en/offer")))
    svc.board.set_ready("agent1", True)
    stopped = await ari_observer.wait_for(
        lambda e: is_playback(e, "PlaybackFinished", chan, "en/offer"))
    started = playbacks(ari_observer, chan, "en/offer")[0]
    assert ts(stopped) - ts(started) < 7.0  # the 8.8 s offer was cut short
    await phone.wait_for_calls(1, 10, lambda c: c.answered_at is not None)
    await until(lambda: len(bridged(ari_observer, chan)) == 1)
    assert (await caller.wait(30)).hung_up_by == "them"
    await nothing_left(svc)


async def test_caller_hangs_up_while_agent_rings(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone],
) -> None:
    svc = await service({"q7203": {"max_waiting": 5, "ring_timeout": "20s"}},
                        agents_cfg("agent1", queue="q7203"))
    phone = sip_phone("agent1", behaviours=RING_FOREVER)
    caller = sip_caller("7203", caller="2015550203", hangup_after=2.0, max_duration=30)
    caller.start()
    await phone.wait_for_calls(1, 20)
    assert (await caller.wait(30)).hung_up_by == "us"
    await phone.wait_for_calls(1, 20, lambda c: c.cancelled_at is not None)
    assert (await stored_item(svc, "2015550203")).state == State.ABANDONED
    await until(lambda: status(svc, "agent1") == AgentStatus.AVAILABLE)
    await nothing_left(svc)


async def test_no_answer_moves_on_and_sets_agent_not_ready(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone],
) -> None:
    svc = await service({"q7204": {"max_waiting": 5, "ring_timeout": "2s"}},
                        agents_cfg("agent1", "agent2", queue="q7204"), not_ready=("agent2",))
    silent = sip_phone("agent1", behaviours=RING_FOREVER)
    other = sip_phone("agent2", behaviours=CallBehaviour(answer_after=0.3, hangup_after=1.0))
    caller = sip_caller("7204", caller="2015550204", max_duration=30)
    caller.start()
    await silent.wait_for_calls(1, 20)
    await until(lambda: status(svc, "agent1") == AgentStatus.NOT_READY, timeout=15)
    svc.board.set_ready("agent2", True)
    await other.wait_for_calls(1, 20, lambda c: c.answered_at is not None)
    assert (await caller.wait(30)).hung_up_by == "them"
    assert len(silent.calls()) == 1
    await nothing_left(svc)


# ---------------------------------------------------------------------- callbacks (R7, R8)


async def test_full_direct_callback(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone], sip_carrier: Callable[..., Any],
) -> None:
    """The source document end to end: press 1, hang up; the agent frees up; the agent's
    phone rings marked as a callback; the agent presses 1; only then is the customer
    dialled with the queue's caller id; answer -> bridged."""
    svc = await service({"q7205": CB_QUEUE}, agents_cfg("agent1", queue="q7205"),
                        not_ready=("agent1",))
    phone = sip_phone("agent1", behaviours=CallBehaviour(answer_after=0.3,
                                                         digits=[(1.0, "1")]))
    carrier = sip_carrier(behaviours=CallBehaviour(answer_after=0.5, hangup_after=2.0))
    await request_callback(sip_caller, ari_observer, "7205", "2015550205")
    assert carrier.calls() == [] and phone.calls() == []
    svc.board.set_ready("agent1", True)

    [offer] = await phone.wait_for_calls(1, 20, lambda c: c.answered_at is not None)
    assert offer.header("X-Work-Type") == "callback"
    assert offer.from_name is not None and "CALLBACK" in offer.from_name.upper()
    assert offer.from_number == "+12015550205"
    agent_chan = await _agent_channel(ari_observer, offer)
    accept = await ari_observer.wait_type("ChannelDtmfReceived", channel_id=agent_chan)
    assert accept["digit"] == "1"
    # The preview played (callback intro, the number as digits) before the accept.
    assert playbacks(ari_observer, agent_chan, "en/preview_intro")

    [dialled] = await carrier.wait_for_calls(1, 20)
    assert dialled.dialled == "+12015550205"
    assert dialled.from_number == "5550100"  # the queue's caller id
    assert dialled.invited_at >= ts(accept) - 0.05  # nothing dialled before the 1
    await until(lambda: len(bridged(ari_observer, agent_chan)) == 1)
    [done] = await carrier.wait_for_calls(1, 20, lambda c: c.ended)
    assert done.bye_sent_at is not None  # the customer hung up ...
    [agent_call] = await phone.wait_for_calls(1, 20, lambda c: c.ended)
    assert agent_call.bye_received_at is not None  # ... and we hung up the agent
    stored = await stored_item(svc, "2015550205")
    assert stored.state == State.DONE and stored.attempts == 1
    await nothing_left(svc)


async def _agent_channel(obs: AriObserver, call: ReceivedCall) -> str:
    ev = await obs.wait_for(
        lambda e: e.get("type") == "ChannelStateChange" and e["channel"]["state"] == "Up"
        and str(e["channel"]["name"]).startswith("PJSIP/agent")
        and e["channel"]["connected"]["number"] == call.from_number
    )
    return str(ev["channel"]["id"])


async def test_decline_goes_to_next_agent_and_silent_agent_goes_not_ready(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone], sip_carrier: Callable[..., Any],
) -> None:
    svc = await service({"q7206": CB_QUEUE}, agents_cfg("agent1", "agent2", "agent3",
                                                        queue="q7206"),
                        not_ready=("agent1", "agent2", "agent3"))
    decliner = sip_phone("agent1", behaviours=DECLINE)
    silent = sip_phone("agent2", behaviours=SILENT)
    taker = sip_phone("agent3", behaviours=ACCEPT)
    carrier = sip_carrier(behaviours=CallBehaviour(answer_after=0.3, hangup_after=1.0))
    await request_callback(sip_caller, ari_observer, "7206", "2015550206")
    d = svc.board
    d.set_ready("agent1", True)
    await decliner.wait_for_calls(1, 20)
    # agent2 becomes free while agent1 previews; agent1's 2 sends the item to agent2.
    d.set_ready("agent2", True)
    await decliner.wait_for_calls(1, 20, lambda c: c.ended)
    await silent.wait_for_calls(1, 20)
    assert carrier.calls() == []  # a decline dials nothing
    item = next(i for i in svc.engine.items("q7206") if i.kind == Kind.CALLBACK)
    assert svc.engine.position(item.id) == 1 and item.attempts == 0  # not an attempt
    assert status(svc, "agent1") == AgentStatus.AVAILABLE
    d.set_ready("agent3", True)
    # agent2 never answers the preview: preview_timeout, not-ready, and agent3 gets it
    # (agent1, free too, declined it and is not asked again while agent3 can take it).
    await silent.wait_for_calls(1, 20, lambda c: c.ended)
    await until(lambda: status(svc, "agent2") == AgentStatus.NOT_READY, timeout=20)
    await taker.wait_for_calls(1, 20, lambda c: c.answered_at is not None)
    [dialled] = await carrier.wait_for_calls(1, 20)
    assert dialled.dialled == "+12015550206"
    assert len(decliner.calls()) == 1 and len(silent.calls()) == 1
    await until(lambda: svc.engine.items("q7206") == [])
    stored = await stored_item(svc, "2015550206")
    assert stored.state == State.DONE
    # Every step is in the item's stored history, with who did what.
    steps = [(h.event, h.detail.get("agent", "")) for h in stored.history
             if h.event not in ("arrived", "converted_to_callback")]
    assert steps == [("callback_offered", ""),  # the caller heard the offer
                     ("offered", "agent1"), ("declined", "agent1"),
                     ("offered", "agent2"), ("offer_timed_out", "agent2"),
                     ("offered", "agent3"), ("dial_started", "agent3"),
                     ("callback_connected", "agent3")], steps
    await nothing_left(svc)


async def test_customer_no_answer_then_busy_retries_then_fails(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone], sip_carrier: Callable[..., Any],
) -> None:
    """R10: each failed attempt keeps the place, waits retry_interval; max_attempts ->
    failed. The agent hears a short notice each time and is freed."""
    svc = await service({"q7207": {**CB_QUEUE, "max_attempts": 2, "retry_interval": "3s"}},
                        agents_cfg("agent1", queue="q7207"), not_ready=("agent1",))
    phone = sip_phone("agent1", behaviours=ACCEPT)
    carrier = sip_carrier(behaviours=[RING_FOREVER, BUSY])
    await request_callback(sip_caller, ari_observer, "7207", "2015550207")
    svc.board.set_ready("agent1", True)
    calls = await carrier.wait_for_calls(2, 60, lambda c: c.ended)
    assert calls[0].cancelled_at is not None  # no answer within dial_timeout (5 s)
    assert calls[1].rejected_with == 486
    assert calls[1].invited_at - calls[0].cancelled_at >= 3.0 - 0.5  # retry_interval
    await until(lambda: not svc.engine.items("q7207"), timeout=20)
    stored = await stored_item(svc, "2015550207")
    assert stored.state == State.FAILED and stored.attempts == 2
    assert len(phone.calls()) == 2

    def notices() -> list[Event]:
        return ari_observer.find(lambda e: e.get("type") == "PlaybackFinished" and str(
            e["playback"]["media_uri"]).endswith("en/callback_failed"))

    await until(lambda: len(notices()) == 2, timeout=20)
    assert all(n["playback"]["state"] == "done" for n in notices())  # heard to the end
    await until(lambda: status(svc, "agent1") == AgentStatus.AVAILABLE)
    await nothing_left(svc)


async def test_order_two_callbacks_and_one_inbound_two_agents(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone], sip_carrier: Callable[..., Any],
) -> None:
    svc = await service({"q7208": CB_QUEUE}, agents_cfg("agent1", "agent2", queue="q7208"),
                        not_ready=("agent1", "agent2"))
    talk = CallBehaviour(answer_after=0.3, digits=[(0.6, "1")], hangup_after=2.5)
    p1 = sip_phone("agent1", behaviours=talk)
    p2 = sip_phone("agent2", behaviours=talk)
    carrier = sip_carrier(behaviours=CallBehaviour(answer_after=0.3))
    await request_callback(sip_caller, ari_observer, "7208", "2015550281")
    live = sip_caller("7208", caller="2015550282", max_duration=60)
    live.start()
    await caller_channel(ari_observer, "2015550282")
    await request_callback(sip_caller, ari_observer, "7208", "2015550283")
    queue = svc.engine.items("q7208")
    assert [(i.number, i.kind) for i in queue] == [
        ("+12015550281", Kind.CALLBACK), ("+12015550282", Kind.INBOUND),
        ("+12015550283", Kind.CALLBACK)]
    svc.board.set_ready("agent1", True)
    svc.board.set_ready("agent2", True)
    await until(lambda: len(p1.calls()) + len(p2.calls()) == 3, timeout=60)
    # One pass, two free agents: the longest idle (agent1) gets the earliest item, agent2
    # the next; the third goes out only when one of them is free again.
    first1, first2 = p1.calls()[0], p2.calls()[0]
    assert (first1.from_number, first1.header("X-Work-Type")) == ("+12015550281", "callback")
    assert (first2.from_number, first2.header("X-Work-Type")) == ("+12015550282", "inbound")
    [third] = [c for c in p1.calls() + p2.calls() if c.from_number == "+12015550283"]
    assert third.invited_at > max(first1.invited_at, first2.invited_at)
    await carrier.wait_for_calls(2, 30)
    assert [c.dialled for c in carrier.calls()] == ["+12015550281", "+12015550283"]
    await until(lambda: not svc.engine.items("q7208"), timeout=30)
    assert (await live.wait(30)).hung_up_by == "them"
    await nothing_left(svc)


async def test_hangups_mid_preview_and_mid_dial_lose_nothing(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone], sip_carrier: Callable[..., Any],
) -> None:
    """Agent hangs up during the preview: the item keeps position 1, not an attempt.
    Agent hangs up while the customer rings: the dial is cancelled, the attempt counts,
    the callback stays. Nothing is left in Asterisk either way."""
    svc = await service({"q7209": {**CB_QUEUE, "retry_interval": "60s"}},
                        agents_cfg("agent1", queue="q7209"), not_ready=("agent1",))
    phone = sip_phone("agent1", behaviours=[
        CallBehaviour(answer_after=0.3, hangup_after=1.0),                  # mid-preview
        CallBehaviour(answer_after=0.3, digits=[(0.5, "1")], hangup_after=2.5),  # mid-dial
    ])
    carrier = sip_carrier(behaviours=RING_FOREVER)
    await request_callback(sip_caller, ari_observer, "7209", "2015550209")
    svc.board.set_ready("agent1", True)
    await phone.wait_for_calls(1, 20, lambda c: c.ended)
    assert carrier.calls() == []
    # The agent hung up on the preview: declined-like, so they stay available.
    await phone.wait_for_calls(2, 30, lambda c: c.ended)
    [cancelled] = await carrier.wait_for_calls(1, 20, lambda c: c.cancelled_at is not None)
    assert cancelled.dialled == "+12015550209"
    await until(lambda: bool(svc.engine.items("q7209"))
                and svc.engine.items("q7209")[0].state == State.CALLBACK_PENDING)
    [item] = svc.engine.items("q7209")
    assert item.attempts == 1 and svc.engine.position(item.id) == 1
    await nothing_left(svc)
    stored = await stored_item(svc, "2015550209")
    assert stored.state == State.CALLBACK_PENDING
    assert asyncio.get_running_loop()  # the service loop is still healthy


async def test_verify_customer_press_1_before_bridge(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone], sip_carrier: Callable[..., Any],
) -> None:
    """R8 option: the customer hears "this is your callback, press 1" first; a customer
    who does not press 1 (voicemail) is a failed attempt, not a bridged agent."""
    svc = await service({"q7210": {**CB_QUEUE, "verify_customer": True,
                                   "preview_timeout": "6s", "retry_interval": "1s"}},
                        agents_cfg("agent1", queue="q7210"), not_ready=("agent1",))
    phone = sip_phone("agent1", behaviours=ACCEPT)
    carrier = sip_carrier(behaviours=[
        CallBehaviour(answer_after=0.3),                                  # voicemail: no 1
        CallBehaviour(answer_after=0.3, digits=[(1.0, "1")], hangup_after=3.0),
    ])
    caller_chan = await request_callback(sip_caller, ari_observer, "7210", "2015550210")
    svc.board.set_ready("agent1", True)
    calls = await carrier.wait_for_calls(2, 60, lambda c: c.ended)
    assert calls[0].bye_received_at is not None  # we hung up the unverified answer
    cust2 = ari_observer.find(lambda e: e.get("type") == "ChannelDtmfReceived"
                              and str(e["channel"]["name"]).startswith("PJSIP/carrier")
                              and e["channel"]["id"] != caller_chan)
    assert [e["digit"] for e in cust2] == ["1"]
    verify = ari_observer.find(lambda e: e.get("type") == "PlaybackStarted" and str(
        e["playback"]["media_uri"]).endswith("en/verify_customer"))
    assert len(verify) == 2
    cust_chan = cust2[0]["channel"]["id"]
    entered = await ari_observer.wait_type("ChannelEnteredBridge", channel_id=cust_chan)
    assert ts(entered) >= ts(cust2[0])  # bridged only after the customer's 1
    await until(lambda: not svc.engine.items("q7210"), timeout=20)
    stored = await stored_item(svc, "2015550210")
    assert stored.state == State.DONE and stored.attempts == 2
    assert len(phone.calls()) == 2
    await nothing_left(svc)


async def test_callbacks_wait_for_business_hours_live_callers_do_not(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone], sip_carrier: Callable[..., Any],
) -> None:
    """R14: no dialling outside the queue's hours; a live caller is still answered."""
    closed_all_week = {"timezone": "UTC", "mon-sun": ["00:00-00:01"]}
    svc = await service({"q7211": {**CB_QUEUE, "hours": closed_all_week}},
                        agents_cfg("agent1", queue="q7211"), not_ready=("agent1",))
    phone = sip_phone("agent1", behaviours=CallBehaviour(answer_after=0.3, hangup_after=1.0))
    carrier = sip_carrier(behaviours=CallBehaviour(answer_after=0.3))
    await request_callback(sip_caller, ari_observer, "7211", "2015550211")
    live = sip_caller("7211", caller="2015550212", max_duration=30)
    live.start()
    await caller_channel(ari_observer, "2015550212")
    svc.board.set_ready("agent1", True)
    [call] = await phone.wait_for_calls(1, 20, lambda c: c.ended)
    assert call.from_number == "+12015550212" and call.header("X-Work-Type") == "inbound"
    assert (await live.wait(30)).hung_up_by == "them"
    # Several dispatch passes later the callback is still held, untouched.
    await until(lambda: status(svc, "agent1") == AgentStatus.AVAILABLE)
    for _ in range(3):
        await svc.dispatcher.dispatch_pass()
    assert len(phone.calls()) == 1 and carrier.calls() == []
    [held] = svc.engine.items("q7211")
    assert held.kind == Kind.CALLBACK and held.state == State.CALLBACK_PENDING


async def test_open_callbacks_expire(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
) -> None:
    svc = await service({"q7212": {**CB_QUEUE, "expire_after": "3s"}},
                        agents_cfg("agent1", queue="q7212"), not_ready=("agent1",))
    await request_callback(sip_caller, ari_observer, "7212", "2015550213")
    await until(lambda: not svc.engine.items("q7212"), timeout=20)
    assert (await stored_item(svc, "2015550213")).state == State.EXPIRED


async def test_unregistered_softphone_is_never_offered_work(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone],
) -> None:
    """R15: an agent whose endpoint has no contact is offline; once the softphone
    registers it becomes available and gets the waiting caller."""
    svc2 = await service({"q7213": {"max_waiting": 5}},
                         {"reg": {"endpoint": "PJSIP/regagent", "queues": ["q7213"]}},
                         wait_reachable=False)
    assert svc2.dispatcher is not None
    assert status(svc2, "reg") == AgentStatus.OFFLINE
    caller = sip_caller("7213", caller="2015550214", max_duration=40)
    caller.start()
    await caller_channel(ari_observer, "2015550214")
    phone = sip_phone("regagent", behaviours=CallBehaviour(answer_after=0.3,
                                                           hangup_after=1.0))
    await phone.wait_registered()
    await until(lambda: status(svc2, "reg") != AgentStatus.OFFLINE, timeout=20)
    [call] = await phone.wait_for_calls(1, 20, lambda c: c.ended)
    assert call.from_number == "+12015550214"
    assert (await caller.wait(30)).hung_up_by == "them"


async def test_agent_phone_busy_is_a_decline_not_silence(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone],
) -> None:
    """A softphone answering 486 (agent pressed reject, or DND): the caller goes to the
    next agent, and the rejecting agent is set not-ready (not offered it again in a loop)."""
    svc = await service({"q7214": {"max_waiting": 5}},
                        agents_cfg("agent1", "agent2", queue="q7214"), not_ready=("agent2",))
    rejecting = sip_phone("agent1", behaviours=BUSY)
    other = sip_phone("agent2", behaviours=CallBehaviour(answer_after=0.3, hangup_after=1.0))
    caller = sip_caller("7214", caller="2015550215", max_duration=30)
    caller.start()
    [rejected] = await rejecting.wait_for_calls(1, 20, lambda c: c.ended)
    assert rejected.rejected_with == 486
    await until(lambda: status(svc, "agent1") == AgentStatus.NOT_READY)
    svc.board.set_ready("agent2", True)
    await other.wait_for_calls(1, 20, lambda c: c.answered_at is not None)
    assert (await caller.wait(30)).hung_up_by == "them"
    assert status(svc, "agent1") == AgentStatus.NOT_READY
    assert len(rejecting.calls()) == 1
    await nothing_left(svc)


async def test_caller_entering_another_number_is_not_taken_by_an_agent_meanwhile(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone], sip_carrier: Callable[..., Any],
) -> None:
    """An agent frees up while the caller is typing another number: the caller is not
    pulled out of it; once the callback is committed and the caller has hung up, the
    agent gets the callback for the number that was entered."""
    svc = await service({"q7215": {**CB_QUEUE, "alternate_number": True}},
                        agents_cfg("agent1", queue="q7215"), not_ready=("agent1",))
    phone = sip_phone("agent1", behaviours=ACCEPT)
    carrier = sip_carrier(behaviours=CallBehaviour(answer_after=0.3, hangup_after=1.0))
    keys = [(3.0, "2"), *[(4.0 + 0.35 * i, k) for i, k in enumerate("2015557655#")],
            (11.0, "1")]
    caller = sip_caller("7215", caller="2015550216", infos=keys, max_duration=40)
    caller.start()
    chan, _ = await caller_channel(ari_observer, "2015550216")
    await until(lambda: bool(playbacks(ari_observer, chan, "en/enter_number")))
    svc.board.set_ready("agent1", True)
    result = await caller.wait(40)
    assert result.hung_up_by == "them" and result.bye_received_at is not None
    [offer] = await phone.wait_for_calls(1, 30)
    assert offer.invited_at > result.bye_received_at  # not before the caller was done
    assert offer.header("X-Work-Type") == "callback" and offer.from_number == "+12015557655"
    [dialled] = await carrier.wait_for_calls(1, 30)
    assert dialled.dialled == "+12015557655"
    await until(lambda: not svc.engine.items("q7215"), timeout=30)
    await nothing_left(svc)
