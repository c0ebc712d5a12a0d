"""R21 (first part): the app is killed with SIGKILL while callers wait; Asterisk keeps
their channels in Stasis; a new app re-adopts them in their original order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ivr.app import running
from ivr.domain.items import Kind
from rig.sandbox import AsteriskInstance, free_port
from tests.peers import SipCaller
from tests.support.asterisk import finish_asterisk, start_asterisk
from tests.support.config import SHORT, write_config
from tests.support.observer import AriObserver
from tests.support.observing import caller_channel, is_playback, playbacks
from tests.support.service import until_healthy
from tests.support.waiting import until


def _stored_count(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0


async def test_kill_9_then_restart_readopts_waiting_callers(
    asterisk: AsteriskInstance, ari_observer: AriObserver, tmp_path: Path,
    sip_caller: Callable[..., SipCaller],
) -> None:
    queues = {"q7301": {"max_waiting": 1, "max_ewt": None, "first_offer_after": "6s",
                        "repeat_offer_every": "60s", "prompts": SHORT}}
    http: dict[str, str | int] = {"bind": "127.0.0.1", "port": free_port(udp=False)}
    cfg = write_config(asterisk, tmp_path, queues, http=http)
    proc = subprocess.Popen(  # noqa: ASYNC220 - a child we SIGKILL, never waited on long
        [sys.executable, "-m", "ivr.cli", "run", str(tmp_path / "config.yaml")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Until the service answers its health probe (its ARI websocket is up).
    await until_healthy(f"http://127.0.0.1:{http['port']}/healthz", lambda: proc.poll() is None)
    a = sip_caller("7301", caller="2015550301", digits=[(9.0, "1")], max_duration=40)
    b = sip_caller("7301", caller="2015550302", max_duration=40)
    try:
        a.start()
        chan_a, _ = await caller_channel(ari_observer, "2015550301")
        await a.wait_answered(20)
        b.start()
        chan_b, _ = await caller_channel(ari_observer, "2015550302")
        await b.wait_answered(20)
        # Both arrivals committed before the kill (no ARI event marks a commit).
        await until(lambda: _stored_count(cfg.store_path) == 2, 20, "both arrivals stored")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # Both channels are still up in Asterisk, in Stasis, with nobody listening.
    async with running(cfg) as svc:
        await until(lambda: len(svc.engine.items("q7301")) == 2)
        order = [(i.number, i.kind, svc.engine.position(i.id)) for i in svc.engine.items("q7301")]
        assert order == [("+12015550301", Kind.INBOUND, 1), ("+12015550302", Kind.INBOUND, 2)]
        # The re-adopted sessions keep the original offer schedule and take the 1.
        await until(lambda: bool(playbacks(ari_observer, chan_a, "connecting")))
        await until(lambda: bool(playbacks(ari_observer, chan_b, "connecting")))
        await ari_observer.wait_for(lambda e: is_playback(e, "PlaybackFinished", chan_a,
                                                          "minutes"))
        assert (await a.wait(30)).hung_up_by == "them"
        [cb, live] = svc.engine.items("q7301")
        assert (cb.kind, cb.number, svc.engine.position(cb.id)) == (
            Kind.CALLBACK, "+12015550301", 1)
        assert (live.number, svc.engine.position(live.id)) == ("+12015550302", 2)
    b.stop()


async def test_asterisk_restart_keeps_callbacks_and_cleans_up_lost_calls(
    tmp_path: Path,
) -> None:
    """Asterisk restarts under the running app: the app reconnects by itself, every
    committed callback stays in place, and the live caller Asterisk lost is closed."""
    inst = start_asterisk()  # its own: restarted under the running app
    obs = AriObserver(inst)
    await obs.start()
    queues = {"q7302": {"max_waiting": None, "max_ewt": "30s", "first_offer_after": "1s",
                        "repeat_offer_every": "60s", "prompts": SHORT}}
    cfg = write_config(inst, tmp_path, queues)
    try:
        async with running(cfg) as svc:
            cb = SipCaller(inst, "7302", caller="2015550311", digits=[(1.8, "1")],
                           max_duration=30)
            cb.start()
            await caller_channel(obs, "2015550311")
            assert (await cb.wait(30)).hung_up_by == "them"
            live = SipCaller(inst, "7302", caller="2015550312", max_duration=60)
            live.start()
            await caller_channel(obs, "2015550312")
            await until(lambda: len(svc.engine.items("q7302")) == 2)
            await obs.close()
            await asyncio.to_thread(inst.restart)
            await until(lambda: svc.ari.reconnects == 1 and svc.ari.connected.is_set(),
                        timeout=60)
            await until(lambda: len(svc.engine.items("q7302")) == 1, timeout=30)
            [kept] = svc.engine.items("q7302")
            assert (kept.kind, kept.number) == (Kind.CALLBACK, "+12015550311")
            assert svc.switchboard is not None and svc.switchboard.sessions == {}
            live.stop()
    finally:
        await obs.close()
        finish_asterisk(inst)
