"""Several Asterisk nodes behind one queue, on two in-process fake ARIs (fast tier).

What the node rules decide, made deterministic: a live caller is bridged on its own
node (an agent on another node is rung through the trunk to it), a callback is dialled
from the accepting agent's node, one FIFO spans the nodes, and a node that stays down
loses its live callers while its callbacks stay queued. The real two-node call is in
``tests/test_nodes_real.py``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ivr.app import Service
from ivr.config import Config
from ivr.domain.agents import AgentStatus
from ivr.domain.events import WorkChanged
from ivr.domain.items import Kind, State, SystemClock
from ivr.domain.queues import QueueEngine
from ivr.store import SqliteStore
from rig.sandbox import free_port
from tests.fakeari import FAST_QUEUE, FakeAri, _Bridge
from tests.support.config import write as write_test_config

NUMBER = "+12015550123"


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[FakeAri, FakeAri]]:
    async with FakeAri() as a, FakeAri(password="fake-ari-secret-b") as b:
        yield a, b


def two_node_config(a: FakeAri, b: FakeAri, tmp_path: Path,
                    agents: dict[str, dict[str, Any]], **top: Any) -> Config:
    node = {"user": a.user, "app": a.app}
    return write_test_config(
        tmp_path, ari={}, asterisk_dir="/prompts",
        queues={"support": {"did": "did-support", "caller_id": "2015550100", **FAST_QUEUE}},
        agents=agents,
        asterisk={
            "a": {**node, "url": a.url, "password": a.password,
                  "trunk": "PJSIP/{agent}@node-a"},
            "b": {**node, "url": b.url, "password": b.password,
                  "trunk": "PJSIP/{agent}@node-b"},
        },
        http={"bind": "127.0.0.1", "port": free_port(udp=False), "api_token": "t0ken-x"},
        **top)


@contextlib.asynccontextmanager
async def service(cfg: Config) -> AsyncIterator[Service]:
    svc = Service(cfg)
    try:
        await svc.start(http=True, connect_timeout=5)
        yield svc
    finally:
        await svc.stop()


def originated(fake: FakeAri, endpoint: str) -> list[str]:
    return [r.query.get("channelId", "") for r in fake.calls("POST", "/channels")
            if r.query.get("endpoint") == endpoint]


async def test_a_caller_is_bridged_on_its_node_and_rings_an_agent_through_the_trunk(
        nodes: tuple[FakeAri, FakeAri], tmp_path: Path) -> None:
    a, b = nodes
    b.endpoints["PJSIP/bea"] = "online"
    cfg = two_node_config(a, b, tmp_path, {
        "bea": {"endpoint": "PJSIP/bea", "queues": ["support"], "node": "b"}})
    async with service(cfg) as svc:
        await a.wait_for(lambda: svc.board.get("bea").reachable, what="bea reachable")
        caller = await a.caller_enters("support", "2015550123")
        # Rung from the caller's node, through the trunk to Bea's node: never on b.
        await a.wait_for(lambda: bool(originated(a, "PJSIP/bea@node-b")), what="ring")
        assert b.calls("POST", "/channels") == []
        [leg] = originated(a, "PJSIP/bea@node-b")
        await a.originated_answers(leg)
        await a.wait_for(lambda: any(caller in br.channels and leg in br.channels
                                     for br in a.bridges.values()), what="bridged on a")
        await a.wait_for(lambda: svc.board.get("bea").status == AgentStatus.BUSY,
                         what="bea busy")
        assert b.bridges == {}
    with sqlite3.connect(tmp_path / "ivr.sqlite3") as db:
        assert db.execute("SELECT node, state FROM items").fetchall() == [
            ("a", State.CONNECTED.value)]


async def test_a_callback_is_dialled_from_the_accepting_agents_node(
        nodes: tuple[FakeAri, FakeAri], tmp_path: Path) -> None:
    a, b = nodes
    b.endpoints["PJSIP/bea"] = "online"
    cfg = two_node_config(a, b, tmp_path, {
        "bea": {"endpoint": "PJSIP/bea", "queues": ["support"], "node": "b"}})
    async with service(cfg) as svc:
        assert svc.ctx is not None
        await b.wait_for(lambda: svc.board.get("bea").reachable, what="bea reachable")
        item = svc.engine.add_callback("support", NUMBER)
        assert await svc.ctx.commit()
        svc.ctx.publish(WorkChanged())
        await b.wait_for(lambda: bool(originated(b, "PJSIP/bea")), what="ring bea on b")
        [leg] = originated(b, "PJSIP/bea")
        await b.originated_answers(leg)
        await b.wait_for(lambda: svc.board.get("bea").status == AgentStatus.PREVIEWING,
                         what="preview")
        await b.dtmf(leg, "1")
        await b.wait_for(lambda: bool(originated(b, "PJSIP/+12015550123@carrier")),
                         what="customer dialled from b")
        assert a.calls("POST", "/channels") == []
        assert item.node == "b" and item.state is State.DIALLING
        started = [h for h in item.history if h.event == "dial_started"]
        assert started[-1].detail["node"] == "b"


async def test_one_fifo_across_nodes(nodes: tuple[FakeAri, FakeAri], tmp_path: Path) -> None:
    """Callers on either node wait in one line: the first to arrive is served first,
    whichever node it came in on."""
    a, b = nodes
    a.endpoints["PJSIP/ann"] = "online"
    cfg = two_node_config(a, b, tmp_path, {
        "ann": {"endpoint": "PJSIP/ann", "queues": ["support"], "node": "a"}})
    async with service(cfg) as svc:
        await a.wait_for(lambda: svc.board.get("ann").reachable, what="ann reachable")
        svc.board.set_ready("ann", False)
        first = await b.caller_enters("support", "2015550123")
        await a.wait_for(lambda: len(svc.engine.items("support")) == 1, what="first")
        second = await a.caller_enters("support", "2015550124")
        await a.wait_for(lambda: len(svc.engine.items("support")) == 2, what="second")
        line = svc.engine.items("support")
        assert [(i.node, i.channel_id) for i in line] == [("b", first), ("a", second)]
        svc.board.set_ready("ann", True)
        # Ann (node a) takes the caller from node b first: rung from b through the trunk.
        await b.wait_for(lambda: bool(originated(b, "PJSIP/ann@node-a")), what="ring ann")
        assert originated(a, "PJSIP/ann") == []


async def test_a_node_that_stays_down_loses_its_callers_and_keeps_callbacks(
        nodes: tuple[FakeAri, FakeAri], tmp_path: Path) -> None:
    a, b = nodes
    a.endpoints["PJSIP/ann"] = "online"
    b.endpoints["PJSIP/bea"] = "online"
    cfg = two_node_config(a, b, tmp_path, {
        "ann": {"endpoint": "PJSIP/ann", "queues": ["support"], "node": "a"},
        "bea": {"endpoint": "PJSIP/bea", "queues": ["support"], "node": "b"}},
        node_down_after="1s")
    async with service(cfg) as svc:
        assert svc.ctx is not None
        await a.wait_for(lambda: all(x.reachable for x in svc.board), what="reachable")
        for agent in ("ann", "bea"):
            svc.board.set_ready(agent, False)
        live = await a.caller_enters("support", "2015550124")
        await a.wait_for(lambda: len(svc.engine.items("support")) == 1, what="queued")
        callback = svc.engine.add_callback("support", NUMBER)
        assert await svc.ctx.commit()
        [caller_item] = [i for i in svc.engine.items("support") if i.channel_id == live]

        # Node a dies: its websocket drops and does not come back.
        a.refuse_websocket = 503
        await a.drop_websockets()
        await a.wait_for(lambda: caller_item.state is State.ABANDONED, timeout=10,
                         what="live caller on a counted lost")
        assert (caller_item.history[-1].event, caller_item.history[-1].detail) == (
            "abandoned", {"reason": "node_down"})
        assert not svc.board.get("ann").reachable
        health = svc.health()
        assert health["nodes_down"] == ["a"] and health["ari_connected"] is True

        # The callback stays and is served from node b.
        assert callback.is_open and callback.kind is Kind.CALLBACK
        svc.board.set_ready("bea", True)
        await b.wait_for(lambda: bool(originated(b, "PJSIP/bea")), what="bea rung")
        assert svc.engine.get(callback.id).offered_to == "bea"


async def test_a_dial_in_flight_at_the_crash_is_resolved_from_asterisks_state(
        nodes: tuple[FakeAri, FakeAri], tmp_path: Path) -> None:
    """The last process died while two callbacks were being dialled from node b: one
    customer is talking to the agent (their legs bridged in Asterisk), the other's legs
    are gone. Node b connects last. Neither is offered before b's channels are read;
    then the one found talking is done (never dialled again) and the other is offered
    again."""
    a, b = nodes
    b.endpoints["PJSIP/bea"] = "online"
    cfg = two_node_config(a, b, tmp_path, {
        "bea": {"endpoint": "PJSIP/bea", "queues": ["support"], "node": "b"}})
    # What the dead process left in the store: both DIALLING from node b.
    engine = QueueEngine([q.policy for q in cfg.queues.values()], SystemClock())
    talking = engine.add_callback("support", NUMBER)
    gone = engine.add_callback("support", "+12015550124")
    for item in (talking, gone):
        engine.dispatch({"bea": ("support",)}, callback_queues=["support"])
        engine.dial_started(item.id, "bea", "b")
    store = await SqliteStore.open(cfg.store_path)
    await store.save(engine.drain_changes())
    await store.close()
    # Node b still bridges the agent's and the customer's legs of the first one.
    agent_leg, customer_leg = "ivr-agent-1", "ivr-customer-1"
    b.channels[agent_leg] = b.channel_json(agent_leg, state="Up",
                                           args=["agent", talking.id])
    b.channels[customer_leg] = b.channel_json(customer_leg, state="Up",
                                              args=["customer", talking.id])
    b.bridges["br-1"] = _Bridge("br-1", "mixing", [agent_leg, customer_leg])
    b.refuse_websocket = 503  # node b is not up yet

    async with service(cfg) as svc:
        assert svc.ctx is not None and svc.dispatcher is not None
        assert set(svc.ctx.unresolved) == {talking.id, gone.id}
        await svc.dispatcher.dispatch_pass()
        assert b.calls("POST", "/channels") == [] and a.calls("POST", "/channels") == []
        b.refuse_websocket = None
        await b.wait_for(lambda: not svc.ctx.unresolved if svc.ctx else False, timeout=10,
                         what="node b resynced")
        done = svc.engine.get(talking.id)
        assert done.state is State.DONE
        assert (done.history[-1].event, done.history[-1].detail) == (
            "callback_connected", {"found": "after_restart"})
        # The other one is offered again, from Bea's node; the talking customer never.
        await b.wait_for(lambda: bool(originated(b, "PJSIP/bea")), what="bea rung")
        assert svc.engine.get(gone.id).offered_to == "bea"
        assert [r.query.get("endpoint") for r in b.calls("POST", "/channels")] == [
            "PJSIP/bea"]


async def test_callers_of_a_node_that_never_comes_back_are_counted_lost(
        nodes: tuple[FakeAri, FakeAri], tmp_path: Path) -> None:
    """A restart (or a standby's takeover) while node b is down: b's callers in the
    store have no session to end; after node_down_after they are counted lost all the
    same, instead of holding places in the line for ever."""
    a, b = nodes
    cfg = two_node_config(a, b, tmp_path, {}, node_down_after="1s")
    engine = QueueEngine([q.policy for q in cfg.queues.values()], SystemClock())
    on_b = engine.arrive("support", channel_id="gone-1", number=NUMBER, node="b")
    on_a = engine.arrive("support", channel_id="alive-1", number="+12015550124", node="a")
    store = await SqliteStore.open(cfg.store_path)
    await store.save(engine.drain_changes())
    await store.close()
    a.channels["alive-1"] = a.channel_json("alive-1", state="Up", number="2015550124")
    b.refuse_websocket = 503

    async with service(cfg) as svc:
        await a.wait_for(lambda: svc.engine.get(on_b.id).state is State.ABANDONED,
                         timeout=10, what="b's caller counted lost")
        lost = svc.engine.get(on_b.id)
        assert (lost.history[-1].event, lost.history[-1].detail) == (
            "abandoned", {"reason": "node_down"})
        assert svc.engine.get(on_a.id).state is State.WAITING  # adopted on a
        assert [i.id for i in svc.engine.items("support")] == [on_a.id]
