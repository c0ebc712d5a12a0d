"""The README's "Quick start" walked as a newcomer would, on a real Asterisk 22 with
real SIP: the sandbox started as ``scripts/up`` starts it (``--demo-caller``, here on
free ports), the config written by ``rig/quickstart.py`` (the offer timing
shortened: tests never wait the real 30 s), the service run as ``scripts/up`` runs it
(``ivr run <config>``, a subprocess), the API driven with the ``curl`` command
``scripts/up`` prints, and two sipp softphones: the agent registering as ``regagent``
and the demo caller registering as ``caller`` and dialling 5550100 from that account.

An independent ARI app (tests/support/observer.py) checks what Asterisk did: the caller is
presented as "Demo caller" <2015550123> whatever the softphone sends, hears the offer,
presses 1 (RFC 4733), hears the confirmation and is hung up; the callback is stored as
+12015550123 and listed by the API; nothing is dialled before the agent's 1; the agent's
INVITE is marked CALLBACK 2015550123 / X-Work-Type: callback; the callback rings the demo
caller's own registered softphone (request URI user 2015550123) only after the accept;
agent and customer end up in one bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ivr.config import load
from rig import quickstart
from rig.sandbox import DEMO_CALLER_NUMBER, AsteriskInstance, die_with_parent_preexec, free_port
from tests.peers import CallBehaviour, DemoCallerPhone, SipPhone
from tests.support import api
from tests.support.asterisk import finish_asterisk, start_asterisk
from tests.support.observer import AriObserver, Event
from tests.support.observing import bridged, is_playback, ts
from tests.support.service import until_healthy
from tests.support.waiting import until, until_async

REPO = Path(__file__).resolve().parent.parent

FIRST_OFFER_AFTER = 2.0  # the quick start's 30 s, shortened
OFFER_SECONDS = 8.8  # prompts/en/offer.wav
# The caller presses 1 once the offer has been heard to its end (README step 3): the
# offer starts FIRST_OFFER_AFTER after the arrival (about the answer) and lasts 8.8 s.
CALLER_PRESSES_AT = FIRST_OFFER_AFTER + OFFER_SECONDS + 2.5
# The agent presses 1 once the preview has said everything (callback, the ten digits,
# the minutes waited; "press 1 to accept" starts about 12 s after the answer and ends at
# about 15 s), well before the preview_timeout (the default 20 s from the answer).
AGENT_PRESSES_AT = 15.5
CUSTOMER_TALKS = 5.0  # the demo caller hangs up the callback this long after answering
VERBOSE_LOG = "qs_verbose.log"  # in the instance's log dir


# ---------------------------------------------------------------------- helpers


def _prompt(e: Event) -> str:
    """``sound:digits/2`` -> ``digits/2``; ``sound:/…/prompts/en/offer`` -> ``en/offer``."""
    uri = str(e["playback"]["media_uri"]).removeprefix("sound:")
    return "/".join(uri.split("/")[-2:])


def created(name_prefix: str) -> Callable[[Event], bool]:
    return lambda e: (e.get("type") == "ChannelCreated"
                      and str(e["channel"]["name"]).startswith(name_prefix))


@dataclass
class QuickStart:
    inst: AsteriskInstance
    state: Path
    api_port: int
    token: str
    observer: AriObserver
    service_log: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    async def get(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession() as http, http.get(self.api + path,
                                                            headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def set_ready(self, ready: bool) -> Any:
        """README steps 2 and 4: the curl command scripts/up prints, run by a shell."""
        cmd = quickstart.curl_agent_state(self.state, self.api_port, ready=ready)
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", cmd + " --silent --show-error",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, err.decode()
        return json.loads(out)

    def stored(self) -> list[tuple[str, str, str, str | None, int]]:
        """(queue, kind, state, number, attempts) of every item in the store (SQLite, a
        second connection: what survives a crash)."""
        path = self.state / "ivr.sqlite3"
        with contextlib.closing(sqlite3.connect(path)) as db:
            rows = db.execute(
                "SELECT queue, kind, state, number, attempts FROM items ORDER BY seq").fetchall()
        return [tuple(r) for r in rows]

    def verbose_log(self) -> str:
        return _text(self.inst.run_dir / "log" / VERBOSE_LOG)

    def describe(self) -> str:
        tail = _text(self.service_log).splitlines()[-60:]
        return "--- service log\n" + "\n".join(tail) + "\n" + self.inst.log_tail(30)


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


@pytest.fixture
async def qs(tmp_path: Path) -> AsyncIterator[QuickStart]:
    """``scripts/up`` on free ports: the sandbox with the demo caller, the quick-start
    config (offer after 2 s), ``ivr run`` in the background; plus the observer."""
    # As `python -m rig.sandbox up --demo-caller --sip-port P --http-port H` does.
    inst = start_asterisk(demo_caller=True, sip_port=free_port(),
                          http_port=free_port(udp=False))
    stack = contextlib.AsyncExitStack()
    stack.callback(finish_asterisk, inst)
    async with stack:
        # Asterisk's own account of music on hold (no ARI event reports it).
        inst.cli("core set verbose 3")
        inst.cli(f"logger add channel {VERBOSE_LOG} verbose(3)")
        state = tmp_path / "quickstart"
        state.mkdir()
        (state / "asterisk.json").write_text(json.dumps(inst.to_json(), indent=2) + "\n")
        api_port = free_port(udp=False)
        cfg_path = quickstart.write_config(state, api_port,
                                           first_offer_after=f"{FIRST_OFFER_AFTER}s")
        observer = AriObserver(inst)
        await observer.start()
        stack.push_async_callback(observer.close)
        log = tmp_path / "service.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ivr.cli", "run", str(cfg_path),
                cwd=REPO, stdout=out, stderr=out, start_new_session=True,
                preexec_fn=die_with_parent_preexec())

        async def stop_service() -> None:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()

        stack.push_async_callback(stop_service)
        await until_healthy(f"http://127.0.0.1:{api_port}/healthz",
                            lambda: proc.returncode is None, lambda: _text(log))
        token = (state / quickstart.TOKEN_FILE).read_text().strip()
        yield QuickStart(inst, state, api_port, token, observer, log)


# ---------------------------------------------------------------------- the config


def test_config_is_what_the_readme_says(tmp_path: Path) -> None:
    """What scripts/up writes, as the README describes it (no Asterisk needed)."""
    state = tmp_path / "qs"
    state.mkdir()
    (state / "asterisk.json").write_text(json.dumps({
        "ari_url": "http://127.0.0.1:18088", "ari_user": "u", "ari_password": "p" * 32,
        "app_name": "ivr", "prompts_dir": "/ivr-runs/x/prompts", "reg_user": "regagent",
        "reg_password": "r" * 24, "caller_password": "c" * 24, "sip_port": 15060,
        "sip_bind": "127.0.0.1"}))
    path = quickstart.write_config(state, 18080)
    assert path == state / "config.yaml"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (state / "api_token").stat().st_mode & 0o777 == 0o600
    cfg = load(path, env={})
    support = cfg.queues["support"]
    assert support.region == "US"
    assert (support.did, support.policy.max_waiting, support.policy.max_ewt) == (
        "5550100", 1, 120.0)
    assert (support.first_offer_after, support.repeat_offer_every) == (30.0, 120.0)
    assert cfg.outbound.dial == "PJSIP/{national}@caller"
    assert cfg.agents["agent"].endpoint == "PJSIP/regagent"
    assert cfg.http.port == 18080
    assert cfg.http.api_token == (state / "api_token").read_text().strip()
    # Written again (scripts/up run twice): the same token, a fresh config.
    quickstart.write_config(state, 18081, first_offer_after="2s")
    cfg2 = load(path, env={})
    assert cfg2.http.api_token == cfg.http.api_token
    assert cfg2.queues["support"].first_offer_after == 2.0
    text = quickstart.instructions(state, 18080)
    assert "user regagent  password " + "r" * 24 in text
    assert "user caller    password " + "c" * 24 in text
    assert quickstart.curl_agent_state(state, 18080, ready=False) in text


def test_readme_curl_is_the_one_scripts_up_prints() -> None:
    """README step 2's command, as printed by scripts/up for the default state dir/port."""
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [" ".join(c.split()) for c in re.findall(r"`(curl [^`]*)`", quick)]
    printed = quickstart.curl_agent_state(Path("var/quickstart"), 8080, ready=False)
    assert commands == [" ".join(printed.replace("\\\n", " ").split())]


