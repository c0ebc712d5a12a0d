"""Faults on the real Asterisk 22: the service killed (SIGKILL) or stopped (SIGTERM) in
the middle of the work, a carrier trunk that never answers SIP, Asterisk itself
restarting, and a chaos run of 50 callers with a crash in the middle.

The service runs as a subprocess (``python -m ivr.cli run config.yaml``), as an operator
runs it, so signals are real. Every assertion is about what Asterisk did (the independent
ARI observer, ``GET /channels`` / ``GET /bridges``, what the sipp peers saw) or about the
SQLite store the service writes; the service's own logs are kept for debugging only.
Each test has its own DID (78xx, queue ``q78xx``) and its own caller numbers (valid US
numbers, stored in E.164). No fixed sleeps: every wait is for an event, with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rig.sandbox import AsteriskInstance, die_with_parent_preexec, free_port
from tests.peers import (
    BUSY,
    RING_FOREVER,
    TRUNK_503,
    TRUNK_SILENT,
    CallBehaviour,
    CallPlan,
    FaultyCarrier,
    PlannedCallResult,
    ReceivedCall,
    SipCaller,
    SipCallers,
    SipCarrier,
    SipPhone,
    TrunkFault,
)
from tests.support import api
from tests.support.asterisk import finish_asterisk, start_asterisk
from tests.support.config import CB_QUEUE, agents_cfg, write_config
from tests.support.observer import AriObserver, Event
from tests.support.observing import (
    caller_channel,
    destroyed,
    is_playback,
    is_type,
    playback_chan,
    ts,
)
from tests.support.service import until_healthy
from tests.support.store import e164
from tests.support.waiting import until, until_async

pytestmark = pytest.mark.asterisk

REPO = Path(__file__).resolve().parent.parent
TOKEN = "faults-test-token"
# The agent answers, presses 1 during the preview, and stays on the line.
ACCEPT = CallBehaviour(answer_after=0.3, digits=[(0.8, "1")])
GRACE = 10.0  # the service's SIGTERM grace period (spec)
OPEN = ("waiting", "offered", "callback_pending", "dialling")
TRUNK_TRYING = TrunkFault(reply="trying")
QUIET_4S = TrunkFault(reply="silent", max_duration=4.0)  # a late 408 at 4 s


# ---------------------------------------------------------------------- the service


class ServiceProcess:
    """``python -m ivr.cli run CONFIG`` in its own process, its output in a log file."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ivr.cli", "run", str(self.config)],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent_preexec(),
            )

    def tail(self, n: int = 60) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""

    async def healthy(self, timeout: float = 30.0) -> None:
        """Until /healthz answers 200 (the ARI websocket is up and the resync done)."""
        proc = self.proc
        assert proc is not None
        await until_healthy(self.url + "/healthz", lambda: proc.poll() is None, self.tail,
                            timeout)

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as http, http.request(
            method, self.url + path, json=body
        ) as resp:
            text = await resp.text()
            assert resp.status < 300, f"{method} {path}: {resp.status} {text}"
            return json.loads(text) if resp.content_type == "application/json" else text

    async def set_ready(self, agent: str, ready: bool) -> None:
        await self.request("POST", f"/api/agents/{agent}/state", {"ready": ready})

    async def metric(self, event: str) -> int | None:
        text = await self.request("GET", "/metrics")
        value = api.metric(str(text), "ivr_events_total", event=event)
        return None if value is None else int(value)

    def signal(self, sig: int) -> float:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return time.time()

    async def exited(self, timeout: float) -> int:
        proc = self.proc
        assert proc is not None
        await until(lambda: proc.poll() is not None, timeout,
                    lambda: f"service still running\n{self.tail()}", every=0.02)
        return proc.returncode

    async def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        assert await self.exited(10) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Rig:
    """One test's service config and the processes started from it."""

    inst: AsteriskInstance
    tmp: Path
    db: Path
    config: Path
    port: int
    made: list[ServiceProcess]

    def service(self) -> ServiceProcess:
        svc = ServiceProcess(self.config, self.port, self.tmp / f"service-{len(self.made)}.log")
        self.made.append(svc)
        svc.start()
        return svc


