"""Past one machine, on real parts: two instances of the service on one PostgreSQL (from
Debian's package, started by the rig as an unprivileged user), two sandboxed Asterisk
nodes joined by a SIP trunk, sipp callers on both nodes, one agent softphone and a
carrier. The active instance is killed (SIGKILL; then, in the second test, its network
to PostgreSQL is cut) with callers waiting on both nodes and callbacks queued: the
standby takes the lock, connects to both nodes, re-adopts every caller in its original
place, and every caller and callback is served once, in order.

How long the takeover took (the kill to the standby's ``/healthz`` answering "active")
is printed, not asserted: speed is measured, tests prove behaviour.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ivr.domain.items import Kind, State
from rig.postgres import PgServer
from rig.sandbox import AsteriskInstance, free_port
from tests.peers import CallBehaviour, SipCaller, SipCarrier, SipPhone
from tests.support.nodes import running_nodes, write_node_config
from tests.support.service import until_healthy
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import until, until_async

QUEUE = "q7401"
TOKEN = "standby-test-token-0123456789"
# The agent answers, accepts a callback's preview with 1 (harmless on a live call), and
# hangs up after a short conversation; the carrier's customer answers at once.
AGENT = CallBehaviour(answer_after=0.3, digits=[(1.0, "1")], hangup_after=3.0)
CUSTOMER = CallBehaviour(answer_after=0.3, max_duration=60)
CALLBACKS = ("+12015550411", "+12015550412")
CALLERS = (("a", "2015550421"), ("b", "2015550422"), ("a", "2015550423"))


class Instance:
    """One ``ivr run`` process, as an operator runs it (here: two on one machine)."""

    def __init__(self, name: str, cfg: Path, port: int, logs: Path) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = logs / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(  # a child we kill; never waited on for long
            [sys.executable, "-m", "ivr.cli", "run", str(cfg)],
            stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def health(self) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.get(self.url + "/healthz") as r:
            return r.status, await r.json()

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as http, http.request(
                method, self.url + path, json=body, headers=headers) as r:
            assert r.status < 300, f"{method} {path}: {r.status} {await r.text()}"
            return await r.json()

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def instance_config(nodes: dict[str, AsteriskInstance], directory: Path, url: str,
                    port: int) -> Path:
    directory.mkdir()
    return write_node_config(
        nodes, directory, QUEUE,
        {"a1": {"endpoint": "PJSIP/a1", "queues": [QUEUE], "node": "a"}},
        store={"url": url}, http={"bind": "127.0.0.1", "port": port, "api_token": TOKEN})


def stored(pg: PgServer, database: str) -> list[tuple[str, str, str, str, str]]:
    """(id, kind, state, number, node) of every item, in queue order."""
    out = pg.psql("SELECT json_agg(json_build_array(id, kind, state, number, node) "
                  "ORDER BY arrived_at, seq) FROM items", database=database)
    return [tuple(row) for row in json.loads(out or "null") or []]


@contextlib.contextmanager
def peers(nodes: dict[str, AsteriskInstance]) -> Iterator[tuple[SipPhone, SipCarrier]]:
    phone = SipPhone(nodes["a"], "a1", AGENT)
    carrier = SipCarrier(nodes["a"], CUSTOMER)
    phone.start()
    carrier.start()
    try:
        yield phone, carrier
    finally:
        phone.stop()
        carrier.stop()


@contextlib.asynccontextmanager
async def pair(nodes: dict[str, AsteriskInstance], tmp_path: Path, urls: tuple[str, str]
               ) -> AsyncIterator[tuple[Instance, Instance]]:
    """The active instance (started first, healthy) and the standby (waiting)."""
    ports = (free_port(udp=False), free_port(udp=False))
    cfgs = [instance_config(nodes, tmp_path / f"i{k}", urls[k], ports[k]) for k in (0, 1)]
    first = Instance("first", cfgs[0], ports[0], tmp_path)
    second: Instance | None = None
    try:
        await until_healthy(first.url + "/healthz", first.alive, first.log)
        second = Instance("second", cfgs[1], ports[1], tmp_path)
        standby = second

        async def waiting() -> bool:
            assert standby.alive(), standby.log()
            with contextlib.suppress(aiohttp.ClientError):
                status, body = await standby.health()
                return status == 503 and body.get("role") == "standby"
            return False

        await until_async(waiting, 30, lambda: f"no standby\n{standby.log()}", every=0.1)
        yield first, second
    finally:
        for inst in (first, second):
            if inst is not None:
                inst.stop()


async def queue_work(first: Instance, nodes: dict[str, AsteriskInstance], pg: PgServer,
                     database: str) -> list[SipCaller]:
    """With the agent not ready: two callbacks booked, then three callers waiting (a, b,
    a), everything committed."""
    await first.api("POST", "/api/agents/a1/state", {"state": "not_ready"})
    for number in CALLBACKS:
        await first.api("POST", "/api/callbacks", {"queue": QUEUE, "number": number})
    callers = []
    for k, (node, number) in enumerate(CALLERS):
        c = SipCaller(nodes[node], "7401", caller=number, max_duration=120)
        c.start()
        callers.append(c)
        count = len(CALLBACKS) + k + 1
        await until(lambda: len(stored(pg, database)) == count, 30,  # noqa: B023
                    f"caller {number} stored")
    return callers


async def takeover(second: Instance, since: float) -> float:
    async def active() -> bool:
        assert second.alive(), second.log()
        with contextlib.suppress(aiohttp.ClientError):
            status, body = await second.health()
            return status == 200 and body.get("role") == "active"
        return False

    await until_async(active, 30, lambda: f"no takeover\n{second.log()}", every=0.05)
    return time.monotonic() - since


async def served_once_in_order(second: Instance, phone: SipPhone, carrier: SipCarrier,
                               callers: list[SipCaller], pg: PgServer, database: str,
                               line: list[tuple[str, str, str, str, str]]) -> None:
    """Every item is offered to the agent once, in the order of the line before the
    crash; each callback's customer is dialled once; every caller is connected."""
    want = [number for _, _, _, number, _ in line]
    calls = await phone.wait_for_calls(len(want), 90)
    assert [c.from_number for c in calls] == want, phone.describe()
    dialled = await carrier.wait_for_calls(len(CALLBACKS), 30)
    assert sorted(c.dialled for c in dialled) == sorted(CALLBACKS), carrier.describe()
    for c in callers:
        result = await c.wait(60)
        # Bridged to the agent, who hung up: the caller was never dropped.
        assert result.answered and result.hung_up_by == "them", c.describe()
    await until(lambda: all(state in (State.DONE.value, State.CONNECTED.value)
                            for _, _, state, _, _ in stored(pg, database)), 30,
                "every item served")
    assert len(phone.calls()) == len(want)  # no second offer of anything
    assert len(carrier.calls()) == len(CALLBACKS)  # nobody dialled twice
    status, body = await second.health()
    assert (status, body["role"]) == (200, "active")