# ---------------------------------------------------------------------- the walkthrough


async def test_readme_quick_start_walkthrough(qs: QuickStart) -> None:
    inst = qs.inst

    # Step 1: both softphones register.
    agent_phone = SipPhone(inst, inst.reg_user, behaviours=CallBehaviour(
        answer_after=0.5, digits=[(AGENT_PRESSES_AT, "1")], max_duration=90))
    agent_phone.start()
    await agent_phone.wait_registered(20)
    caller = DemoCallerPhone(
        inst, quickstart.DEMO_DID, digits=[(CALLER_PRESSES_AT, "1")], from_name="Softphone",
        behaviours=CallBehaviour(answer_after=0.5, hangup_after=CUSTOMER_TALKS),
        max_duration=60)
    try:
        await _walk(qs, agent_phone, caller)
    except BaseException:
        print(qs.describe(), agent_phone.describe(), caller.describe(), sep="\n")
        raise
    finally:
        caller.stop()
        agent_phone.stop()


async def _walk(qs: QuickStart, agent_phone: SipPhone, caller: DemoCallerPhone) -> None:
    obs = qs.observer
    agents = await _wait_api(qs, "/api/agents",
                             lambda a: api.agent(a, "agent")["reachable"]
                             and api.agent(a, "agent")["status"] == "available")
    assert api.agent(agents, "agent")["status"] == "available"

    # Step 2: the agent not ready (the curl command printed by scripts/up).
    assert await qs.set_ready(False) == {"agent": "agent", "status": "not_ready"}

    # Step 3: the caller registers and dials 5550100.
    caller.start()
    await caller.wait_registered(20)
    arrival = await obs.wait_for(
        lambda e: e.get("type") == "ChannelDialplan" and e.get("dialplan_app") == "Stasis"
        and str(e["channel"]["name"]).startswith("PJSIP/caller-"), 20)
    chan = str(arrival["channel"]["id"])
    # Asterisk presents the endpoint's caller id, not what the softphone put in From.
    assert arrival["channel"]["caller"] == {"name": "Demo caller",
                                            "number": DEMO_CALLER_NUMBER}
    assert arrival["dialplan_app_data"].endswith(",support")
    own = await caller.wait_own_call(lambda c: c.answered_at is not None, 20)
    assert own.challenged_with in (401, 407)  # the INVITE was authenticated
    # "You hear music": Asterisk started music on hold on the caller's channel.
    moh = f"Started music on hold, class 'default', on channel '{arrival['channel']['name']}'"
    await until(lambda: moh in qs.verbose_log(), 10)
    offer = await obs.wait_for(lambda e: is_playback(e, "PlaybackStarted", chan, "en/offer"), 20)
    # In overflow with one caller: no agent ready, so the wait is unbounded (> max_ewt).
    support = api.queue(await qs.get("/api/queues"), "support")
    assert (support["waiting"], support["overflow"], support["ewt"]) == (1, True, None)
    assert support["items"][0]["kind"] == "inbound"
    offer_end = await obs.wait_for(
        lambda e: is_playback(e, "PlaybackFinished", chan, "en/offer"), 20)
    assert ts(offer) - ts(arrival) >= FIRST_OFFER_AFTER - 0.3
    press = await obs.wait_type("ChannelDtmfReceived", 30, channel_id=chan)
    assert press["digit"] == "1"
    assert ts(press) >= ts(offer_end)  # heard to its end, then 1
    confirm = await obs.wait_for(
        lambda e: is_playback(e, "PlaybackStarted", chan, "en/confirmation"), 20)
    confirm_end = await obs.wait_for(
        lambda e: is_playback(e, "PlaybackFinished", chan, "en/confirmation"), 20)
    assert confirm_end["playback"]["state"] == "done"  # heard to its end
    own = await caller.wait_own_call(lambda c: c.ended, 20)
    assert own.hung_up_by == "them" and own.bye_received_at is not None
    assert own.bye_received_at >= ts(confirm) - 0.05
    # The callback is stored with the presented number and listed in place.
    assert qs.stored() == [("support", "callback", "callback_pending", "+12015550123", 0)]
    queues = await qs.get("/api/queues")
    [item] = api.queue(queues, "support")["items"]
    assert (item["kind"], item["state"], item["position"]) == (
        "callback", "callback_pending", 1)
    # Nothing rang or was dialled yet.
    assert agent_phone.calls() == [] and caller.calls() == []
    # The consoles printed by scripts/up: the supervisor's login sees the callback.
    await _console_sees_callback(qs, item["id"])

    # Step 4: the agent ready; the phone rings marked as a callback.
    assert (await qs.set_ready(True))["agent"] == "agent"
    [ring] = await agent_phone.wait_for_calls(1, 20)
    assert ring.from_name == f"CALLBACK {DEMO_CALLER_NUMBER}"
    assert ring.from_number == "+12015550123"
    assert ring.header("X-Work-Type") == "callback"
    agent_up = await obs.wait_for(
        lambda e: e.get("type") == "ChannelStateChange" and e["channel"]["state"] == "Up"
        and str(e["channel"]["name"]).startswith(f"PJSIP/{qs.inst.reg_user}-"), 20)
    agent_chan = str(agent_up["channel"]["id"])
    accept = await obs.wait_type("ChannelDtmfReceived", AGENT_PRESSES_AT + 10,
                                 channel_id=agent_chan)
    assert accept["digit"] == "1"
    # Before the 1 the agent heard the whole preview: it is a callback, the number digit
    # by digit, the minutes waited, "press 1 to accept".
    heard = [_prompt(e) for e in obs.find(
        lambda e: e.get("type") == "PlaybackStarted"
        and e["playback"]["target_uri"] == f"channel:{agent_chan}" and ts(e) <= ts(accept))]
    number = [f"digits/{d}" for d in DEMO_CALLER_NUMBER]
    assert heard[:12] == ["en/preview_intro", *number, "en/preview_waited"], heard
    assert re.fullmatch(r"digits/\d+", heard[12]), heard  # 0 minutes here
    assert heard[13:] == ["en/minutes", "en/preview_accept"], heard

    # Step 5: only now is the customer dialled: the demo caller's own softphone rings.
    [callback] = await caller.wait_for_calls(1, 20)
    assert callback.dialled == DEMO_CALLER_NUMBER  # PJSIP/{national}@caller
    assert callback.from_number == "2015550100"  # the queue's caller id
    assert callback.invited_at >= ts(accept) - 0.05
    outbound = [e for e in obs.find(created("PJSIP/caller-"))
                if e["channel"]["id"] != chan]
    assert len(outbound) == 1 and ts(outbound[0]) >= ts(accept)
    cust_chan = str(outbound[0]["channel"]["id"])
    # Nothing else was dialled at any time (no carrier, no other endpoint).
    assert {str(e["channel"]["name"]).split("-")[0] for e in obs.find(created("PJSIP/"))} \
        == {"PJSIP/caller", f"PJSIP/{qs.inst.reg_user}"}

    await until(lambda: bool(bridged(obs, agent_chan)) and bool(bridged(obs, cust_chan)), 20)
    assert bridged(obs, agent_chan)[0]["bridge"]["id"] == bridged(obs, cust_chan)[0]["bridge"]["id"]
    # The customer hangs up after talking; the agent's call is ended too.
    [done] = await caller.wait_for_calls(1, 20, lambda c: c.ended)
    assert done.answered_at is not None and done.bye_sent_at is not None
    [agent_call] = await agent_phone.wait_for_calls(1, 20, lambda c: c.ended)
    assert agent_call.bye_received_at is not None
    await until(lambda: qs.stored()[0][2] == "done", 20)
    assert qs.stored() == [("support", "callback", "done", "+12015550123", 1)]


