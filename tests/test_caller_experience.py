"""What callers hear beyond the offer, on the real Asterisk with real SIP: their position
and the expected wait, no offer when it would not help, their own language carried into
the callback, a press 1 while an agent rings for them, and a prompt on every failure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ivr.domain.ewt import spoken_wait
from ivr.domain.items import Kind, State
from ivr.flows.session import say_number
from tests.peers import RING_FOREVER, CallBehaviour, SipCaller, SipPhone
from tests.support.config import CB_QUEUE, agents_cfg
from tests.support.observer import AriObserver, Event
from tests.support.observing import caller_channel, is_playback
from tests.support.store import stored_item


def media(obs: AriObserver, chan: str) -> list[str]:
    """What was played to ``chan``, in order, as short names (``en/offer``, ``digits/2``)."""
    out = []
    for e in obs.find(lambda e: is_playback(e, "PlaybackStarted", chan)):
        uri = str(e["playback"]["media_uri"]).removeprefix("sound:")
        out.append("/".join(uri.split("/")[-2:]))
    return out


def started(obs: AriObserver, chan: str, file: str) -> list[Event]:
    return obs.find(lambda e: is_playback(e, "PlaybackStarted", chan, file))


async def test_position_and_expected_wait_on_arrival_and_with_each_offer(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
) -> None:
    """Nobody serves the queue: the wait cannot be estimated and the caller is told so
    instead of a number; the position counts a callback ahead that keeps its place."""
    await service({"q7901": {**CB_QUEUE, "prompts": {}, "announce_on_arrival": True,
                             "announce_with_offer": True, "first_offer_after": "4s"}},
                  agents_cfg("agent1", queue="q7901"), not_ready=("agent1",))
    first = sip_caller("7901", caller="2015550901", digits=[(9.0, "1")], max_duration=40)
    first.start()
    chan1, _ = await caller_channel(ari_observer, "2015550901")
    assert (await first.wait(40)).hung_up_by == "them"  # a callback now, at place 1
    second = sip_caller("7901", caller="2015550902", hangup_after=30.0, max_duration=50)
    second.start()
    chan2, _ = await caller_channel(ari_observer, "2015550902")
    await ari_observer.wait_for(lambda e: is_playback(e, "PlaybackStarted", chan2, "en/offer"),
                                30)
    heard = media(ari_observer, chan2)
    announcement = ["en/position_intro", "digits/2", "en/position_in_line", "en/wait_unknown"]
    # On arrival, then again before the offer.
    assert heard[:4] == announcement, heard
    assert heard[4:9] == [*announcement, "en/offer"], heard
    assert media(ari_observer, chan1)[:4] == ["en/position_intro", "digits/1",
                                              "en/position_in_line", "en/wait_unknown"]
    await second.wait(50)


async def test_an_estimated_wait_is_said_in_minutes(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone],
) -> None:
    """One agent serving (busy with a first caller): the second caller hears a number of
    minutes from the queue's EWT (the initial estimate: one agent, 5 minutes each)."""
    svc = await service({"q7902": {"max_waiting": 5, "announce_on_arrival": True}},
                        agents_cfg("agent1", queue="q7902"))
    phone = sip_phone("agent1", behaviours=CallBehaviour(answer_after=0.3, hangup_after=20.0))
    busy = sip_caller("7902", caller="2015550903", max_duration=40)
    busy.start()
    await phone.wait_for_calls(1, 20, lambda c: c.answered_at is not None)
    waiting = sip_caller("7902", caller="2015550904", hangup_after=8.0, max_duration=40)
    waiting.start()
    await caller_channel(ari_observer, "2015550903")
    chan, _ = await caller_channel(ari_observer, "2015550904")
    await ari_observer.wait_for(
        lambda e: is_playback(e, "PlaybackFinished", chan, None) and
        str(e["playback"]["media_uri"]).endswith(("/en/minutes", "/en/minute",
                                                  "/en/wait_under_minute")), 30)
    heard = media(ari_observer, chan)
    position = svc.engine.position(next(i.id for i in svc.engine.items("q7902")
                                        if i.channel_id == chan))
    assert heard[:3] == ["en/position_intro", f"digits/{position}", "en/position_in_line"]
    assert heard[3] == "en/wait_intro", heard
    how, minutes = spoken_wait(svc.engine.ewt("q7902", position))
    said = ["/".join(m.removeprefix("sound:").split("/")[-2:]) for m in say_number(minutes)]
    expected = {"under_minute": ["en/wait_under_minute"],
                "about": ["en/wait_about", *said, "en/minute" if minutes == 1 else "en/minutes"],
                }[how]
    assert heard[4:4 + len(expected)] == expected, (heard, how, minutes)
    await waiting.wait(40)


async def test_no_offer_to_a_caller_near_the_head(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
) -> None:
    """min_position_for_offer 2: the caller at the head is not offered a callback (it
    would not help); the one behind is."""
    await service({"q7903": {**CB_QUEUE, "min_position_for_offer": 2,
                             "first_offer_after": "2s", "repeat_offer_every": "2s"}},
                  agents_cfg("agent1", queue="q7903"), not_ready=("agent1",))
    head = sip_caller("7903", caller="2015550905", hangup_after=12.0, max_duration=40)
    head.start()
    chan1, _ = await caller_channel(ari_observer, "2015550905")
    behind = sip_caller("7903", caller="2015550906", hangup_after=8.0, max_duration=40)
    behind.start()
    chan2, _ = await caller_channel(ari_observer, "2015550906")
    await ari_observer.wait_for(lambda e: is_playback(e, "PlaybackStarted", chan2,
                                                      "en/connecting"), 20)  # SHORT offer
    await behind.wait(40)
    await head.wait(40)
    assert started(ari_observer, chan1, "en/connecting") == []  # never offered


