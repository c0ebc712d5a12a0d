"""The agent's half (SPEC R7-R11, R14, R15): who is free, what they are offered, and the
delivery of one work item to one agent's softphone.

The dispatcher runs a pass whenever work or agents change (and once a second for retry
and wrap-up timers): free, reachable agents, longest idle first, get one item each from
the queue engine (R11). Each offer becomes an ``AgentLeg``: a session on the channel we
originate to the agent's endpoint, which rings, previews, dials and bridges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ivr import ari
from ivr.config import AgentConfig, QueueConfig
from ivr.domain.items import Kind, State, WorkItem
from ivr.domain.numbers import parse_e164
from ivr.domain.queues import QueueError
from ivr.flows.caller import CallerSession, ask_connect
from ivr.flows.context import FlowContext
from ivr.flows.session import ChannelSession, Hangup, Message, say_digits, say_number
from ivr.flows.switchboard import Switchboard

log = logging.getLogger("ivr.flows.agents")


def _is_cancel(ev: object) -> bool:
    return isinstance(ev, Message) and ev.kind == "cancel"

# Asterisk hang-up causes on an originated leg that never answered (Q.850).
CAUSE_BUSY = 17
CAUSE_REJECTED = 21
CAUSE_NO_ANSWER = (18, 19)
CAUSE_BAD_NUMBER = (1, 2, 3, 22, 28)

# Extra seconds past an originate timeout before we give up on Asterisk telling us.
GRACE = 5.0


class AgentStatus(StrEnum):
    OFFLINE = "offline"
    AVAILABLE = "available"
    RINGING = "ringing"
    PREVIEWING = "previewing"
    BUSY = "busy"
    WRAP_UP = "wrap_up"
    NOT_READY = "not_ready"


@dataclass
class Agent:
    cfg: AgentConfig
    status: AgentStatus = AgentStatus.AVAILABLE
    since: float = 0.0
    reachable: bool = False
    wrap_up_until: float = 0.0
    item_id: str | None = None

    @property
    def free(self) -> bool:
        return self.reachable and self.status == AgentStatus.AVAILABLE


class Dispatcher:
    def __init__(self, ctx: FlowContext, switchboard: Switchboard) -> None:
        self.ctx = ctx
        self.sb = switchboard
        now = ctx.now()
        self.agents = {a.id: Agent(a, since=now) for a in ctx.cfg.agents.values()}
        self.by_endpoint = {a.endpoint: a.id for a in ctx.cfg.agents.values()}
        self.legs: dict[str, AgentLeg] = {}  # work item id -> its delivery
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: False once a graceful stop began: no new offers
        self.accepting = True
        switchboard.on_other_event = self.on_event

    # ------------------------------------------------------------------ agents

    def set_status(self, agent: Agent, status: AgentStatus, item_id: str | None = None) -> None:
        if agent.status != status:
            log.info("[item=%s] agent %s: %s -> %s", (item_id or agent.item_id or "-")[:12],
                     agent.cfg.id, agent.status, status)
        agent.status = status
        agent.since = self.ctx.now()
        agent.item_id = item_id
        self.kick()

    def set_ready(self, agent_id: str, ready: bool) -> None:
        """For the console/API: not-ready <-> available. Busy agents are left as they are."""
        agent = self.agents[agent_id]
        if ready and agent.status == AgentStatus.NOT_READY:
            self.set_status(agent, AgentStatus.AVAILABLE)
        elif not ready and agent.status == AgentStatus.AVAILABLE:
            self.set_status(agent, AgentStatus.NOT_READY)

    def wrap_up(self, agent: Agent, queue: QueueConfig) -> None:
        if queue.wrap_up > 0:
            agent.wrap_up_until = self.ctx.now() + queue.wrap_up
            self.set_status(agent, AgentStatus.WRAP_UP)
        else:
            self.set_status(agent, AgentStatus.AVAILABLE)

    async def on_connect(self) -> None:
        """R15: endpoint reachability. Read once per connect, then follow the events."""
        for agent in self.agents.values():
            tech, _, resource = agent.cfg.endpoint.partition("/")
            try:
                ep = await self.ctx.ari.get_endpoint(tech, resource)
                await self.ctx.ari.subscribe_endpoint(tech, resource)
            except ari.AriError as exc:
                log.error("agent %s: endpoint %s unusable: %s", agent.cfg.id,
                          agent.cfg.endpoint, exc)
                agent.reachable = False
                continue
            self._reachability(agent, ep.state)
        self.kick()

    def on_event(self, ev: ari.Event) -> None:
        if isinstance(ev, ari.EndpointStateChange):
            agent_id = self.by_endpoint.get(ev.endpoint.name)
            if agent_id is not None:
                self._reachability(self.agents[agent_id], ev.endpoint.state)
                self.kick()

    def _reachability(self, agent: Agent, state: str) -> None:
        # "unknown": a static contact that is not qualified; it may well answer.
        reachable = state in ("online", "unknown")
        if reachable != agent.reachable:
            log.info("agent %s endpoint %s", agent.cfg.id, state)
        agent.reachable = reachable
        if not reachable and agent.status == AgentStatus.AVAILABLE:
            self.set_status(agent, AgentStatus.OFFLINE)
        elif reachable and agent.status == AgentStatus.OFFLINE:
            self.set_status(agent, AgentStatus.AVAILABLE)

    # ------------------------------------------------------------------ passes

    def kick(self) -> None:
        self._wake.set()

    def item_closed(self, item: WorkItem) -> None:
        """A live caller left (hang-up, callback): cancel a ringing agent leg for it."""
        leg = self.legs.get(item.id)
        if leg is not None:
            leg.deliver(Message("cancel"))
        self.kick()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="dispatcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()
            try:
                await self.dispatch_pass()
            except Exception:
                log.exception("dispatch pass failed")

    async def drain(self, grace: float) -> None:
        """Graceful stop (SIGTERM): no new offers; agents being rung or previewing give
        their offer back (committed); dials and press-1 confirmations in flight get up
        to ``grace`` seconds to finish. Conversations are left up in their bridges (the
        next instance watches them) and waiting callers stay in Stasis (re-adopted)."""
        self.accepting = False
        for leg in list(self.legs.values()):
            if not leg.talking and leg.agent.status in (
                    AgentStatus.RINGING, AgentStatus.PREVIEWING):
                leg.deliver(Message("cancel"))
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

    async def dispatch_pass(self) -> None:
        if not self.accepting:
            return
        now = self.ctx.now()
        engine = self.ctx.engine
        expired = engine.expire_due()
        if expired:
            await self.ctx.commit()
            self.ctx.counters.inc("expired", len(expired))
        for agent in self.agents.values():
            if agent.status == AgentStatus.WRAP_UP and agent.wrap_up_until <= now:
                self.set_status(agent, AgentStatus.AVAILABLE)
        for name in self.ctx.cfg.queues:
            serving = sum(1 for a in self.agents.values()
                          if name in a.cfg.queues and a.reachable
                          and a.status != AgentStatus.NOT_READY)
            engine.set_serving_agents(name, serving)
        free = sorted((a for a in self.agents.values() if a.free), key=lambda a: a.since)
        if not free:
            return
        open_for_callbacks = [
            q.name for q in self.ctx.cfg.queues.values()
            if q.hours is None or q.hours.is_open(now)
        ]
        on_duty = (AgentStatus.RINGING, AgentStatus.PREVIEWING, AgentStatus.BUSY,
                   AgentStatus.WRAP_UP)
        offers = engine.dispatch(
            {a.cfg.id: a.cfg.queues for a in free},
            callback_queues=open_for_callbacks,
            standby={a.cfg.id: a.cfg.queues for a in self.agents.values()
                     if a.reachable and a.status in on_duty},
            skip=self.ctx.held,
        )
        if offers:
            await self.ctx.commit()
        for agent_id, item in offers:
            agent = self.agents[agent_id]
            self.set_status(agent, AgentStatus.RINGING, item.id)
            leg = AgentLeg(self, agent, item)
            self.legs[item.id] = leg
            self.sb.register(leg)
            self.sb.start(leg)


class AgentLeg(ChannelSession):
    """One offer of one work item to one agent: ring, (preview,) connect, tear down.

    The customer leg of a callback routes its events into this same inbox, so the whole
    conversation is one ordered script; only our own channel's end raises ``Hangup``.
    """

    def __init__(self, dispatcher: Dispatcher, agent: Agent, item: WorkItem) -> None:
        super().__init__(dispatcher.ctx.ari, uuid.uuid4().hex, log)
        self.d = dispatcher
        self.ctx = dispatcher.ctx
        self.agent = agent
        self.item = item
        q = self.ctx.queue(item.queue)
        assert q is not None
        self.q = q
        self.extra["item"] = item.id[:12]
        self.answered = False
        self.bridge_id: str | None = None
        self.peer_id: str | None = None  # the caller's or the customer's channel
        self.customer_id: str | None = None  # a callback's customer leg (routed to us)
        self.last_cause = 0  # Q.850 cause of a hang-up request on our leg
        #: in conversation (bridged): a graceful stop leaves it running
        self.talking = False
        #: set by a graceful stop: exit without hanging anything up
        self.detached = False

    # ------------------------------------------------------------------ top level

    async def run(self) -> None:
        outcome = "failed"
        try:
            if self.item.kind == Kind.INBOUND:
                outcome = await self.deliver_inbound()
            else:
                outcome = await self.deliver_callback()
        except Hangup:
            outcome = await self.agent_hung_up()
        finally:
            if not self.detached:
                await self.teardown()
                await self.release_offer()
            self.d.legs.pop(self.item.id, None)
            if self.customer_id is not None:
                self.d.sb.sessions.pop(self.customer_id, None)
            self.finish(outcome)

    async def release_offer(self) -> None:
        """Safety net: whatever path ended this leg (a crash included), an item still
        offered to this agent goes back to its place for the next agent."""
        try:
            item = self.ctx.engine.get(self.item.id)
        except QueueError:
            return
        if item.state == State.OFFERED and item.offered_to == self.agent.cfg.id:
            self.log.warning("offer still open at the end of the agent leg; returned")
            await self.return_offer(timed_out=False)

    def finish(self, outcome: str) -> None:
        """The agent's next state: not-ready when silent, wrap-up after a conversation."""
        status = self.agent.status
        if outcome in ("silent", "rejected"):
            # R9: an agent who does not take an offered call stops getting offers until
            # they say they are ready (a phone on DND answering 486 would otherwise be
            # offered the same caller again at once, in a loop).
            self.d.set_status(self.agent, AgentStatus.NOT_READY)
        elif outcome == "talked":
            self.d.wrap_up(self.agent, self.q)
        elif status in (AgentStatus.RINGING, AgentStatus.PREVIEWING, AgentStatus.BUSY):
            self.d.set_status(self.agent, AgentStatus.AVAILABLE)
        self.d.kick()

    async def return_offer(self, timed_out: bool) -> None:
        engine = self.ctx.engine
        try:
            if timed_out:
                engine.offer_timed_out(self.item.id, self.agent.cfg.id)
            else:
                engine.offer_declined(self.item.id, self.agent.cfg.id)
        except QueueError as exc:  # closed meanwhile (caller hung up): nothing to return
            self.log.info("offer not returned: %s", exc)
            return
        await self.ctx.commit()
        self.ctx.counters.inc("offer_timeouts" if timed_out else "declines")

    async def ring_agent(self, caller_id: str, work_type: str) -> str:
        """Originate to the agent's endpoint and wait for the answer. Returns "answered",
        "silent" (no answer in time), "rejected" (busy/rejected) or "cancelled"; when
        not answered (and not cancelled) the offer is already back in the queue."""
        answer = await self._ring(caller_id, work_type)
        if answer not in ("answered", "cancelled"):
            await self.return_offer(timed_out=answer == "silent")
        return answer

    async def _ring(self, caller_id: str, work_type: str) -> str:
        variables = {"PJSIP_HEADER(add,X-Work-Type)": work_type,
                     "PJSIP_HEADER(add,X-Work-Item)": self.item.id}
        try:
            await self.ari.originate(
                self.agent.cfg.endpoint, app_args=f"agent,{self.item.id}", caller_id=caller_id,
                timeout=self.q.ring_timeout, variables=variables, channel_id=self.channel_id,
            )
        except ari.AriError as exc:
            self.log.error("cannot ring agent %s: %s", self.agent.cfg.id, exc)
            self.gone = True
            return "silent"
        deadline = self.ctx.now() + self.q.ring_timeout + GRACE
        while True:
            try:
                ev = await self.next(deadline)
            except Hangup:
                return self._unanswered_cause()
            if ev is None:
                return "silent"
            if isinstance(ev, ari.StasisStart) and ev.channel.id == self.channel_id:
                self.answered = True
                return "answered"
            if isinstance(ev, ari.ChannelHangupRequest) and ev.channel_id == self.channel_id:
                self.last_cause = ev.cause
            if isinstance(ev, Message) and ev.kind == "cancel":
                return "cancelled"

    def _unanswered_cause(self) -> str:
        cause = self.end_cause or self.last_cause
        return "rejected" if cause in (CAUSE_BUSY, CAUSE_REJECTED) else "silent"

    # ------------------------------------------------------------------ inbound (R9)

    async def deliver_inbound(self) -> str:
        caller = self.d.sb.sessions.get(self.item.channel_id or "")
        if not isinstance(caller, CallerSession):
            await self.return_offer(timed_out=False)
            return "cancelled"
        name = caller.channel.caller_name or (self.item.number or "")
        caller_id = f'"{name}" <{self.item.number or "anonymous"}>'
        answer = await self.ring_agent(caller_id, "inbound")
        if answer != "answered":
            return answer
        if not await ask_connect(caller):
            # Gone, or busy entering another number: the offer goes back (run()).
            self.log.info("caller not available to connect as the agent answered")
            return "cancelled"
        self.peer_id = caller.channel_id
        caller.peer = self
        try:
            await self.bridge(caller.channel_id)
            self.ctx.engine.connected(self.item.id, self.agent.cfg.id)
        except (ari.AriError, QueueError) as exc:
            # The caller hung up between the answer and the bridge (their session
            # closed the item as abandoned): nothing to connect.
            self.log.info("caller left while being connected: %s", exc)
            return "cancelled"
        await self.ctx.commit()
        self.ctx.counters.inc("inbound_connected")
        self.d.set_status(self.agent, AgentStatus.BUSY, self.item.id)
        await self.talk()
        return "talked"

    # ------------------------------------------------------------------ callback (R7, R8)

    async def deliver_callback(self) -> str:
        number = parse_e164(self.item.number or "")
        if number is None:  # stored numbers are E.164: only a damaged store gets here
            self.log.error("callback without a usable number; cancelled")
            self._engine_step(lambda: self.ctx.engine.cancel(self.item.id, "no_number"))
            await self.ctx.commit()
            return "cancelled"
        # The softphone shows the callback mark and the number as the agent would dial it.
        answer = await self.ring_agent(
            f'"CALLBACK {number.national}" <{number.e164}>', "callback")
        if answer != "answered":
            return answer
        self.d.set_status(self.agent, AgentStatus.PREVIEWING, self.item.id)
        choice = await self.preview(number.national)
        if choice == "cancelled":
            return await self.withdrawn()
        if choice != "1":
            await self.return_offer(timed_out=choice == "")
            self.log.info("agent %s %s the callback", self.agent.cfg.id,
                          "declined" if choice == "2" else "did not answer the preview of")
            await self.hangup()
            return "silent" if choice == "" else "declined"
        if not self._engine_step(
                lambda: self.ctx.engine.dial_started(self.item.id, self.agent.cfg.id)):
            return await self.withdrawn()
        if not await self.ctx.commit():
            # The attempt could not be recorded: dialling now could call the customer
            # twice after a crash. Not the customer's failure: the attempt is given back.
            self._engine_step(lambda: self.ctx.engine.dial_failed(
                self.item.id, "store_failure", counted=False))
            await self.ctx.commit()
            return await self.tell_agent_failed()
        self.ctx.counters.inc("accepts")
        self.d.set_status(self.agent, AgentStatus.BUSY, self.item.id)
        result = await self.dial_customer(self.ctx.cfg.outbound.dial_string(number))
        if result == "cancelled":
            return await self.withdrawn()
        if result != "answered":
            await self.attempt_failed(result)
            return await self.tell_agent_failed()
        await self.quietly(self.ari.stop_ringing(self.channel_id))
        assert self.peer_id is not None
        try:
            await self.bridge(self.peer_id)
        except ari.AriError as exc:
            self.log.info("customer left before the bridge: %s", exc)
            await self.attempt_failed("failed")
            return "failed"
        if not self._engine_step(lambda: self.ctx.engine.callback_connected(self.item.id)):
            return "failed"
        await self.ctx.commit()
        self.ctx.counters.inc("callbacks_connected")
        await self.talk()
        return "talked"

    def _engine_step(self, step: Callable[[], object]) -> bool:
        """One engine transition for our item; False when the item was closed or moved
        under us (a supervisor cancel, R12's inbound connect). Never crashes the leg."""
        try:
            step()
        except QueueError as exc:
            self.log.info("work item changed under the agent leg: %s", exc)
            return False
        return True

    async def attempt_failed(self, result: str) -> None:
        """R10: one attempt failed. A trunk that never answered is our outage, not the
        customer's no-answer: its own log line and metric, and no attempt used up."""
        trunk = result == "trunk_failure"
        failed: list[WorkItem] = []
        if not self._engine_step(lambda: failed.append(self.ctx.engine.dial_failed(
                self.item.id, result, counted=not trunk))):
            return
        await self.ctx.commit()
        if trunk:
            self.ctx.counters.inc("trunk_failures")
            self.log.warning("trunk failure: the carrier never answered the callback INVITE "
                             "(check outbound.dial and the trunk); retried later")
        else:
            self.ctx.counters.inc("callback_failures")
        self.log.info("callback attempt %d failed: %s -> %s", failed[0].attempts, result,
                      failed[0].state)

    async def tell_agent_failed(self) -> str:
        await self.hangup_peer()
        await self.quietly(self.ari.stop_ringing(self.channel_id))
        with contextlib.suppress(Hangup):
            await self.play_until([self.ctx.prompt(self.q, "callback_failed")])
        await self.hangup()
        return "failed"

    async def withdrawn(self) -> str:
        """The item was closed while this agent held it (cancelled, or the customer got
        through on an inbound call): stop, free the agent, dial nobody."""
        self.log.info("callback withdrawn while offered to agent %s", self.agent.cfg.id)
        self.ctx.counters.inc("offers_withdrawn")
        await self.hangup_peer()
        await self.hangup()
        return "cancelled"

    async def preview(self, national: str) -> str:
        """R7: callback, the number, minutes waited; 1 accepts, 2 declines. Returns the
        digit, "" when the agent stayed silent, or "cancelled" (item withdrawn)."""
        minutes = max(0, round((self.ctx.now() - self.item.arrived_at) / 60))
        media = [
            self.ctx.prompt(self.q, "preview_intro"),
            *say_digits(national),
            self.ctx.prompt(self.q, "preview_waited"),
            *say_number(minutes),
            self.ctx.prompt(self.q, "minutes"),
            self.ctx.prompt(self.q, "preview_accept"),
        ]
        deadline = self.ctx.now() + self.q.preview_timeout
        got = await self.play_until(media, {"1", "2"}, on_message=_is_cancel)
        if isinstance(got, Message):
            return "cancelled"
        if got:
            return got
        ev = await self.wait_for(
            lambda e: (isinstance(e, ari.ChannelDtmfReceived) and e.digit in ("1", "2"))
            or _is_cancel(e),
            deadline,
        )
        if isinstance(ev, Message):
            return "cancelled"
        return ev.digit if isinstance(ev, ari.ChannelDtmfReceived) else ""

    async def dial_customer(self, dial_string: str) -> str:
        """R8: originate to the customer through the trunk; the agent hears ringback.
        Returns "answered", "busy", "noanswer", "failed", "unverified", "trunk_failure"
        or "cancelled" (the item was withdrawn meanwhile; the customer leg is hung up).

        Trunk failure: the call ended without the customer's side ever ringing (no 180/
        183 from the carrier: it never answered the INVITE, or refused it with 5xx).
        A customer's phone that does not answer always rang first."""
        customer_id = uuid.uuid4().hex
        self.peer_id = self.customer_id = customer_id
        self.d.sb.sessions[customer_id] = self  # its events come to this inbox
        await self.quietly(self.ari.start_ringing(self.channel_id))
        try:
            await self.ari.originate(
                dial_string,
                app_args=f"customer,{self.item.id}",
                caller_id=f'"{self.q.caller_id}" <{self.q.caller_id}>',
                timeout=self.ctx.cfg.outbound.dial_timeout,
                channel_id=customer_id,
                variables={"PJSIP_HEADER(add,X-Work-Item)": self.item.id},
            )
        except ari.AriError as exc:
            self.log.error("callback originate failed: %s", exc)
            return "trunk_failure"
        self.ctx.counters.inc("dials")
        deadline = self.ctx.now() + self.ctx.cfg.outbound.dial_timeout + GRACE
        dialstatus = ""
        rang = False
        while True:
            ev = await self.next(deadline)
            if ev is None:
                await self.hangup_peer()
                return "noanswer" if rang else "trunk_failure"
            if _is_cancel(ev):
                await self.hangup_peer()
                return "cancelled"
            if isinstance(ev, ari.Dial) and ev.peer.id == customer_id and ev.dialstatus:
                dialstatus = ev.dialstatus
                rang = rang or dialstatus in ("RINGING", "PROGRESS")
            if isinstance(ev, ari.ChannelDestroyed | ari.StasisEnd) and \
                    ev.channel_id == customer_id:
                cause = ev.cause if isinstance(ev, ari.ChannelDestroyed) else 0
                if dialstatus == "BUSY" or cause == CAUSE_BUSY:
                    return "busy"
                if not rang:
                    # The number itself was refused (unallocated, no route, changed,
                    # invalid format): the customer's side, counted as an attempt.
                    return "failed" if cause in CAUSE_BAD_NUMBER else "trunk_failure"
                if cause in CAUSE_NO_ANSWER or dialstatus in ("NOANSWER", "RINGING"):
                    return "noanswer"
                return "failed"
            if isinstance(ev, ari.StasisStart) and ev.channel.id == customer_id:
                rang = True
                if self.q.verify_customer and not await self.verify():
                    await self.hangup_peer()
                    return "unverified"
                return "answered"

    async def verify(self) -> bool:
        """R8 option: the customer confirms with 1, so agents never talk to voicemail."""
        pressed = await self.play_to_customer("verify_customer", self.q.preview_timeout,
                                              until_1=True)
        return pressed == "1" and await self.play_to_customer("connecting", 30) != "gone"

    async def play_to_customer(self, prompt_id: str, wait: float, *,
                               until_1: bool = False) -> str:
        """Play a prompt on the customer leg. Returns "1" (pressed, with ``until_1``;
        the prompt is stopped), "done" (played out; with ``until_1`` the wait goes on
        to ``wait`` seconds), "timeout", or "gone" (the customer hung up)."""
        assert self.peer_id is not None
        playback_id = uuid.uuid4().hex
        try:
            await self.ari.play(self.peer_id, [self.ctx.prompt(self.q, prompt_id)],
                                playback_id=playback_id)
        except (ari.AriNotFound, ari.AriConflict):
            return "gone"
        deadline = self.ctx.now() + wait
        while True:
            ev = await self.next(deadline)
            if ev is None:
                return "timeout"
            if isinstance(ev, ari.PlaybackFinished) and ev.playback.id == playback_id \
                    and not until_1:
                return "done"
            if until_1 and isinstance(ev, ari.ChannelDtmfReceived) \
                    and ev.channel_id == self.peer_id and ev.digit == "1":
                await self.stop_playback(playback_id)
                return "1"
            if isinstance(ev, ari.StasisEnd | ari.ChannelDestroyed) and \
                    ev.channel_id == self.peer_id:
                return "gone"

    # ------------------------------------------------------------------ conversation

    async def bridge(self, peer_id: str) -> None:
        self.bridge_id = await self.ari.create_bridge()
        await self.ari.add_to_bridge(self.bridge_id, [self.channel_id, peer_id])

    async def talk(self) -> None:
        """Until either side hangs up; then the other side is hung up too."""
        self.talking = True
        while True:
            ev = await self.next()
            if isinstance(ev, Message) and ev.kind == "peer_gone":
                return
            if isinstance(ev, ari.StasisEnd | ari.ChannelDestroyed) and \
                    ev.channel_id == self.peer_id:
                return

    async def agent_hung_up(self) -> str:
        """Our (agent) channel ended. Before the answer: unanswered; in preview: a
        silent agent; while dialling: the attempt fails; in conversation: done."""
        engine = self.ctx.engine
        item = engine.get(self.item.id)
        if not self.answered:
            await self.return_offer(timed_out=self._unanswered_cause() == "silent")
            return self._unanswered_cause()
        if item.state == State.OFFERED:
            await self.return_offer(timed_out=False)
            return "declined"
        if item.state == State.DIALLING:
            self._engine_step(lambda: engine.dial_failed(self.item.id, "agent_hangup"))
            await self.ctx.commit()
            return "declined"
        return "talked"

    async def hangup_peer(self) -> None:
        if self.peer_id is not None:
            with contextlib.suppress(ari.AriNotFound, ari.AriConflict):
                await self.ari.hangup(self.peer_id)

    async def teardown(self) -> None:
        """Nothing left in a bridge or half-up: hang up both legs, destroy the bridge."""
        with contextlib.suppress(ari.AriError):
            await self.hangup_peer()
        if not self.gone:
            with contextlib.suppress(ari.AriError):
                await self.ari.hangup(self.channel_id)
        if self.bridge_id is not None:
            with contextlib.suppress(ari.AriError):
                await self.ari.destroy_bridge(self.bridge_id)
