"""Proves the rig's several-node mode (``rig.sandbox.start_nodes``) and the operator's
inter-node trunk config (asterisk-config: ``node-trunk``, ``from-nodes``) with real SIP:

* node a rings agent b1, whose phone is on node b, with node b's trunk template
  ``PJSIP/{agent}@node-b``; node b knows the call as node a's (From user ``node-a``)
  and dials its own b1; b1 answers and presses 1, and node a's app sees it all;
* an agent of node b who is busy: node a sees busy;
* whatever else a node asks for through the trunk (a phone number, the carrier, another
  node, a Dial() injection) is refused by the dialplan and never reaches the carrier;
* a call that only claims to be node a (its From user, from its address) without the
  trunk's password is challenged and goes nowhere.

ARI is a minimal client of the tests' own (``tests/support/nodes.py``), not the project's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from rig.sandbox import AsteriskInstance, SandboxError
from tests.peers import BUSY, CallBehaviour, SipCaller, SipCarrier, SipPhone
from tests.support.nodes import NodeAri, running_nodes
from tests.support.observer import Event, channel_id

pytestmark = pytest.mark.asterisk

Nodes = dict[str, AsteriskInstance]


@pytest.fixture(scope="module")
def nodes() -> Iterator[Nodes]:
    with running_nodes() as started:
        yield started


@pytest.fixture
async def ari_a(nodes: Nodes) -> AsyncIterator[NodeAri]:
    ari = NodeAri(nodes["a"])
    await ari.start()
    try:
        yield ari
    finally:
        await ari.close()


@pytest.fixture
async def ari_b(nodes: Nodes) -> AsyncIterator[NodeAri]:
    ari = NodeAri(nodes["b"])
    await ari.start()
    try:
        yield ari
    finally:
        await ari.close()


def _is(type_: str, cid: str) -> Callable[[Event], bool]:
    def pred(e: Event) -> bool:
        return e.get("type") == type_ and channel_id(e) == cid

    return pred


def _trunk_channel(peer: str, exten: str) -> Callable[[Event], bool]:
    """ChannelCreated of a call that came in over the trunk from node ``peer``."""

    def pred(e: Event) -> bool:
        ch = e.get("channel") or {}
        return (
            e.get("type") == "ChannelCreated"
            and str(ch.get("name", "")).startswith(f"PJSIP/node-{peer}-")
            and (ch.get("dialplan") or {}).get("exten") == exten
        )

    return pred


async def test_agent_on_other_node_answers_and_presses_1(
    nodes: Nodes, ari_a: NodeAri, ari_b: NodeAri
) -> None:
    a, b = nodes["a"], nodes["b"]
    assert a.node_name == "a" and b.node_name == "b"
    assert (a.ari_user, a.http_port, a.rtp_start) != (b.ari_user, b.http_port, b.rtp_start)
    endpoint = b.trunk_dial("a").format(agent="b1")
    assert endpoint == "PJSIP/b1@node-b"
    with pytest.raises(SandboxError, match="no trunk from 'c'"):
        b.trunk_dial("c")
    again = AsteriskInstance.from_json(json.loads(json.dumps(b.to_json())))
    assert (again.node_name, again.peers, again.trunk_password) == (
        "b", {"a": ("127.0.0.1", a.sip_port)}, a.trunk_password
    )
    phone = SipPhone(b, "b1", behaviours=CallBehaviour(answer_after=0.3, digits=[(0.5, "1")]))
    phone.start()
    try:
        ch = await ari_a.originate(
            endpoint,
            variables={"PJSIP_HEADER(add,X-Work-Type)": "callback",
                       "PJSIP_HEADER(add,X-Work-Item)": "item-42"},
            callerId="Callback <5551234>", timeout="30", appArgs="agent",
        )  # fmt: skip
        cid = str(ch["id"])
        start = await ari_a.wait_for(_is("StasisStart", cid))
        assert start["args"] == ["agent"]
        await ari_a.wait_for(
            lambda e: e.get("type") == "ChannelStateChange"
            and channel_id(e) == cid
            and e["channel"]["state"] == "Up"
        )
        await ari_a.wait_type("ChannelDtmfReceived", channel_id=cid, digit="1")

        # Node b took it as node a's call (From user node-a) into from-nodes, and dialled
        # its own agent, who got the caller id and the IVR's headers as on a local call.
        inbound = await ari_b.wait_for(_trunk_channel("a", "b1"))
        assert inbound["channel"]["dialplan"]["context"] == "from-nodes"
        await ari_b.wait_for(
            lambda e: e.get("type") == "Dial"
            and (e.get("caller") or {}).get("id") == inbound["channel"]["id"]
            and str((e.get("peer") or {}).get("name", "")).startswith("PJSIP/b1-")
            and e.get("dialstatus") == "ANSWER"
        )
        (call,) = await phone.wait_for_calls(1)
        assert call.dialled == "b1"
        assert (call.from_name, call.from_number) == ("Callback", "5551234")
        assert call.header("X-Work-Type") == "callback"
        assert call.header("X-Work-Item") == "item-42"

        # Our hangup crosses the trunk to the agent.
        await ari_a.rest("DELETE", f"/channels/{cid}")
        await phone.wait_for_calls(1, predicate=lambda c: c.bye_received_at is not None)
        await ari_b.wait_for(_is("ChannelDestroyed", inbound["channel"]["id"]))
    finally:
        phone.stop()


async def test_busy_agent_on_other_node_is_busy_here(
    nodes: Nodes, ari_a: NodeAri, ari_b: NodeAri
) -> None:
    phone = SipPhone(nodes["b"], "b2", behaviours=BUSY)
    phone.start()
    try:
        ch = await ari_a.originate(nodes["b"].trunk_dial("a").format(agent="b2"), timeout="30")
        cid = str(ch["id"])
        dial = await ari_a.wait_for(
            lambda e: e.get("type") == "Dial"
            and (e.get("peer") or {}).get("id") == cid
            and e.get("dialstatus") not in ("", None)
        )
        assert dial["dialstatus"] == "BUSY"
        destroyed = await ari_a.wait_for(_is("ChannelDestroyed", cid))
        assert destroyed["cause"] == 17
        (call,) = await phone.wait_for_calls(1, predicate=lambda c: c.ended)
        assert call.rejected_with == 486
        # On b: the phone's cause was kept (nothing ran after the Hangup() that keeps it).
        inbound = await ari_b.wait_for(_trunk_channel("a", "b2"))
        in_id = str(inbound["channel"]["id"])
        gone = await ari_b.wait_for(_is("ChannelDestroyed", in_id))
        assert gone["cause"] == 17
        assert ari_b.dialplan_apps(in_id)[-2:] == [
            ("Dial", "PJSIP/b2,,b(from-nodes-headers^s^1)"), ("Hangup", "")
        ]
    finally:
        phone.stop()


async def test_trunk_reaches_nothing_but_local_agents(
    nodes: Nodes, ari_a: NodeAri, ari_b: NodeAri
) -> None:
    """Node b asks node a, through the trunk, for things that are not a's agents: each
    is refused by a's dialplan (cause 21: SIP 403) before any Dial(), and a's carrier
    receives nothing."""
    a = nodes["a"]
    carrier = SipCarrier(a, behaviours=CallBehaviour(answer_after=0))
    carrier.start()
    uri = f"@127.0.0.1:{a.sip_port}"
    # (dial string on b, the extension a sees, the guard that must refuse it: "0?name"
    # the name check, "0?agent" the endpoint check). '&' '/' ',' pass in a URI's user
    # part and '@' escaped; Asterisk decodes the extension.
    attempts = [
        ("PJSIP/15551230000@node-a", "15551230000", "0?agent"),  # a phone number
        ("PJSIP/carrier@node-a", "carrier", "0?agent"),  # an endpoint, not an agent's
        ("PJSIP/node-b@node-a", "node-b", "0?agent"),  # another node: no loops
        # Dial() would ring a1 AND the carrier:
        (f"PJSIP/node-a/sip:a1&PJSIP/15551230000%40carrier{uri}",
         "a1&PJSIP/15551230000@carrier", "0?name"),
        # Would pass the endpoint check alone: PJSIP_ENDPOINT(a1,context,context).
        (f"PJSIP/node-a/sip:a1,context{uri}", "a1,context", "0?name"),
    ]  # fmt: skip
    try:
        for dial, exten, guard in attempts:
            ch = await ari_b.originate(dial, timeout="20")
            destroyed = await ari_b.wait_for(_is("ChannelDestroyed", str(ch["id"])))
            assert destroyed["cause"] == 21, (dial, destroyed)
            inbound = await ari_a.wait_for(_trunk_channel("b", exten))
            assert inbound["channel"]["dialplan"]["context"] == "from-nodes"
            in_id = str(inbound["channel"]["id"])
            await ari_a.wait_for(_is("ChannelDestroyed", in_id))
            apps = ari_a.dialplan_apps(in_id)
            assert apps[-2:] == [("GotoIf", guard), ("Hangup", "21")], (exten, apps)
            assert not [app for app, _ in apps if app == "Dial"], (exten, apps)
        assert not ari_a.find(lambda e: e.get("type") == "Dial")
        # No Dial() ran on a at all (above); the carrier's own account agrees.
        assert carrier.calls() == [], carrier.describe()
    finally:
        carrier.stop()


async def test_trunk_wants_the_nodes_password(nodes: Nodes, ari_b: NodeAri) -> None:
    b = nodes["b"]
    phone = SipPhone(b, "b1", behaviours=CallBehaviour(answer_after=0))
    phone.start()
    # From: <sip:node-a@127.0.0.1>, from node a's address, to agent b1: all but the password.
    spoof = SipCaller(b, "b1", caller="node-a", host="127.0.0.1", max_duration=20)
    spoof.start()
    try:
        result = await spoof.wait(40)
        assert not result.answered
        assert result.rejected_with == 401, spoof.describe()
        # The challenge was the INVITE's final answer: no channel, no call to b1 followed.
        assert not ari_b.find(lambda e: e.get("type") == "ChannelCreated")
        assert phone.calls() == []
    finally:
        spoof.stop()
        phone.stop()
