"""The console's Accept / Decline against the softphone's keys, on the real Asterisk with
real SIP (the API the buttons call; the browser itself is in test_consoles.py).

Whichever comes first wins; the customer is never dialled before an accept, nor before
the agent's phone is answered."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from ivr import passwords
from ivr.app import Service, running
from rig.sandbox import AsteriskInstance, free_port
from tests.peers import CallBehaviour, SipCaller, SipCarrier, SipPhone
from tests.support.config import CB_QUEUE, write_config
from tests.support.observer import AriObserver
from tests.support.observing import caller_channel, is_playback
from tests.support.store import stored_item
from tests.support.waiting import until

PW = "agent-pass-789"


@contextlib.asynccontextmanager
async def agent_console(asterisk: AsteriskInstance, tmp_path: Path, queue: str
                        ) -> AsyncIterator[tuple[Service, Callable[..., Any]]]:
    """The service, and ``act(method, path, body=None) -> (status, json)`` as the logged-in
    agent1 (cookie and CSRF token, as the console page sends them)."""
    port = free_port(udp=False)
    agents = {"agent1": {"endpoint": "PJSIP/agent1", "queues": [queue],
                         "password_hash": passwords.hash_password(PW)}}
    cfg = write_config(asterisk, tmp_path, {queue: {**CB_QUEUE, "preview_timeout": "30s"}},
                       agents, http={"bind": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    async with running(cfg, http=True) as svc, aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await until(lambda: all(a.reachable for a in svc.board))
        svc.board.set_ready("agent1", False)
        async with http.post(f"{base}/api/login", json={"login": "agent1", "password": PW}) as r:
            csrf = (await r.json())["csrf"]

        async def act(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            async with http.request(method, base + path, json=body,
                                    headers={"X-CSRF-Token": csrf}) as r:
                return r.status, await r.json()

        yield svc, act


async def callback_waiting(sip_caller: Callable[..., SipCaller], obs: AriObserver, did: str,
                           number: str) -> None:
    c = sip_caller(did, caller=number, digits=[(1.6, "1")], max_duration=30)
    c.start()
    await caller_channel(obs, number)
    assert (await c.wait(30)).hung_up_by == "them", c.describe()


async def test_accept_clicked_while_ringing_dials_only_after_the_answer(
    asterisk: AsteriskInstance, tmp_path: Path, ari_observer: AriObserver,
    sip_caller: Callable[..., SipCaller], sip_phone: Callable[..., SipPhone],
    sip_carrier: Callable[..., SipCarrier],
) -> None:
    async with agent_console(asterisk, tmp_path, "q7511") as (svc, act):
        phone = sip_phone("agent1", behaviours=CallBehaviour(answer_after=3.0))
        carrier = sip_carrier(behaviours=CallBehaviour(answer_after=0.3, hangup_after=1.0))
        await callback_waiting(sip_caller, ari_observer, "7511", "2015550321")
        await act("POST", "/api/agents/agent1/state", {"state": "available"})
        [ringing] = await phone.wait_for_calls(1, 20)
        assert ringing.answered_at is None
        _, desk = await act("GET", "/api/desk")
        assert desk["offer"]["phase"] == "ringing"
        status, decision = await act("POST", f"/api/offers/{desk['offer']['item_id']}/accept")
        assert (status, decision["decision"], decision["phase"]) == (200, "accept", "ringing")
        assert carrier.calls() == []  # accepted, but the phone is not answered yet
        [answered] = await phone.wait_for_calls(1, 20, lambda c: c.answered_at is not None)
        [dialled] = await carrier.wait_for_calls(1, 20)
        assert answered.answered_at is not None
        assert dialled.invited_at >= answered.answered_at - 0.05
        # No preview: the accept was already given.
        agent_chan = next(e["channel"]["id"] for e in ari_observer.events
                          if e.get("type") == "ChannelCreated"
                          and e["channel"]["name"].startswith("PJSIP/agent1-"))
        assert not ari_observer.find(lambda e: is_playback(e, "PlaybackStarted", agent_chan,
                                                           "en/preview_intro"))
        # The second word on a decided offer is refused and changes nothing.
        status, body = await act("POST", f"/api/offers/{desk['offer']['item_id']}/decline")
        assert status in (404, 409), body
        await carrier.wait_for_calls(1, 20, lambda c: c.ended)
        item = await stored_item(svc, "2015550321")
        assert [h.event for h in item.history].count("dial_started") == 1


async def test_the_phone_key_first_wins_over_a_later_click(
    asterisk: AsteriskInstance, tmp_path: Path, ari_observer: AriObserver,
    sip_caller: Callable[..., SipCaller], sip_phone: Callable[..., SipPhone],
    sip_carrier: Callable[..., SipCarrier],
) -> None:
    async with agent_console(asterisk, tmp_path, "q7512") as (svc, act):
        sip_phone("agent1", behaviours=CallBehaviour(answer_after=0.3, digits=[(0.6, "1")]))
        carrier = sip_carrier(behaviours=CallBehaviour(answer_after=2.0, hangup_after=1.0))
        await callback_waiting(sip_caller, ari_observer, "7512", "2015550322")
        item_id = svc.engine.items("q7512")[0].id
        await act("POST", "/api/agents/agent1/state", {"state": "available"})
        # The 1 on the phone accepts: the customer is being dialled.
        [invite] = await carrier.wait_for_calls(1, 20)
        _, desk = await act("GET", "/api/desk")
        assert (desk["offer"]["decision"], desk["offer"]["phase"]) == ("accept", "dialling")
        # A Decline clicked after it is refused with the reason, and changes nothing.
        status, body = await act("POST", f"/api/offers/{item_id}/decline")
        assert (status, body["error"]) == (409, "already accepted")
        [done] = await carrier.wait_for_calls(1, 20, lambda c: c.ended)
        assert done.answered_at is not None and done.call_id == invite.call_id
        item = await stored_item(svc, "2015550322")
        events = [h.event for h in item.history]
        assert events.count("dial_started") == 1 and "declined" not in events
        assert "callback_connected" in events
