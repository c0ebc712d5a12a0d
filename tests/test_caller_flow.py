"""The caller's half on the real Asterisk with real SIP calls (SPEC R1-R6, R12, R13).

Every assertion about what the caller heard comes from the independent ARI observer
(PlaybackStarted/Finished on the caller's channel, DTMF) or from what sipp saw; the
service's own state is read only for positions and the store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from ivr.domain.items import Kind, State
from tests.peers import SipCaller
from tests.support.config import SHORT
from tests.support.observer import AriObserver
from tests.support.observing import (
    caller_channel,
    is_playback,
    playbacks,
    stasis_channels,
    ts,
)
from tests.support.store import stored_item
from tests.support.waiting import until

# ---------------------------------------------------------------------- offers


async def test_offer_timing_first_then_repeats(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any]
) -> None:
    """R3: first offer at first_offer_after, then every repeat_offer_every, MOH between."""
    await service({"q7101": {"max_waiting": 1, "max_ewt": None, "first_offer_after": "2s",
                             "repeat_offer_every": "3s", "prompts": SHORT}})
    # max_waiting 1: two callers waiting -> overflow
    a = sip_caller("7101", caller="2015550001", hangup_after=12.5, max_duration=30)
    b = sip_caller("7101", caller="2015550002", hangup_after=12.0, max_duration=30)
    a.start()
    chan, start = await caller_channel(ari_observer, "2015550001")
    b.start()
    await until(lambda: len(playbacks(ari_observer, chan, "connecting")) >= 3)
    offers = [ts(e) for e in playbacks(ari_observer, chan, "connecting")]
    t0 = ts(start)
    # Tolerance: 1.0 s (answer + item commit before the clock starts, a noisy 2-core box).
    assert offers[0] - t0 == pytest.approx(2.0, abs=1.0)
    assert offers[1] - offers[0] == pytest.approx(3.0, abs=1.0)
    assert offers[2] - offers[1] == pytest.approx(3.0, abs=1.0)
    await a.wait(40)
    await b.wait(40)


async def test_no_overflow_no_offer(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any]
) -> None:
    svc = await service({"q7102": {"max_waiting": 5, "max_ewt": None, "prompts": SHORT}})
    c = sip_caller("7102", caller="2015550003", digits=[(3.5, "1")], hangup_after=7,
                   max_duration=20)
    c.start()
    chan, _ = await caller_channel(ari_observer, "2015550003")
    result = await c.wait(30)
    assert result.hung_up_by == "us"
    assert playbacks(ari_observer, chan, "connecting") == []
    # The 1 arrived (Asterisk saw it) and was ignored: no offer was ever made.
    assert ari_observer.find(lambda e: e.get("type") == "ChannelDtmfReceived"
                             and e["channel"]["id"] == chan)
    item = await stored_item(svc, "2015550003")
    assert item.state == State.ABANDONED


async def test_overflow_by_estimated_wait(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any]
) -> None:
    """R2/R16: max_ewt alone. No agent serves the queue, so the EWT is unbounded."""
    svc = await service({"q7103": {"max_waiting": None, "max_ewt": "30s", "prompts": SHORT}})
    c = sip_caller("7103", caller="2015550004", hangup_after=5, max_duration=20)
    c.start()
    chan, _ = await caller_channel(ari_observer, "2015550004")
    await until(lambda: bool(playbacks(ari_observer, chan, "connecting")))
    assert svc.engine.in_overflow("q7103") is True
    await c.wait(30)


# ---------------------------------------------------------------------- press 1


async def test_press_1_during_offer_keeps_place_of_everyone(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any]
) -> None:
    """R5 barge-in, R6: the offer stops, the real confirmation plays to its end, we hang
    up, and the callback keeps its position; nobody else's position moves."""
    svc = await service({"q7104": {"max_waiting": 1, "first_offer_after": "2s",
                                   "repeat_offer_every": "60s"}})
    a = sip_caller("7104", caller="2015550011", max_duration=40)
    b = sip_caller("7104", caller="2015550012", digits=[(4.0, "1")], max_duration=40)
    c = sip_caller("7104", caller="2015550013", max_duration=40)
    a.start()
    await caller_channel(ari_observer, "2015550011")
    b.start()
    chan_b, _ = await caller_channel(ari_observer, "2015550012")
    c.start()
    await caller_channel(ari_observer, "2015550013")
    await until(lambda: len(svc.engine.items("q7104")) == 3)
    before = [(i.number, svc.engine.position(i.id)) for i in svc.engine.items("q7104")]
    assert [n for n, _ in before] == ["+12015550011", "+12015550012", "+12015550013"]

    # B presses 1 two seconds into the 8.8 s offer: barge-in.
    stopped = await ari_observer.wait_for(
        lambda e: is_playback(e, "PlaybackFinished", chan_b, "en/offer"))
    dtmf = ari_observer.find(lambda e: e.get("type") == "ChannelDtmfReceived"
                             and e["channel"]["id"] == chan_b)
    assert dtmf and dtmf[0]["digit"] == "1"
    offer_started = playbacks(ari_observer, chan_b, "en/offer")[0]
    assert ts(stopped) - ts(offer_started) < 6.0  # cut short, not played out
    conf_done = await ari_observer.wait_for(
        lambda e: is_playback(e, "PlaybackFinished", chan_b, "en/confirmation"))
    assert conf_done["playback"]["state"] == "done"
    result = await b.wait(30)
    assert result.hung_up_by == "them"
    assert result.bye_received_at is not None
    conf_start = playbacks(ari_observer, chan_b, "en/confirmation")[0]
    # The whole 6.4 s confirmation was heard before our BYE.
    assert result.bye_received_at - ts(conf_start) >= 6.0

    after = [(i.number, svc.engine.position(i.id), i.kind) for i in svc.engine.items("q7104")]
    assert [(n, p) for n, p, _ in after] == before
    assert after[1][2] == Kind.CALLBACK
    stored = await stored_item(svc, "2015550012")
    assert stored.kind == Kind.CALLBACK and stored.state == State.CALLBACK_PENDING
    assert stored.arrived_at == svc.engine.items("q7104")[1].arrived_at
    a.stop()
    c.stop()