async def _console_sees_callback(qs: QuickStart, item_id: str) -> None:
    logins = quickstart.console_passwords(qs.state)
    assert qs.state.joinpath(quickstart.PASSWORDS_FILE).stat().st_mode & 0o777 == 0o600
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(f"{qs.api}/api/login", json={
                "login": quickstart.DEMO_SUPERVISOR,
                "password": logins[quickstart.DEMO_SUPERVISOR]}) as r:
            assert r.status == 200
        async with http.get(f"{qs.api}/api/wallboard") as r:
            board = await r.json()
        assert [i["id"] for i in api.queue(board, "support")["items"]] == [item_id]
        async with http.post(f"{qs.api}/api/login", json={
                "login": quickstart.DEMO_AGENT, "password": logins[quickstart.DEMO_AGENT]}) as r:
            assert r.status == 200 and (await r.json())["agent"] == quickstart.DEMO_AGENT


async def _wait_api(qs: QuickStart, path: str, cond: Callable[[Any], bool],
                    timeout: float = 20) -> Any:
    """Until the API's answer on ``path`` satisfies ``cond``; that answer."""
    body: list[Any] = []

    async def holds() -> bool:
        body[:] = [await qs.get(path)]
        return cond(body[0])

    await until_async(holds, timeout, lambda: f"{path}: {body[0]}", every=0.1)
    return body[0]