@pytest.fixture
def rig(asterisk: AsteriskInstance, tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    """``rig(queues, agents, inst=...)``: writes the config; ``.service()`` starts one."""
    rigs: list[Rig] = []

    def make(queues: Mapping[str, Mapping[str, Any]],
             agents: Mapping[str, Mapping[str, Any]] | None = None,
             inst: AsteriskInstance | None = None, **top: Any) -> Rig:
        inst = inst or asterisk
        port = free_port(udp=False)
        http = {"bind": "127.0.0.1", "port": port, "api_token": TOKEN}
        cfg = write_config(inst, tmp_path, queues, agents, http=http, **top)
        r = Rig(inst, tmp_path, cfg.store_path, tmp_path / "config.yaml", port, [])
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        for svc in r.made:
            svc.stop()


@pytest.fixture(autouse=True)
async def _nothing_of_ours_left(asterisk: AsteriskInstance) -> AsyncIterator[None]:
    """A test that failed midway (or a product bug) may leave channels in the shared
    Asterisk: a caller whose sipp was killed stays in Stasis for ever, and the next
    test's service would adopt it. Hang up what this test created, destroy its bridges."""
    obs = AriObserver(asterisk)
    before_ch = {c["id"] for c in await channels(obs)}
    before_br = {b["id"] for b in await ari(obs, "GET", "/bridges")}
    yield
    for c in await channels(obs):
        if c["id"] not in before_ch:
            with contextlib.suppress(AssertionError):
                await ari(obs, "DELETE", f"/channels/{c['id']}")
    for b in await ari(obs, "GET", "/bridges"):
        if b["id"] not in before_br:
            with contextlib.suppress(AssertionError):
                await ari(obs, "DELETE", f"/bridges/{b['id']}")


# ---------------------------------------------------------------------- the store


@dataclass
class Row:
    id: str
    kind: str
    state: str
    number: str | None
    attempts: int
    arrived_at: float
    seq: int
    offered_to: str | None
    channel_id: str | None


def rows(db: Path, queue: str) -> list[Row]:
    """Every stored item of the queue, in queue order (a second connection)."""
    assert db.exists(), db
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        got = conn.execute(
            "SELECT id, kind, state, number, attempts, arrived_at, seq, offered_to, channel_id"
            " FROM items WHERE queue = ? ORDER BY arrived_at, seq", (queue,)).fetchall()
    return [Row(*r) for r in got]


def row_for(db: Path, queue: str, number: str) -> Row:
    found = [r for r in rows(db, queue) if r.number == e164(number)]
    assert len(found) == 1, f"{len(found)} items for {number}: {found}"
    return found[0]


def history(db: Path, item_id: str) -> list[tuple[str, dict[str, str]]]:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        got = conn.execute("SELECT event, detail FROM history WHERE item_id = ? ORDER BY idx",
                           (item_id,)).fetchall()
    return [(str(ev), json.loads(detail)) for ev, detail in got]


def stored(db: Path, queue: str, number: str) -> Callable[[], bool]:
    return lambda: any(x.number == e164(number) for x in rows(db, queue))


def events_of(db: Path, item_id: str) -> list[str]:
    return [ev for ev, _ in history(db, item_id)]


# ---------------------------------------------------------------------- Asterisk


def entered(chan: str, bridge: str) -> Callable[[Event], bool]:
    return lambda e: is_type(e, "ChannelEnteredBridge", chan) and e["bridge"]["id"] == bridge


async def leg_chan(obs: AriObserver, prefix: str, nth: int = 1, timeout: float = 30) -> str:
    """The ``nth`` channel created whose name starts with ``prefix`` (``PJSIP/agent1-``)."""
    def made() -> list[Event]:
        return obs.find(lambda e: is_type(e, "ChannelCreated")
                        and str(e["channel"]["name"]).startswith(prefix))
    await until(lambda: len(made()) >= nth, timeout, f"channel {nth} named {prefix}*")
    return str(made()[nth - 1]["channel"]["id"])


async def customer_chan(obs: AriObserver, number: str, nth: int = 1, timeout: float = 30) -> str:
    """The ``nth`` outbound leg dialled to ``number`` through the trunk (its Dial event)."""
    def dials() -> list[str]:
        out: list[str] = []
        for e in obs.events:
            peer = e.get("peer") or {}
            if e.get("type") == "Dial" and e.get("dialstatus") == "" \
                    and number in str(e.get("dialstring", "")) and peer.get("id") not in out:
                out.append(str(peer["id"]))
        return out
    await until(lambda: len(dials()) >= nth, timeout, f"dial {nth} to {number}")
    return dials()[nth - 1]


async def ari(obs: AriObserver, method: str, path: str, **kw: Any) -> Any:
    async with aiohttp.ClientSession(headers=obs.headers) as http, http.request(
        method, f"{obs.instance.ari_url}/ari{path}", **kw
    ) as resp:
        text = await resp.text()
        assert resp.status < 300, f"{method} {path}: {resp.status} {text}"
        return json.loads(text) if text else None


async def channels(obs: AriObserver) -> list[dict[str, Any]]:
    return list(await ari(obs, "GET", "/channels"))


async def request_callback(sip_caller: Callable[..., SipCaller], obs: AriObserver, did: str,
                           number: str) -> str:
    """A caller waits, hears the offer, presses 1, hears the confirmation and is hung up
    on. Returns the caller's channel. ``sip_caller`` makes the caller: the fixture, or
    ``functools.partial(SipCaller, inst)`` on a test's own Asterisk."""
    c = sip_caller(did, caller=number, digits=[(1.6, "1")], max_duration=30)
    c.start()
    try:
        chan, _ = await caller_channel(obs, number)
        result = await c.wait(30)
        assert result.hung_up_by == "them", c.describe()
        assert obs.find(lambda e: is_playback(e, "PlaybackStarted", chan, "en/minutes"))
    finally:
        c.stop()
    return chan


def answered(c: ReceivedCall) -> bool:
    return c.answered_at is not None


def ended(c: ReceivedCall) -> bool:
    return c.ended


# ====================================================================== SIGKILL mid-preview


async def test_sigkill_mid_preview_returns_the_offer_and_dials_once(
    asterisk: AsteriskInstance, ari_observer: AriObserver, rig: Callable[..., Rig],
    sip_phone: Callable[..., SipPhone], sip_carrier: Callable[..., SipCarrier],
    sip_caller: Callable[..., SipCaller],
) -> None:
    """The agent answered and hears the preview; the service is SIGKILLed. Asterisk
    keeps the agent channel; the new instance hangs that stray leg up, the callback is
    back where it was (before the later one), is offered again, and on the accept the
    customer is dialled exactly once."""
    obs = ari_observer
    r = rig({"q7801": {**CB_QUEUE, "preview_timeout": "30s"}}, agents_cfg("agent1", queue="q7801"))
    first, second = "2015550401", "2015550402"
    svc = r.service()
    await svc.healthy()
    await svc.set_ready("agent1", False)
    phone = sip_phone("agent1", behaviours=[
        CallBehaviour(answer_after=0.3),  # listens to the preview, presses nothing
        CallBehaviour(answer_after=0.3, digits=[(0.8, "1")]),
    ])
    carrier = sip_carrier(behaviours=CallBehaviour(answer_after=0.5, hangup_after=1.5))
    await request_callback(sip_caller, obs, "7801", first)
    await request_callback(sip_caller, obs, "7801", second)
    before = row_for(r.db, "q7801", first)
    assert before.state == "callback_pending"

    await svc.set_ready("agent1", True)
    await phone.wait_for_calls(1, 20, answered)
    agent_leg = await leg_chan(obs, "PJSIP/agent1-")
    await obs.wait_for(lambda e: is_playback(e, "PlaybackStarted", agent_leg, "en/preview_intro"))
    await svc.kill9()

    # Nobody drives the agent's channel now, but Asterisk keeps it (in Stasis).
    assert agent_leg in [c["id"] for c in await channels(obs)]
    assert not destroyed(obs, agent_leg)
    killed = row_for(r.db, "q7801", first)
    assert (killed.state, killed.offered_to) == ("offered", "agent1")

    svc2 = r.service()
    await svc2.healthy()
    await obs.wait_type("ChannelDestroyed", channel_id=agent_leg, timeout=10)
    stray = (await phone.wait_for_calls(1, 10, ended))[0]
    assert stray.bye_received_at is not None  # hung up by us, not by the phone
    assert carrier.calls() == []  # nothing was dialled for the lost preview

    # Offered again -- the earlier callback first: it kept its place -- and accepted.
    calls = await phone.wait_for_calls(2, 30, answered)
    assert calls[1].from_number.endswith(first), calls[1]
    [dialled] = await carrier.wait_for_calls(1, 30)
    assert dialled.dialled == e164(first)
    await until(lambda: row_for(r.db, "q7801", first).state == "done", 30, "callback done")
    done = row_for(r.db, "q7801", first)
    assert (done.arrived_at, done.seq, done.attempts) == (before.arrived_at, before.seq, 1)
    evs = events_of(r.db, done.id)
    assert evs.index("offer_lost_on_restart") < evs.index("dial_started"), evs
    assert evs.count("dial_started") == 1
    # The later callback is served after it, and each customer was dialled exactly once.
    await carrier.wait_for_calls(2, 40, ended)
    await until(lambda: row_for(r.db, "q7801", second).state == "done", 30, "second done")
    assert [c.dialled for c in carrier.calls()] == [e164(first), e164(second)]


# ====================================================================== SIGKILL mid-dial


async def test_sigkill_mid_dial_keeps_the_attempt_and_redials_once(
    asterisk: AsteriskInstance, ari_observer: AriObserver, rig: Callable[..., Rig],
    sip_phone: Callable[..., SipPhone], sip_carrier: Callable[..., SipCarrier],
    sip_caller: Callable[..., SipCaller],
) -> None:
    """The customer's phone rings (the agent accepted); SIGKILL. The new instance hangs
    up both stray legs (the agent's and the ringing customer's -- long before the 30 s
    dial timeout would), keeps the attempt counted, and redials the same item later:
    never while the first call still rings, and no second item appears."""
    obs = ari_observer
    number = "2015550403"
    r = rig({"q7802": CB_QUEUE}, agents_cfg("agent1", queue="q7802"),
            outbound={"dial": "PJSIP/{number}@carrier", "dial_timeout": "30s"})
    svc = r.service()
    await svc.healthy()
    await svc.set_ready("agent1", False)
    phone = sip_phone("agent1", behaviours=ACCEPT)
    carrier = sip_carrier(behaviours=[RING_FOREVER,
                                      CallBehaviour(answer_after=0.5, hangup_after=1.5)])
    await request_callback(sip_caller, obs, "7802", number)
    await svc.set_ready("agent1", True)
    [ringing] = await carrier.wait_for_calls(1, 30)
    assert ringing.dialled == e164(number)
    agent_leg = await leg_chan(obs, "PJSIP/agent1-")
    customer_leg = await customer_chan(obs, e164(number))
    await until(lambda: row_for(r.db, "q7802", number).state == "dialling", 10, "dialling")
    await svc.kill9()

    killed = row_for(r.db, "q7802", number)
    assert (killed.state, killed.attempts) == ("dialling", 1)
    assert {agent_leg, customer_leg} <= {c["id"] for c in await channels(obs)}

    svc2 = r.service()
    await svc2.healthy()
    restarted = time.time()
    await obs.wait_type("ChannelDestroyed", channel_id=agent_leg, timeout=10)
    await obs.wait_type("ChannelDestroyed", channel_id=customer_leg, timeout=10)
    [cancelled] = await carrier.wait_for_calls(1, 10, lambda c: c.cancelled_at is not None)
    assert cancelled.cancelled_at is not None and cancelled.cancelled_at - restarted < 10

    # Redialled later (eligible again at once: the agent is free), after the first call
    # stopped ringing; the attempt of the lost call stays counted.
    calls = await carrier.wait_for_calls(2, 40, ended)
    assert [c.dialled for c in calls] == [e164(number)] * 2
    assert calls[0].cancelled_at is not None and calls[1].invited_at >= calls[0].cancelled_at
    await until(lambda: row_for(r.db, "q7802", number).state == "done", 30, "done")
    done = row_for(r.db, "q7802", number)  # one item for the number: no duplicate
    assert done.attempts == 2 and done.id == killed.id
    hist = history(r.db, done.id)
    lost = [ev for ev, _ in hist].index("dial_lost_on_restart")
    assert [d.get("attempt") for ev, d in hist if ev == "dial_started"] == ["1", "2"]
    assert [ev for ev, _ in hist][lost:].count("dial_started") == 1
    assert len(phone.calls()) == 2


# ====================================================================== SIGTERM: graceful stop


async def test_sigterm_stops_gracefully_and_the_next_instance_takes_over(
    asterisk: AsteriskInstance, ari_observer: AriObserver, rig: Callable[..., Rig],
    sip_phone: Callable[..., SipPhone], sip_carrier: Callable[..., SipCarrier],
    sip_caller: Callable[..., SipCaller],
) -> None:
    """Three callers wait, the first one's agent is being rung, a fourth has pressed 1
    and hears the confirmation; SIGTERM. The process lets the fourth hear the
    confirmation to its end and hangs it up, makes no new offer, returns the ringing
    offer (committed), leaves the waiting callers in Stasis and exits 0 within the grace
    period; the next instance serves them in their original order, then the callback."""
    obs = ari_observer
    numbers = ["2015550411", "2015550412", "2015550413"]
    presser = "2015550414"
    # The real confirmation (6.5 s): the stop must wait for it, within the grace.
    r = rig({"q7803": {"max_waiting": 1, "ring_timeout": "30s", "first_offer_after": "2s",
                       "repeat_offer_every": "4s", "prompts": {"offer": "en/connecting"}}},
            agents_cfg("agent1", queue="q7803"))
    phone = sip_phone("agent1", behaviours=[
        RING_FOREVER, CallBehaviour(answer_after=0.3, digits=[(0.6, "1")], hangup_after=1.5)])
    carrier = sip_carrier(behaviours=CallBehaviour(answer_after=0.3, hangup_after=1.0))
    svc = r.service()
    await svc.healthy()
    callers = [sip_caller("7803", caller=n, max_duration=90) for n in numbers]
    pressing = sip_caller("7803", caller=presser, digits=[(2.5, "1")], max_duration=60)
    chans: list[str] = []
    for n, c in zip(numbers, callers, strict=True):
        c.start()
        chans.append((await caller_channel(obs, n))[0])
        await c.wait_answered(20)
        await until(stored(r.db, "q7803", n), 10, "arrival stored")
    [ring] = await phone.wait_for_calls(1, 20)
    assert ring.from_number.endswith(numbers[0])
    pressing.start()
    presser_chan, _ = await caller_channel(obs, presser)
    await obs.wait_for(lambda e: is_playback(e, "PlaybackStarted", presser_chan,
                                             "en/confirmation"), 20)
    before = rows(r.db, "q7803")
    assert [x.state for x in before] == ["offered", "waiting", "waiting",
                                         "callback_pending"]

    sent = svc.signal(signal.SIGTERM)
    assert await svc.exited(GRACE + 1.0) == 0, svc.tail()
    gone = time.time()
    # The press-1 in flight finished: the confirmation to its end, then our BYE.
    [heard] = obs.find(lambda e: is_playback(e, "PlaybackFinished", presser_chan,
                                             "en/confirmation"))
    assert heard["playback"]["state"] == "done"
    result = await pressing.wait(10)
    assert result.hung_up_by == "them" and result.bye_received_at is not None
    assert ts(heard) - 0.2 <= result.bye_received_at <= gone + 0.2
    # The ringing agent leg was hung up and its offer returned, durably.
    [cancelled] = await phone.wait_for_calls(1, 10, lambda c: c.cancelled_at is not None)
    assert cancelled.cancelled_at is not None and cancelled.cancelled_at <= gone + 0.5
    after = rows(r.db, "q7803")
    assert [(x.id, x.state, x.offered_to) for x in after] == [
        (x.id, "waiting", None) for x in before[:3]] + [
        (before[3].id, "callback_pending", None)]
    # No new offer once stopping; the waiting callers stay up, in Stasis.
    late = obs.find(lambda e: is_playback(e, "PlaybackStarted", file="en/connecting")
                    and playback_chan(e) in chans and ts(e) > sent + 0.1)
    assert late == []
    assert not any(destroyed(obs, ch) for ch in chans)
    assert set(chans) <= {c["id"] for c in await channels(obs)}

    svc2 = r.service()
    await svc2.healthy()
    queue = api.queue(await svc2.request("GET", "/api/queues"), "q7803")["items"]
    assert [i["id"] for i in queue] == [x.id for x in before]
    # Served in order, one at a time, by the only agent: the three, then the callback.
    calls = await phone.wait_for_calls(5, 60)
    assert [c.from_number[-10:] for c in calls[1:]] == [*numbers, presser]
    for c in callers:
        assert (await c.wait(30)).hung_up_by == "them"
    [dialled] = await carrier.wait_for_calls(1, 30)
    assert dialled.dialled == e164(presser)
    await until(lambda: [x.state for x in rows(r.db, "q7803")] == ["connected"] * 3
                + ["done"], 30, "all served")


# ====================================================================== trunk faults


def _dial_story(obs: AriObserver, chan: str) -> tuple[list[str], bool, Event]:
    dials = [str(e["dialstatus"]) for e in obs.events
             if e.get("type") == "Dial" and (e.get("peer") or {}).get("id") == chan]
    rang = any(is_type(e, "ChannelStateChange", chan) and e["channel"]["state"] == "Ringing"
               for e in obs.events)
    [gone] = obs.find(lambda e: is_type(e, "ChannelDestroyed", chan))
    return dials, rang, gone


async def test_facts_what_asterisk_reports_for_trunk_outcomes(
    asterisk: AsteriskInstance, ari_observer: AriObserver,
) -> None:
    """FACTS the trunk-failure classification rests on (Asterisk 22, chan_pjsip), by an
    originate through the trunk with a 3 s timeout. A silent carrier and a ringing phone
    that is not answered end the same way (cause 19, tech_cause 480, at the originate
    timeout): only the missing RINGING tells them apart."""
    obs = ari_observer
    cases: list[tuple[CallBehaviour, list[str], bool, int, int]] = [
        # behaviour,            Dial dialstatus values, rang, cause, tech_cause
        (QUIET_4S,              [""],                 False, 19, 480),
        (TRUNK_TRYING,          [""],                 False, 19, 480),
        (TRUNK_503,             ["", "CONGESTION"],   False, 34, 503),
        (RING_FOREVER,          ["", "RINGING"],      True,  19, 480),
        (BUSY,                  ["", "BUSY"],         False, 17, 486),
    ]  # fmt: skip
    carrier = FaultyCarrier(asterisk, [c[0] for c in cases])
    carrier.start()
    try:
        for i, (behaviour, dials, rang, cause, tech) in enumerate(cases):
            number = f"+1201555048{i}"
            t0 = time.time()
            ch = await ari(obs, "POST", "/channels", json={
                "endpoint": f"PJSIP/{number}@carrier", "app": obs.app,
                "appArgs": "customer,facts", "timeout": 3})
            await obs.wait_type("ChannelDestroyed", channel_id=ch["id"], timeout=15)
            got_dials, got_rang, gone = _dial_story(obs, ch["id"])
            took = ts(gone) - t0
            assert (got_dials, got_rang, gone["cause"], gone.get("tech_cause")) == (
                dials, rang, cause, tech), (behaviour, took)
            assert (took > 2.5) == (cause == 19), took  # 19: the originate timeout
        # (The silent carrier's late 408, after the call was gone, only ends the INVITE
        # transaction Asterisk keeps retransmitting up to Timer B.)
        calls = await carrier.wait_for_calls(len(cases), 10, ended)
        assert [c.rejected_with for c in calls] == [408, None, 503, None, 486]
        assert [c.cancelled_at is not None for c in calls] == [False, True, False, True, False]
    finally:
        carrier.stop()


async def test_trunk_that_never_answers_is_a_trunk_failure_not_an_attempt(
    asterisk: AsteriskInstance, ari_observer: AriObserver, rig: Callable[..., Rig],
    sip_phone: Callable[..., SipPhone], sip_caller: Callable[..., SipCaller],
) -> None:
    """Attempt 1: the carrier swallows the INVITE (no response at all); attempt 2: it
    answers 503. Both are trunk failures: recorded as such, counted in /metrics, the
    agent hears the failure notice and is freed -- and neither uses up one of the
    customer's two attempts, so attempt 3 still happens and connects."""
    obs = ari_observer
    number = "2015550421"
    r = rig({"q7804": {**CB_QUEUE, "max_attempts": 2, "retry_interval": "2s"}},
            agents_cfg("agent1", queue="q7804"))
    svc = r.service()
    await svc.healthy()
    await svc.set_ready("agent1", False)
    phone = sip_phone("agent1", behaviours=ACCEPT)
    carrier = FaultyCarrier(asterisk, [TRUNK_SILENT, TRUNK_503,
                                       CallBehaviour(answer_after=0.5, hangup_after=1.5)])
    carrier.start()
    try:
        await request_callback(sip_caller, obs, "7804", number)
        await svc.set_ready("agent1", True)
        await carrier.wait_for_calls(1, 60, answered)
        calls = carrier.calls()
        assert [c.dialled for c in calls] == [e164(number)] * 3
        assert calls[1].rejected_with == 503 and calls[2].answered_at is not None
        await until(lambda: row_for(r.db, "q7804", number).state == "done", 30, "done")
        item = row_for(r.db, "q7804", number)
        hist = history(r.db, item.id)
        failures = [d.get("reason") for ev, d in hist if ev in ("dial_failed", "failed")]
        assert failures == ["trunk_failure", "trunk_failure"], hist
        assert item.attempts == 1  # only the call that reached the customer counts
        assert await svc.metric("trunk_failures") == 2

        # Each failed attempt: the agent hears the notice to its end and is hung up.
        def notices() -> list[Event]:
            return obs.find(lambda e: is_playback(e, "PlaybackFinished", file="en/callback_failed"))
        await until(lambda: len(notices()) == 2, 20, "two failure notices")
        assert all(n["playback"]["state"] == "done" for n in notices())
        agent_calls = await phone.wait_for_calls(3, 20)
        assert all(c.bye_received_at is not None for c in agent_calls[:2])
        legs = [await leg_chan(obs, "PJSIP/agent1-", k) for k in (1, 2)]
        assert sorted(playback_chan(n) for n in notices()) == sorted(legs)
    finally:
        carrier.stop()


# ====================================================================== Asterisk restarts


async def test_asterisk_restart_under_the_service_then_the_callback_is_dialled(
    rig: Callable[..., Rig],
) -> None:
    """Asterisk restarts under the running service (a separate instance): the service
    reconnects by itself; the live caller Asterisk lost is abandoned; the confirmed
    callback stays and is dialled once an agent is ready."""
    inst = start_asterisk()
    obs = AriObserver(inst)
    await obs.start()
    peers: list[Any] = []
    try:
        cb_number, live_number = "2015550431", "2015550432"
        r = rig({"q7805": CB_QUEUE}, agents_cfg("agent1", queue="q7805"), inst=inst)
        svc = r.service()
        await svc.healthy()
        await svc.set_ready("agent1", False)
        await request_callback(functools.partial(SipCaller, inst), obs, "7805", cb_number)
        live = SipCaller(inst, "7805", caller=live_number, max_duration=90)
        peers.append(live)
        live.start()
        await caller_channel(obs, live_number)
        await until(lambda: len(rows(r.db, "q7805")) == 2, 10, "both stored")
        await obs.close()

        await asyncio.to_thread(inst.restart)
        await until_async(lambda: reconnected(svc), 60, "service reconnected")
        await svc.healthy()
        await until(lambda: row_for(r.db, "q7805", live_number).state == "abandoned", 30,
                    "lost caller abandoned")
        kept = row_for(r.db, "q7805", cb_number)
        assert (kept.kind, kept.state, kept.attempts) == ("callback", "callback_pending", 0)

        obs = AriObserver(inst)
        await obs.start()
        phone = SipPhone(inst, "agent1", behaviours=ACCEPT)
        carrier = SipCarrier(inst, CallBehaviour(answer_after=0.5, hangup_after=1.5))
        peers += [phone, carrier]
        phone.start()
        carrier.start()
        await svc.set_ready("agent1", True)
        [dialled] = await carrier.wait_for_calls(1, 30, ended)
        assert dialled.dialled == e164(cb_number) and dialled.answered_at is not None
        await until(lambda: row_for(r.db, "q7805", cb_number).state == "done", 30, "done")
    finally:
        for p in peers:
            p.stop()
        await obs.close()
        finish_asterisk(inst)


async def reconnected(svc: ServiceProcess) -> bool:
    try:
        text = await svc.request("GET", "/metrics")
    except (aiohttp.ClientError, AssertionError):
        return False
    return (api.metric(str(text), "ivr_ari_reconnects_total") or 0) >= 1


# ====================================================================== conversations survive


async def test_conversations_bridged_by_the_killed_instance_are_kept(
    asterisk: AsteriskInstance, ari_observer: AriObserver, rig: Callable[..., Rig],
    sip_phone: Callable[..., SipPhone], sip_carrier: Callable[..., SipCarrier],
    sip_caller: Callable[..., SipCaller],
) -> None:
    """Two conversations are up when the service is SIGKILLed: agent1 with a callback
    customer, agent2 with a live caller. The new instance hangs neither up; when one side
    of each leaves (the customer, then agent2), it hangs up the other side and destroys
    the bridge."""
    obs = ari_observer
    cb_number, live_number = "2015550441", "2015550442"
    r = rig({"q7807": CB_QUEUE}, agents_cfg("agent1", "agent2", queue="q7807"))
    svc = r.service()
    await svc.healthy()
    await svc.set_ready("agent1", False)
    await svc.set_ready("agent2", False)
    phone1 = sip_phone("agent1", behaviours=ACCEPT)
    phone2 = sip_phone("agent2", behaviours=CallBehaviour(answer_after=0.3))
    carrier = sip_carrier(behaviours=CallBehaviour(answer_after=0.5))
    live = sip_caller("7807", caller=live_number, max_duration=90)
    await request_callback(sip_caller, obs, "7807", cb_number)
    live.start()
    live_chan, _ = await caller_channel(obs, live_number)
    await until(lambda: len(rows(r.db, "q7807")) == 2, 10, "both stored")
    await svc.set_ready("agent1", True)  # the callback (earlier) goes to agent1
    customer = await customer_chan(obs, e164(cb_number))
    await until(lambda: row_for(r.db, "q7807", cb_number).state == "done", 30, "bridged")
    await svc.set_ready("agent2", True)
    await until(lambda: row_for(r.db, "q7807", live_number).state == "connected", 30,
                "caller bridged")
    agent1 = await leg_chan(obs, "PJSIP/agent1-")
    agent2 = await leg_chan(obs, "PJSIP/agent2-")
    bridges: dict[str, str] = {}
    for a, b in ((agent1, customer), (agent2, live_chan)):
        ev = await obs.wait_type("ChannelEnteredBridge", channel_id=b)
        bridges[a] = str(ev["bridge"]["id"])
        await obs.wait_for(entered(a, bridges[a]))
    await svc.kill9()

    svc2 = r.service()
    await svc2.healthy()  # its resync is done
    up = {c["id"] for c in await channels(obs)}
    assert {agent1, customer, agent2, live_chan} <= up
    assert {b["id"] for b in await ari(obs, "GET", "/bridges")} >= set(bridges.values())

    # The customer hangs up (the network drops the call): agent1 is hung up too.
    await ari(obs, "DELETE", f"/channels/{customer}")
    await obs.wait_type("ChannelDestroyed", channel_id=agent1, timeout=10)
    await obs.wait_for(lambda e: is_type(e, "BridgeDestroyed")
                       and e["bridge"]["id"] == bridges[agent1], 10)
    assert not destroyed(obs, live_chan) and not destroyed(obs, agent2)
    # agent2 hangs up: the caller is hung up too.
    await ari(obs, "DELETE", f"/channels/{agent2}")
    await obs.wait_type("ChannelDestroyed", channel_id=live_chan, timeout=10)
    await obs.wait_for(lambda e: is_type(e, "BridgeDestroyed")
                       and e["bridge"]["id"] == bridges[agent2], 10)
    assert (await live.wait(20)).hung_up_by == "them"
    [a1] = await phone1.wait_for_calls(1, 10, ended)
    assert a1.bye_received_at is not None
    assert len(carrier.calls()) == 1 and len(phone2.calls()) == 1


# ====================================================================== chaos


@dataclass
class Plan:
    call: CallPlan
    kind: str  # "press1", "keys", "early1", "hangup"


def chaos_plans(rng: random.Random, numbers: Sequence[str]) -> list[Plan]:
    """Seeded: most press 1 (at a random time after the first offer), some press other
    keys and wait to be served, some press 1 too early (ignored), some hang up early."""
    out: list[Plan] = []
    for n in numbers:
        roll = rng.random()
        if roll < 0.5:
            out.append(Plan(CallPlan(n, infos=[(rng.uniform(2.3, 9.0), "1")], max_duration=45),
                            "press1"))
        elif roll < 0.65:
            keys = [(rng.uniform(0.5, 8.0), rng.choice("0345789*#")) for _ in range(2)]
            out.append(Plan(CallPlan(n, infos=keys, max_duration=rng.uniform(25, 45)), "keys"))
        elif roll < 0.75:
            out.append(Plan(CallPlan(n, infos=[(rng.uniform(0.3, 1.2), "1")],
                                     max_duration=rng.uniform(25, 45)), "early1"))
        else:
            at = rng.uniform(0.8, 8.0)
            infos = [(max(0.2, at - rng.uniform(0.1, 1.0)), "1")] if rng.random() < 0.4 else []
            out.append(Plan(CallPlan(n, infos=infos, hangup_after=at, max_duration=45),
                            "hangup"))
    return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
async def test_chaos_fifty_callers_and_a_crash(
    asterisk: AsteriskInstance, ari_observer: AriObserver, rig: Callable[..., Rig],
    sip_phone: Callable[..., SipPhone], sip_carrier: Callable[..., SipCarrier],
    sig: signal.Signals,
) -> None:
    """50 callers from four sipp processes (seeded plans), two agents accepting, a
    carrier answering; the service is SIGKILLed (or SIGTERMed: it drains and exits 0
    within the grace) as a caller starts hearing the confirmation (the eighth), and a new
    one started at once. When all calls are over: no channel and no
    bridge of ours is left in Asterisk; every caller who heard the confirmation has
    exactly one callback item (open or done); no number has two open callbacks; only
    callers who pressed 1 have one."""
    obs = ari_observer
    rng = random.Random(7806)
    numbers = [f"20155501{i:02d}" for i in range(50)]
    plans = chaos_plans(rng, numbers)
    r = rig({"q7806": {"max_waiting": 1, "first_offer_after": "2s", "repeat_offer_every": "4s",
                       "ring_timeout": "4s", "preview_timeout": "6s", "retry_interval": "2s",
                       "max_attempts": 3, "prompts": {"offer": "en/connecting"}}},
            agents_cfg("agent1", "agent2", queue="q7806"))
    talk = CallBehaviour(answer_after=0.2, digits=[(0.5, "1")], hangup_after=2.0)
    sip_phone("agent1", behaviours=talk)
    sip_phone("agent2", behaviours=talk)
    carrier = sip_carrier(behaviours=CallBehaviour(answer_after=0.3, hangup_after=3.0))
    svc = r.service()
    await svc.healthy()
    groups = [SipCallers(asterisk, "7806", [p.call for p in plans[k::4]], interval=0.8,
                         label=f"chaos{k}") for k in range(4)]
    try:
        for g in groups:
            g.start()

        def confirmations() -> list[Event]:
            return obs.find(lambda e: is_playback(e, "PlaybackStarted", file="en/confirmation"))

        await until(lambda: len(confirmations()) >= 8, 60, "eight confirmations")
        if sig == signal.SIGKILL:
            await svc.kill9()
        else:
            svc.signal(sig)
            assert await svc.exited(GRACE + 1.0) == 0, svc.tail()
        svc2 = r.service()
        await svc2.healthy()

        results: list[PlannedCallResult] = []
        for g in groups:
            results += await g.wait(120)
        assert len(results) == 50

        app = asterisk.app_name

        async def ours() -> tuple[list[str], list[str]]:
            chans = [f"{c['name']} {c['dialplan']['app_data']}" for c in await channels(obs)
                     if str(c["dialplan"]["app_data"]).startswith(app)
                     or str(c["name"]).startswith(("PJSIP/agent1-", "PJSIP/agent2-"))
                     or c["caller"]["number"] in numbers]
            bridges = [str(b["id"]) for b in await ari(obs, "GET", "/bridges")
                       if b.get("creator") == app]
            return chans, bridges

        async def quiet() -> bool:
            busy = [x for x in rows(r.db, "q7806") if x.state in ("waiting", "offered",
                                                                  "dialling")]
            return not busy and await ours() == ([], [])

        try:
            await until_async(quiet, 60, "no live item, channel or bridge left")
        except TimeoutError:
            left = [(x.number, x.kind, x.state) for x in rows(r.db, "q7806")
                    if x.state in OPEN]
            raise AssertionError(f"left behind: {await ours()} items {left}") from None

        # Every caller who heard the confirmation has exactly one callback, open or done.
        by_chan = {str(e["channel"]["id"]): str(e["channel"]["caller"]["number"])
                   for e in obs.find(lambda e: e.get("type") == "ChannelDialplan"
                                     and e.get("dialplan_app") == "Stasis")}
        confirmed = {by_chan[playback_chan(e)] for e in confirmations()}
        items = rows(r.db, "q7806")
        callbacks: dict[str, list[Row]] = {}
        for x in items:
            if x.kind == "callback" and x.number is not None:
                callbacks.setdefault(x.number, []).append(x)
        wrong = {}
        for n in sorted(confirmed):
            mine = callbacks.get(e164(n), [])
            if len(mine) != 1 or mine[0].state not in (*OPEN, "done"):
                wrong[n] = [(x.state, events_of(r.db, x.id)) for x in mine]
        assert not wrong, wrong
        # No number with two open callbacks; only those who pressed 1 have one.
        assert all(sum(x.state in OPEN for x in xs) <= 1 for xs in callbacks.values())
        pressed = {e164(p.call.number) for p in plans if any(d == "1" for _, d in p.call.infos)}
        assert set(callbacks) <= pressed, set(callbacks) - pressed
        assert len(confirmed) >= 8
    finally:
        for g in groups:
            g.stop()
        carrier.stop()