async def test_press_1_after_the_offer_counts(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any]
) -> None:
    svc = await service({"q7105": {"max_waiting": None, "max_ewt": "30s",
                                   "first_offer_after": "1s", "repeat_offer_every": "60s",
                                   "prompts": SHORT}})
    # Short offer (1.1 s) at ~1 s; the 1 comes at 5 s, on music on hold.
    c = sip_caller("7105", caller="2015550021", digits=[(5.0, "1")], max_duration=30)
    c.start()
    chan, _ = await caller_channel(ari_observer, "2015550021")
    done = await ari_observer.wait_for(
        lambda e: is_playback(e, "PlaybackFinished", chan, "connecting"))
    dtmf = await ari_observer.wait_type("ChannelDtmfReceived", channel_id=chan)
    assert ts(dtmf) > ts(done)  # pressed after the offer had ended
    await ari_observer.wait_for(lambda e: is_playback(e, "PlaybackFinished", chan, "minutes"))
    result = await c.wait(30)
    assert result.hung_up_by == "them"
    stored = await stored_item(svc, "2015550021")
    assert stored.state == State.CALLBACK_PENDING


async def test_other_keys_and_early_1_are_ignored(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any]
) -> None:
    """R5: a 1 before the first offer, and 2/9/# after it, change nothing."""
    svc = await service({"q7106": {"max_waiting": None, "max_ewt": "30s",
                                   "first_offer_after": "3s", "repeat_offer_every": "60s",
                                   "prompts": SHORT}})
    c = sip_caller("7106", caller="2015550031",
                   digits=[(0.8, "1"), (5.5, "2"), (6.0, "9"), (6.5, "#")],
                   hangup_after=8.5, max_duration=20)
    c.start()
    chan, _ = await caller_channel(ari_observer, "2015550031")
    result = await c.wait(30)
    assert result.hung_up_by == "us"  # we were never hung up on: no confirmation
    digits = [e["digit"] for e in ari_observer.find(
        lambda e: e.get("type") == "ChannelDtmfReceived" and e["channel"]["id"] == chan)]
    assert digits == ["1", "2", "9", "#"]
    assert len(playbacks(ari_observer, chan, "connecting")) == 1
    assert playbacks(ari_observer, chan, "minutes") == []
    stored = await stored_item(svc, "2015550031")
    assert stored.kind == Kind.INBOUND and stored.state == State.ABANDONED


# ---------------------------------------------------------------------- hang-ups


