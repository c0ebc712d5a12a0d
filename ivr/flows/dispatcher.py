"""The dispatcher (SPEC R7, R9, R11, R14, R15): one offer per free agent.

A pass runs whenever work or agents change (``WorkChanged`` on the notifier, an agent's
status change) and once a second for retry, expiry and wrap-up timers: free, reachable
agents, longest idle first, get one item each from the queue engine. Each offer becomes
an ``AgentLeg`` (``flows/agent_leg.py``); when it ends, its ``Outcome`` decides the
agent's next status on the board.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ivr import ari
from ivr.domain import events
from ivr.domain.agents import Agent, AgentBoard, AgentStatus
from ivr.domain.items import Kind
from ivr.flows.agent_leg import AgentLeg, NotNow
from ivr.flows.context import FlowContext
from ivr.flows.outcome import Outcome
from ivr.flows.session import CANCEL, Message
from ivr.flows.switchboard import Switchboard

log = logging.getLogger("ivr.flows.agents")


@dataclass(frozen=True)
class LastOffer:
    """How an agent's latest offer ended (the console card after the call)."""

    item_id: str
    outcome: Outcome
    at: float


class Dispatcher:
    def __init__(self, ctx: FlowContext, switchboard: Switchboard, board: AgentBoard) -> None:
        self.ctx = ctx
        self.switchboard = switchboard
        self.board = board
        self.legs: dict[str, AgentLeg] = {}  # work item id -> its delivery
        self.last: dict[str, LastOffer] = {}  # agent id -> its latest ended offer
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: node -> when (monotonic) its ARI connection was first seen down
        self._down_since: dict[str, float] = {}
        #: nodes whose live callers were given up (down longer than node_down_after)
        self.lost_nodes: set[str] = set()
        #: nodes being resynced after a connect (their client says "connected" only
        #: once that is done; meanwhile they are not down)
        self.resyncing: set[str] = set()
        #: False once a graceful stop began: no new offers
        self.accepting = True
        board.on_change = self._status_changed
        switchboard.on_other_event = self.on_event
        ctx.notifier.subscribe(self._on_flow_event)

    # ------------------------------------------------------------------ what we follow

    def _status_changed(self, agent: Agent, old: AgentStatus) -> None:
        if agent.status != old:
            log.info("[item=%s] agent %s: %s -> %s", (agent.item_id or "-")[:12], agent.id,
                     old, agent.status)
            self.ctx.publish(events.AgentChanged(agent=agent.id, status=agent.status))
        self.kick()

    def leg_of(self, agent_id: str) -> AgentLeg | None:
        """The offer an agent holds now (ringing, preview, dialling, talking)."""
        for leg in self.legs.values():
            if leg.agent.id == agent_id:
                return leg
        return None

    def decide(self, agent_id: str, item_id: str, accept: bool) -> AgentLeg:
        """The console's Accept / Decline for the offer ``item_id`` held by ``agent_id``
        (``AgentLeg.decide``). Raises ``NotNow`` with the reason, ``KeyError`` when that
        agent holds no such offer (another agent's offers are not theirs to take)."""
        leg = self.legs.get(item_id)
        if leg is None or leg.agent.id != agent_id:
            raise KeyError(item_id)
        if not self.accepting:
            raise NotNow("the service is stopping")
        leg.decide(accept)
        return leg

    def _on_flow_event(self, event: events.Event) -> None:
        if isinstance(event, events.ItemClosed | events.OfferRevoked):
            # A live caller left (hang-up, duplicate) or R12 closed a callback: a leg
            # ringing or previewing it must stop.
            leg = self.legs.get(event.item_id)
            if leg is not None:
                leg.deliver(Message(CANCEL))
            self.kick()
        elif isinstance(event, events.WorkChanged):
            self.kick()

    async def on_connect(self, node: str = "") -> None:
        """R15: endpoint reachability of the agents on ``node``. Read once per connect,
        then follow the events."""
        node = self.ctx.node_name(node)
        client = self.ctx.client(node)
        self._down_since.pop(node, None)
        self.lost_nodes.discard(node)
        for agent in self.board:
            if self.ctx.node_name(agent.node) != node:
                continue
            tech, _, resource = agent.endpoint.partition("/")
            try:
                ep = await client.get_endpoint(tech, resource)
                await client.subscribe_endpoint(tech, resource)
            except ari.AriError as exc:
                log.error("agent %s: endpoint %s unusable: %s", agent.id, agent.endpoint, exc)
                self.board.reachability(agent, "unreachable")
                continue
            if self.board.reachability(agent, ep.state):
                log.info("agent %s endpoint %s", agent.id, ep.state)
        self.kick()

    def on_event(self, ev: ari.Event, node: str = "") -> None:
        if isinstance(ev, ari.EndpointStateChange):
            agent = self.board.by_endpoint(ev.endpoint.name,
                                       self.ctx.node_name(node))
            if agent is not None:
                if self.board.reachability(agent, ev.endpoint.state):
                    log.info("agent %s endpoint %s", agent.id, ev.endpoint.state)
                self.kick()

    # ------------------------------------------------------------------ passes

    def kick(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="dispatcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
            # cancel that lands as its timeout fires, and close() then waits for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.dispatch_pass()
                await self.ctx.commit_if_due()  # a hang-up no other commit carried yet
            except Exception:
                log.exception("dispatch pass failed")

    async def drain(self, grace: float) -> None:
        """Graceful stop (SIGTERM): no new offers; agents being rung or previewing give
        their offer back (committed); dials and press-1 confirmations in flight get up
        to ``grace`` seconds to finish. Conversations are left up in their bridges (the
        next instance watches them) and waiting callers stay in Stasis (re-adopted)."""
        self.accepting = False
        self.ctx.stopping = True
        for leg in list(self.legs.values()):
            if not leg.talking and leg.agent.status in (
                    AgentStatus.RINGING, AgentStatus.PREVIEWING):
                leg.deliver(Message(CANCEL))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # Polled: the two conditions belong to many tasks; bounded by ``grace``.
        while loop.time() < deadline and (  # noqa: ASYNC110
            any(not leg.talking for leg in self.legs.values()) or self.ctx.held
        ):
            await asyncio.sleep(0.05)
        busy = [leg for leg in self.legs.values() if not leg.talking]
        if busy or self.ctx.held:
            log.warning("graceful stop: %d agent leg(s) and %d caller(s) still busy after "
                        "%.0fs; the next start repairs them from the store", len(busy),
                        len(self.ctx.held), grace)
        for leg in self.legs.values():
            leg.detached = True  # a conversation outlives us: no teardown on exit

    async def watch_nodes(self) -> set[str]:
        """Several Asterisk nodes: returns the nodes whose ARI is down now. Agents on a
        node we cannot reach take no offers (they come back with its reconnect); after
        ``node_down_after`` its live callers are counted lost (their calls died with it,
        or nobody can bridge them) — their sessions end as on a hang-up — while every
        callback stays in the queue for the other nodes' agents."""
        down: set[str] = set()
        loop = asyncio.get_running_loop()
        for node in self.ctx.nodes:
            if self.ctx.node_up(node) or node in self.resyncing:
                continue
            down.add(node)
            if node not in self._down_since:
                self._down_since[node] = loop.time()
                log.warning("Asterisk node %s: ARI down; its agents take no offers", node)
                for agent in self.board:
                    if self.ctx.node_name(agent.node) == node:
                        self.board.reachability(agent, "unreachable")
            since = self._down_since[node]
            if node not in self.lost_nodes \
                    and loop.time() - since >= self.ctx.cfg.node_down_after:
                self.lost_nodes.add(node)
                n = await self.switchboard.node_lost(node)
                log.error("Asterisk node %s down for %.0fs: %d call(s) on it counted lost; "
                          "callbacks stay queued", node, loop.time() - since, n)
        return down

    def _live_on(self, nodes: set[str]) -> set[str]:
        """Live callers (and their offers) on ``nodes``: not offered while those are
        down (nobody could bridge them)."""
        return {item.id for item in self.ctx.engine.open_items()
                if item.kind is Kind.INBOUND and self.ctx.node_name(item.node) in nodes}

    def _skip(self, down: set[str]) -> set[str]:
        skip = self.ctx.held
        if down:
            skip = skip | self._live_on(down)
        if self.ctx.unresolved:
            skip = skip | self.ctx.unresolved.keys()
        return skip

    async def dispatch_pass(self) -> None:
        if not self.accepting:
            return
        down = await self.watch_nodes() if len(self.ctx.nodes) > 1 else set()
        now = self.ctx.now()
        engine = self.ctx.engine
        expired = engine.expire_due()
        if expired:
            await self.ctx.commit()
            for item in expired:
                self.ctx.publish(events.CallbackExpired(item.queue, item.id))
        self.board.end_wrap_ups()
        for name in self.ctx.cfg.queues:
            engine.set_serving_agents(name, self.board.serving(name))
        free = self.board.free()
        if not free:
            return
        open_for_callbacks = [
            q.name for q in self.ctx.cfg.queues.values()
            if q.hours is None or q.hours.is_open(now)
        ]
        offers = engine.dispatch(
            {a.id: a.queues for a in free},
            callback_queues=open_for_callbacks,
            standby={a.id: a.queues for a in self.board.on_duty()},
            skip=self._skip(down),
        )
        if offers:
            await self.ctx.commit()
        for agent_id, item in offers:
            agent = self.board.get(agent_id)
            self.board.set_status(agent, AgentStatus.RINGING, item.id)
            leg = AgentLeg(self.ctx, self.board, self.switchboard, agent, item)
            self.legs[item.id] = leg
            self.switchboard.register(leg)
            self.switchboard.start(leg)
            assert leg.task is not None  # set by start()
            leg.task.add_done_callback(self._ended_callback(leg))

    def _ended_callback(self, leg: AgentLeg) -> Callable[[asyncio.Task[None]], None]:
        return lambda _task: self._leg_ended(leg)

    def _leg_ended(self, leg: AgentLeg) -> None:
        """Apply the leg's outcome to its agent (R7/R9: not ready when unresponsive;
        wrap-up after a conversation; otherwise available again)."""
        if self.legs.get(leg.item.id) is leg:
            del self.legs[leg.item.id]
        self.last[leg.agent.id] = LastOffer(leg.item.id, leg.outcome, self.ctx.now())
        self.board.release(leg.agent, unresponsive=leg.outcome.unresponsive,
                           talked=leg.outcome == leg.outcome.TALKED, wrap_up=leg.q.wrap_up)
        self.kick()