async def test_the_callers_language_is_kept_for_the_callback(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone], sip_carrier: Callable[..., Any],
) -> None:
    """Two languages: the caller picks Spanish (2) at the menu, hears the offer and the
    confirmation in Spanish; the callback's customer is verified in Spanish."""
    svc = await service({"q7904": {**CB_QUEUE, "prompts": {}, "languages": ["en", "es"],
                                   "first_offer_after": "1s", "verify_customer": True,
                                   "preview_timeout": "8s"}},
                        agents_cfg("agent1", queue="q7904"), not_ready=("agent1",))
    # The 2 as RFC 4733 at the menu; the 1 as SIP INFO (a second RTP event from sipp's
    # pcaps would repeat the first one's timestamp, which RFC 4733 reads as the same key).
    caller = sip_caller("7904", caller="2015550907", digits=[(1.0, "2")],
                        infos=[(16.0, "1")], max_duration=60)
    caller.start()
    chan, _ = await caller_channel(ari_observer, "2015550907")
    assert (await caller.wait(60)).hung_up_by == "them"
    heard = media(ari_observer, chan)
    assert heard[0] == "en/language_menu", heard
    assert "es/offer" in heard and heard[-1] == "es/confirmation", heard
    item = await stored_item(svc, "2015550907")
    assert (item.kind, item.language) == (Kind.CALLBACK, "es")
    # The callback: the agent accepts, the customer answers and hears Spanish.
    phone = sip_phone("agent1", behaviours=CallBehaviour(answer_after=0.3,
                                                         digits=[(0.6, "1")]))
    carrier = sip_carrier(behaviours=CallBehaviour(answer_after=0.3, digits=[(4.0, "1")],
                                                   hangup_after=6.0))
    svc.board.set_ready("agent1", True)
    [answered] = await carrier.wait_for_calls(1, 30, lambda c: c.ended)
    assert answered.answered_at is not None
    customer = next(e["channel"]["id"] for e in ari_observer.events
                    if e.get("type") == "ChannelCreated"
                    and str(e["channel"]["name"]).startswith("PJSIP/carrier-")
                    and e["channel"]["id"] != chan)
    assert "es/verify_customer" in media(ari_observer, customer)
    assert "es/connecting" in media(ari_observer, customer)
    assert (await stored_item(svc, "2015550907")).state == State.DONE
    assert phone.calls()


async def test_a_1_during_the_offer_wins_over_an_agent_ringing(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone],
) -> None:
    """The offer is playing when a free agent's phone starts ringing for this caller; the
    caller presses 1: the ring stops (the agent's phone gets CANCEL) and the callback
    is taken at the same place."""
    svc = await service({"q7905": {**CB_QUEUE, "prompts": {}, "first_offer_after": "1s",
                                   "ring_timeout": "30s"}},
                        agents_cfg("agent1", queue="q7905"), not_ready=("agent1",))
    phone = sip_phone("agent1", behaviours=RING_FOREVER)
    caller = sip_caller("7905", caller="2015550908", digits=[(6.0, "1")], max_duration=40)
    caller.start()
    chan, _ = await caller_channel(ari_observer, "2015550908")
    await ari_observer.wait_for(lambda e: is_playback(e, "PlaybackStarted", chan, "en/offer"),
                                20)
    svc.board.set_ready("agent1", True)  # rings for this caller while the offer plays
    [ring] = await phone.wait_for_calls(1, 10)
    assert (await caller.wait(40)).hung_up_by == "them"
    assert started(ari_observer, chan, "en/confirmation")
    [cancelled] = await phone.wait_for_calls(1, 10, lambda c: c.cancelled_at is not None)
    assert cancelled.call_id == ring.call_id and cancelled.answered_at is None
    dtmf = await ari_observer.wait_type("ChannelDtmfReceived", 5, channel_id=chan)
    assert cancelled.cancelled_at is not None and cancelled.cancelled_at >= \
        float(ring.invited_at)
    item = await stored_item(svc, "2015550908")
    assert item.kind == Kind.CALLBACK
    events = [h.event for h in item.history]
    assert events.index("offered") < events.index("offer_revoked") < \
        events.index("converted_to_callback")
    assert svc.board.get("agent1").status != "not_ready"  # not blamed for the caller's 1
    assert dtmf["digit"] == "1"


async def test_no_offer_starts_while_an_agent_rings_for_the_caller(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    sip_phone: Callable[..., SipPhone],
) -> None:
    """The other order: an agent's phone is already ringing for the caller when the offer
    is due: no offer plays during the ring (it would promise what the ring may keep)."""
    svc = await service({"q7906": {**CB_QUEUE, "prompts": {}, "first_offer_after": "2s",
                                   "ring_timeout": "6s"}},
                        agents_cfg("agent1", queue="q7906"))
    phone = sip_phone("agent1", behaviours=RING_FOREVER)
    caller = sip_caller("7906", caller="2015550909", hangup_after=5.0, max_duration=40)
    caller.start()
    chan, _ = await caller_channel(ari_observer, "2015550909")
    [ring] = await phone.wait_for_calls(1, 10)
    result = await caller.wait(40)
    assert result.hung_up_by == "us"
    # The offer was due at 2 s; the phone rang from the start: no offer at all.
    assert started(ari_observer, chan, "en/offer") == []
    assert ring.answered_at is None
    assert svc.engine.items("q7906") == []  # abandoned, nothing left