@pytest.mark.parametrize(("phase", "hangup_after", "digit_at", "expected"), [
    ("moh", 1.0, None, State.ABANDONED),
    ("offer", 3.0, None, State.ABANDONED),           # the 8.8 s offer starts at 1 s
    ("confirmation", 5.0, 2.0, State.CALLBACK_PENDING),  # 1 at 2 s; confirmation 6.4 s
])
async def test_hangup_in_each_phase(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
    phase: str, hangup_after: float, digit_at: float | None, expected: State,
) -> None:
    did = {"moh": "7107", "offer": "7108", "confirmation": "7109"}[phase]
    first = "5s" if phase == "moh" else "1s"
    svc = await service({f"q{did}": {"max_waiting": None, "max_ewt": "30s",
                                     "first_offer_after": first, "repeat_offer_every": "60s"}})
    number = f"201555004{did[-1]}"
    digits = [(digit_at, "1")] if digit_at is not None else []
    c = sip_caller(did, caller=number, digits=digits, hangup_after=hangup_after,
                   max_duration=20)
    c.start()
    chan, _ = await caller_channel(ari_observer, number)
    await ari_observer.wait_type("ChannelDestroyed", channel_id=chan)
    result = await c.wait(30)
    assert result.hung_up_by == "us"
    if phase != "moh":
        assert playbacks(ari_observer, chan, "en/offer")
    if phase == "confirmation":
        assert playbacks(ari_observer, chan, "en/confirmation")
    await until(lambda: all(i.kind == Kind.CALLBACK for i in svc.engine.items(f"q{did}")))
    stored = await stored_item(svc, number)
    assert stored.state == expected
    live = [i for i in svc.engine.items(f"q{did}") if i.kind == Kind.INBOUND]
    assert live == []  # no live item left behind


# ---------------------------------------------------------------------- number guard, dedupe


# What an attacker (or a confused carrier) presents, on the default policy (R13): none of
# them is offered a callback, so none can ever be dialled.
REFUSED_CALLER_IDS = ("011447700900123", "011442079460000", "911", "112", "19005550123",
                      "caller", "5551234")


async def test_refused_numbers_never_hear_the_offer_and_are_never_dialled(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any]
) -> None:
    svc = await service({"q7110": {"max_waiting": None, "max_ewt": "30s",
                                   "first_offer_after": "1s", "repeat_offer_every": "2s",
                                   "prompts": SHORT}})
    refused = [sip_caller("7110", caller=n, digits=[(3.0, "1")], hangup_after=6,
                          max_duration=20) for n in REFUSED_CALLER_IDS]
    anon = sip_caller("7110", caller=None, digits=[(3.0, "1")], hangup_after=6,
                      max_duration=20)
    ok = sip_caller("7110", caller="2015550051", hangup_after=6, max_duration=20)
    everyone = [*refused, anon, ok]
    for c in everyone:
        c.start()
    r = [await c.wait(30) for c in everyone]
    assert [x.hung_up_by for x in r] == ["us"] * len(everyone)
    chans = {n: stasis_channels(ari_observer, n)[0]
             for n in (*REFUSED_CALLER_IDS, "anonymous", "2015550051")}
    assert playbacks(ari_observer, chans["2015550051"], "connecting")  # the control
    for n in (*REFUSED_CALLER_IDS, "anonymous"):
        assert playbacks(ari_observer, chans[n], "connecting") == [], n
    with sqlite3.connect(svc.cfg.store_path) as db:
        kinds = db.execute("SELECT DISTINCT kind FROM items WHERE queue = 'q7110'").fetchall()
        numbers = {n for (n,) in db.execute("SELECT number FROM items WHERE queue = 'q7110'")}
    assert kinds == [("inbound",)]  # nobody became a callback
    # Parsed once at arrival and stored in E.164 (None when not a number at all).
    assert {"+12015550051", "+447700900123", "+442079460000", "+19005550123"} <= numbers
    assert not any(n and not n.startswith("+") for n in numbers)


async def test_second_request_from_same_number_is_told_already_scheduled(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any]
) -> None:
    """R12: one open callback per (queue, number)."""
    svc = await service({"q7111": {"max_waiting": None, "max_ewt": "30s",
                                   "first_offer_after": "1s", "repeat_offer_every": "60s",
                                   "prompts": SHORT}})
    first = sip_caller("7111", caller="2015550061", digits=[(1.5, "1")], max_duration=20)
    first.start()
    assert (await first.wait(30)).hung_up_by == "them"
    second = sip_caller("7111", caller="2015550061", digits=[(1.5, "1")],
                        max_duration=30)
    second.start()
    await until(lambda: len(stasis_channels(ari_observer, "2015550061")) == 2)
    starts = stasis_channels(ari_observer, "2015550061")
    second_chan = starts[-1]
    await ari_observer.wait_for(
        lambda e: is_playback(e, "PlaybackFinished", second_chan, "en/already_scheduled"))
    assert (await second.wait(30)).hung_up_by == "them"
    open_cbs = [i for i in svc.engine.items("q7111") if i.kind == Kind.CALLBACK]
    assert len(open_cbs) == 1 and open_cbs[0].number == "+12015550061"


# ---------------------------------------------------------------------- bad input