async def test_standby_takes_over_after_the_active_is_killed(
        pg_server: PgServer, tmp_path: Path) -> None:
    database = "standby_kill"
    url = pg_server.create_database(database)
    with running_nodes({"a": ("a1",), "b": ("b1",)}) as nodes, peers(nodes) as (phone, carrier):
        async with pair(nodes, tmp_path, (url, url)) as (first, second):
            callers = await queue_work(first, nodes, pg_server, database)
            line = stored(pg_server, database)
            assert [(k, n) for _, k, _, n, _ in line] == [
                *((Kind.CALLBACK.value, n) for n in CALLBACKS),
                *((Kind.INBOUND.value, "+1" + n) for _, n in CALLERS)]
            assert [node for *_, node in line[len(CALLBACKS):]] == ["a", "b", "a"]
            assert phone.calls() == []  # nothing served before the crash

            killed = time.monotonic()
            os.kill(first.proc.pid, signal.SIGKILL)
            took = await takeover(second, killed)
            print(f"\ntakeover after SIGKILL: {took:.2f} s (kill -> standby /healthz active)")
            await served_once_in_order(second, phone, carrier, callers, pg_server, database,
                                       line)
            assert first.proc.wait(5) == -signal.SIGKILL


async def test_an_active_cut_off_from_postgresql_stops_and_the_standby_takes_over(
        pg_server: PgServer, tmp_path: Path) -> None:
    """The active instance loses its network to PostgreSQL (a proxy between them is cut,
    both ends closed): its session ends, so the standby gets the lock; the old active
    sees its store fenced and stops at once (exit 75, for its supervisor to restart it
    as a standby) instead of acting next to the new one."""
    database = "standby_cut"
    url = pg_server.create_database(database)
    proxy = TcpProxy("127.0.0.1", pg_server.port)
    await proxy.start()
    proxied = url.replace(f":{pg_server.port}/", f":{proxy.port}/")
    try:
        with running_nodes({"a": ("a1",), "b": ("b1",)}) as nodes, \
                peers(nodes) as (phone, carrier):
            async with pair(nodes, tmp_path, (proxied, url)) as (first, second):
                callers = await queue_work(first, nodes, pg_server, database)
                line = stored(pg_server, database)
                cut = time.monotonic()
                proxy.cut()
                took = await takeover(second, cut)
                print(f"\ntakeover after the cut: {took:.2f} s (cut -> standby active)")
                assert first.proc.wait(30) == 75, first.log()
                assert "lost the active lock" in first.log()
                await served_once_in_order(second, phone, carrier, callers, pg_server,
                                           database, line)
    finally:
        await proxy.close()


pytestmark = pytest.mark.asterisk