async def test_sip_info_and_digit_bursts_do_not_break_the_session(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any]
) -> None:
    svc = await service({"q7112": {"max_waiting": None, "max_ewt": "30s",
                                   "first_offer_after": "2s", "repeat_offer_every": "60s",
                                   "prompts": SHORT}})
    # A burst of junk digits before the offer, then the 1 as a SIP INFO (dtmf-relay)
    # after it. (sipp replays each pcap with its recorded RTP sequence numbers, so after
    # a few pcaps Asterisk drops further RTP digits as stale: a burst cannot end in RTP.)
    burst = [(0.3 + 0.1 * i, d) for i, d in enumerate("29#*0873")]
    c = sip_caller("7112", caller="2015550071", digits=burst,
                   send_info_at=4.0, info_digit="1", max_duration=30)
    c.start()
    chan, _ = await caller_channel(ari_observer, "2015550071")
    result = await c.wait(30)
    assert result.hung_up_by == "them"  # confirmation played, we hung up on them
    assert playbacks(ari_observer, chan, "minutes")
    stored = await stored_item(svc, "2015550071")
    assert stored.state == State.CALLBACK_PENDING


async def test_unknown_queue_is_refused_politely(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any]
) -> None:
    await service({"q7113": {"max_waiting": 5}})
    c = sip_caller("7199", caller="2015550081", max_duration=20)  # q7199: not configured
    c.start()
    chan, _ = await caller_channel(ari_observer, "2015550081")
    await ari_observer.wait_for(lambda e: is_playback(e, "PlaybackFinished", chan,
                                                      "en/unavailable"))
    assert (await c.wait(30)).hung_up_by == "them"


# ---------------------------------------------------------------------- press 2 (R13)


def _keys(start: float, keys: str, step: float = 0.35) -> list[tuple[float, str]]:
    return [(start + step * i, k) for i, k in enumerate(keys)]


async def test_press_2_enters_a_different_number_read_back_and_confirmed(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
) -> None:
    svc = await service({"q7114": {"max_waiting": None, "max_ewt": "30s",
                                   "first_offer_after": "1s", "repeat_offer_every": "60s",
                                   "alternate_number": True, "prompts": SHORT}})
    # Offer (1.1 s) + "press 2" (3.4 s) from ~1 s; 2 at 3 s, the number at 4 s (barging
    # into "enter the number"), '#', then 1 during the read-back.
    keys = [(3.0, "2"), *_keys(4.0, "2015557654#"), (11.0, "1")]
    c = sip_caller("7114", caller="2015550091", infos=keys, max_duration=40)
    c.start()
    chan, _ = await caller_channel(ari_observer, "2015550091")
    assert (await c.wait(40)).hung_up_by == "them"
    assert playbacks(ari_observer, chan, "en/number_readback")
    said = [str(e["playback"]["media_uri"]).rsplit("/", 1)[-1] for e in ari_observer.find(
        lambda e: is_playback(e, "PlaybackStarted", chan)
        and "digits/" in str(e["playback"]["media_uri"]))]
    # Read back digit by digit in the national form (barged into by the 1).
    assert "".join(said).startswith("201")
    assert playbacks(ari_observer, chan, "minutes")  # the (short) confirmation
    item = next(i for i in svc.engine.items("q7114"))
    assert item.kind == Kind.CALLBACK and item.number == "+12015557654"


async def test_three_bad_numbers_send_the_caller_back_to_waiting(
    ari_observer: AriObserver, sip_caller: Callable[..., SipCaller], service: Callable[..., Any],
) -> None:
    svc = await service({"q7115": {"max_waiting": None, "max_ewt": "30s",
                                   "first_offer_after": "1s", "repeat_offer_every": "60s",
                                   "alternate_number": True, "prompts": SHORT}})
    # International (satellite), emergency, premium rate: each refused by the same guard
    # as a caller id (R13), never read back as a number to confirm.
    keys = [(3.0, "2"), *_keys(4.0, "011882123456789#"), *_keys(12.8, "911#"),
            *_keys(17.3, "19005550123#")]
    c = sip_caller("7115", caller="2015550092", infos=keys, hangup_after=32,
                   max_duration=50)
    c.start()
    chan, _ = await caller_channel(ari_observer, "2015550092")
    await ari_observer.wait_for(
        lambda e: is_playback(e, "PlaybackFinished", chan, "en/back_to_queue"), timeout=40)
    assert len(playbacks(ari_observer, chan, "en/invalid_number")) == 3
    assert playbacks(ari_observer, chan, "en/number_readback") == []
    assert [i.kind for i in svc.engine.items("q7115")] == [Kind.INBOUND]  # still waiting
    assert (await c.wait(50)).hung_up_by == "us"
    assert (await stored_item(svc, "2015550092")).state == State.ABANDONED
