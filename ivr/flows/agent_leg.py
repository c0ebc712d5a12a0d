"""The delivery of one work item to one agent (SPEC R7-R10): ring, preview, dial, bridge.

An ``AgentLeg`` is a session on the channel we originate to the agent's endpoint. The
customer leg of a callback routes its events into this same inbox (registered with the
switchboard), so the whole conversation is one ordered script; only our own channel's
end raises ``Hangup``. It returns a typed ``Outcome``; the dispatcher applies it to the
agent (not ready, wrap-up, available).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from ivr import ari
from ivr.config import QueueConfig
from ivr.domain import events
from ivr.domain.agents import Agent, AgentBoard, AgentStatus
from ivr.domain.items import Kind, State, WorkItem
from ivr.domain.numbers import parse_e164
from ivr.domain.queues import QueueError
from ivr.flows.caller import CallerSession
from ivr.flows.context import FlowContext
from ivr.flows.customer import CAUSE_BUSY, GRACE, CustomerCall, Dial
from ivr.flows.outcome import RING_OUTCOME, Outcome, Phase, Ring
from ivr.flows.session import (
    CANCEL,
    DECIDED,
    PEER_GONE,
    ChannelSession,
    Handover,
    Hangup,
    Message,
    say_digits,
    say_number,
)
from ivr.flows.switchboard import Switchboard, leg_channel_id

log = logging.getLogger("ivr.flows.agents")

# Q.850 cause of an agent's phone refusing the offer (besides busy, 17).
CAUSE_REJECTED = 21
# How long a caller's session may take to hand its channel over (stop MOH / a prompt).
HANDOVER_TIMEOUT = 5.0


def _is_cancel(ev: object) -> bool:
    return isinstance(ev, Message) and ev.kind == CANCEL


def _is_cancel_or_decided(ev: object) -> bool:
    return isinstance(ev, Message) and ev.kind in (CANCEL, DECIDED)


ACCEPT, DECLINE = "accept", "decline"


class NotNow(Exception):
    """A console accept/decline that cannot apply now (the reason says why)."""


class AgentLeg(ChannelSession):
    """One offer of one work item to one agent."""

    def __init__(self, ctx: FlowContext, board: AgentBoard, switchboard: Switchboard,
                 agent: Agent, item: WorkItem) -> None:
        # The node the leg is originated on: a live caller's (the two are bridged
        # there; an agent on another node is reached through the trunk to it), else the
        # agent's own (a callback is dialled from the accepting agent's node).
        node = ctx.node_name(item.node if item.kind is Kind.INBOUND else agent.node)
        super().__init__(ctx.client(node), leg_channel_id(ctx.cfg.ari.app, "agent"), log,
                         ctx.clock, node)
        self.ctx = ctx
        self.board = board
        self.switchboard = switchboard
        self.agent = agent
        self.item = item
        q = ctx.queue(item.queue)
        if q is None:
            raise ValueError(f"work item {item.id} of unknown queue {item.queue}")
        self.q: QueueConfig = q
        self.extra["item"] = item.id[:12]
        self.answered = False
        self.bridge_id: str | None = None
        self.peer_id: str | None = None  # the caller's or the customer's channel
        self.customer: CustomerCall | None = None
        self.last_cause = 0  # Q.850 cause of a hang-up request on our leg
        #: in conversation (bridged): a graceful stop leaves it running
        self.talking = False
        #: set by a graceful stop: exit without hanging anything up
        self.detached = False
        #: how it ended (read by the dispatcher when the task is done)
        self.outcome = Outcome.WITHDRAWN
        #: where the offer is (the console's card)
        self.phase = Phase.RINGING
        #: ACCEPT / DECLINE: the first of the softphone key and the console button
        self.decision: str | None = None
        #: an inbound caller's channel handed to us and not connected yet
        self.handover: Handover | None = None
        self.accepted_at = 0.0  # time.monotonic() of the accept (accept-to-dial latency)

    def decide(self, accept: bool) -> None:
        """The console's Accept / Decline: exactly the softphone's 1 / 2. Whichever
        comes first wins; the customer is never dialled before an accept, nor before the
        agent's phone is answered (an accept while it rings is kept: on answer the
        customer is dialled without the preview). An inbound call is taken by answering
        the phone; it can only be declined while it rings. Raises ``NotNow``."""
        if self.decision is not None:
            raise NotNow("already accepted" if self.decision == ACCEPT else "already declined")
        if self.item.kind == Kind.INBOUND:
            if accept:
                raise NotNow("an inbound call is taken by answering the phone")
            if self.phase != Phase.RINGING:
                raise NotNow("the call is already answered")
        elif self.phase not in (Phase.RINGING, Phase.PREVIEW):
            raise NotNow(f"the offer is {self.phase}")
        self._decided(ACCEPT if accept else DECLINE)
        self.deliver(Message(DECIDED))

    def _decided(self, decision: str) -> None:
        self.decision = decision
        if decision == ACCEPT:
            self.accepted_at = time.monotonic()

    # ------------------------------------------------------------------ top level

    async def run(self) -> None:
        try:
            if self.item.kind == Kind.INBOUND:
                self.outcome = await self.deliver_inbound()
            else:
                self.outcome = await self.deliver_callback()
        except Hangup:
            self.outcome = await self.agent_hung_up()
        finally:
            if self.customer is not None:
                self.customer.close()
            if not self.detached:
                await self.teardown()
                await self.release_offer()
                if self.handover is not None:
                    # Not connected after all: the caller takes the call back (and
                    # hears why) instead of being hung up with us.
                    self.handover.hand_back()

    async def release_offer(self) -> None:
        """Safety net: whatever path ended this leg (a crash included), an item still
        offered to this agent goes back to its place for the next agent."""
        try:
            item = self.ctx.engine.get(self.item.id)
        except QueueError:
            return
        if item.state == State.OFFERED and item.offered_to == self.agent.id:
            self.log.warning("offer still open at the end of the agent leg; returned")
            await self.return_offer(timed_out=False)

    async def return_offer(self, timed_out: bool) -> None:
        engine = self.ctx.engine
        step = engine.offer_timed_out if timed_out else engine.offer_declined
        if not self._engine_step(lambda: step(self.item.id, self.agent.id)):
            return  # closed meanwhile (caller hung up): nothing to return
        await self.ctx.commit()
        event = events.OfferTimedOut if timed_out else events.OfferDeclined
        self.ctx.publish(event(self.q.name, self.item.id, agent=self.agent.id))

    def _engine_step(self, step: Callable[[], object]) -> bool:
        """One engine transition for our item; False when the item was closed or moved
        under us (a supervisor cancel, R12's inbound connect). Never crashes the leg."""
        try:
            step()
        except QueueError as exc:
            self.log.info("work item changed under the agent leg: %s", exc)
            return False
        return True

    # ------------------------------------------------------------------ ringing

    async def ring_agent(self, caller_id: str, work_type: str) -> Ring:
        """Originate to the agent's endpoint and wait for the answer; when not answered
        (and not cancelled) the offer is already back in the queue."""
        answer = await self._ring(caller_id, work_type)
        if answer in (Ring.SILENT, Ring.REJECTED, Ring.DECLINED):
            await self.return_offer(timed_out=answer == Ring.SILENT)
        if answer == Ring.DECLINED:
            self.log.info("agent %s declined on the console while ringing", self.agent.id)
        return answer

    async def _ring(self, caller_id: str, work_type: str) -> Ring:
        variables = {"PJSIP_HEADER(add,X-Work-Type)": work_type,
                     "PJSIP_HEADER(add,X-Work-Item)": self.item.id}
        try:
            await self.ari.originate(
                self.endpoint, app_args=f"agent,{self.item.id}", caller_id=caller_id,
                timeout=self.q.ring_timeout, variables=variables, channel_id=self.channel_id,
            )
        except ari.AriError as exc:
            self.log.error("cannot ring agent %s: %s", self.agent.id, exc)
            self.gone = True
            return Ring.SILENT
        deadline = self.ctx.now() + self.q.ring_timeout + GRACE
        while True:
            try:
                ev = await self.next(deadline)
            except Hangup:
                return self._unanswered_cause()
            if ev is None:
                return Ring.SILENT
            if isinstance(ev, ari.StasisStart) and ev.channel.id == self.channel_id:
                self.answered = True
                return Ring.ANSWERED
            if isinstance(ev, ari.ChannelHangupRequest) and ev.channel_id == self.channel_id:
                self.last_cause = ev.cause
            if _is_cancel(ev):
                return Ring.CANCELLED
            if isinstance(ev, Message) and ev.kind == DECIDED and self.decision == DECLINE:
                return Ring.DECLINED  # (an accept is kept for the answer)

    @property
    def endpoint(self) -> str:
        """What the leg's node dials to ring the agent: the softphone itself on the
        agent's own node, else the trunk to the agent's node."""
        agent_node = self.ctx.node_name(self.agent.node)
        if agent_node == self.node or not self.ctx.cfg.nodes:
            return self.agent.endpoint
        return self.ctx.cfg.nodes[agent_node].trunk_dial(self.agent.endpoint)

    def _unanswered_cause(self) -> Ring:
        cause = self.end_cause or self.last_cause
        return Ring.REJECTED if cause in (CAUSE_BUSY, CAUSE_REJECTED) else Ring.SILENT

    # ------------------------------------------------------------------ inbound (R9)

    async def deliver_inbound(self) -> Outcome:
        caller = self.switchboard.session_for(self.item.channel_id or "", self.node)
        if not isinstance(caller, CallerSession):
            await self.return_offer(timed_out=False)
            return Outcome.WITHDRAWN
        name = caller.channel.caller_name or (self.item.number or "")
        caller_id = f'"{name}" <{self.item.number or "anonymous"}>'
        answer = await self.ring_agent(caller_id, "inbound")
        if answer != Ring.ANSWERED:
            return RING_OUTCOME[answer]
        handover = Handover(self)
        if not await handover.offer(caller, HANDOVER_TIMEOUT):
            # Gone, or busy entering another number: the offer goes back (run()).
            self.log.info("caller not available to connect as the agent answered")
            return Outcome.WITHDRAWN
        self.handover = handover
        try:
            await self.bridge(caller.channel_id)
            self.ctx.engine.connected(self.item.id, self.agent.id)
        except (ari.AriError, QueueError) as exc:
            if caller.gone or caller.ended.is_set():
                # The caller hung up between the answer and the bridge (their session
                # closed the item as abandoned): nothing to connect.
                self.log.info("caller left while being connected: %s", exc)
                self.handover = None
                return Outcome.WITHDRAWN
            # Our side failed (the agent's phone vanished): the caller is handed back
            # (run()) and the offer returns to its place.
            self.log.warning("agent vanished while being connected: %s", exc)
            await self.return_offer(timed_out=False)
            return Outcome.DECLINED
        self.handover = None  # connected: the call is ours to end now
        self.peer_id = caller.channel_id
        await self.ctx.commit()
        self.phase = Phase.CONNECTED
        self.ctx.publish(events.InboundConnected(self.q.name, self.item.id, agent=self.agent.id))
        self.board.set_status(self.agent, AgentStatus.BUSY, self.item.id)
        await self.talk()
        return Outcome.TALKED

    # ------------------------------------------------------------------ callback (R7, R8)

    async def deliver_callback(self) -> Outcome:
        number = parse_e164(self.item.number or "")
        if number is None:  # stored numbers are E.164: only a damaged store gets here
            self.log.error("callback without a usable number; cancelled")
            self._engine_step(lambda: self.ctx.engine.cancel(self.item.id, "no_number"))
            await self.ctx.commit()
            return Outcome.WITHDRAWN
        # The softphone shows the callback mark and the number as the agent would dial it.
        answer = await self.ring_agent(f'"CALLBACK {number.national}" <{number.e164}>',
                                       "callback")
        if answer != Ring.ANSWERED:
            return RING_OUTCOME[answer]
        self.phase = Phase.PREVIEW
        self.board.set_status(self.agent, AgentStatus.PREVIEWING, self.item.id)
        choice = await self.preview(number.national)
        if choice == CANCEL:
            return await self.withdrawn()
        if choice != "1":
            await self.return_offer(timed_out=choice == "")
            self.log.info("agent %s %s the callback", self.agent.id,
                          "declined" if choice == "2" else "did not answer the preview of")
            await self.hangup()
            return Outcome.UNANSWERED if choice == "" else Outcome.DECLINED
        if not self._engine_step(
                lambda: self.ctx.engine.dial_started(self.item.id, self.agent.id,
                                                     self.node)):
            return await self.withdrawn()
        if not await self.ctx.commit():
            # The attempt could not be recorded: dialling now could call the customer
            # twice after a crash. Not the customer's failure: the attempt is given back.
            self._engine_step(lambda: self.ctx.engine.dial_failed(
                self.item.id, "store_failure", counted=False))
            await self.ctx.commit()
            return await self.tell_agent_failed()
        self.phase = Phase.DIALLING
        self.ctx.publish(events.OfferAccepted(self.q.name, self.item.id, agent=self.agent.id))
        self.board.set_status(self.agent, AgentStatus.BUSY, self.item.id)
        self.customer = CustomerCall(self, self.ctx, self.q, self.item.id, self.agent.id,
                                     self.switchboard)
        self.peer_id = self.customer.channel_id  # teardown hangs it up, whatever happens
        result = await self.customer.dial(self.ctx.cfg.outbound.dial_string(number),
                                          accepted_at=self.accepted_at)
        if result == Dial.CANCELLED:
            return await self.withdrawn()
        if result == Dial.MACHINE_MESSAGE:
            return await self.machine_message_left()
        if result != Dial.ANSWERED:
            await self.attempt_failed(result)
            return await self.tell_agent_failed()
        await self.quietly(self.ari.stop_ringing(self.channel_id))
        try:
            await self.bridge(self.peer_id)
        except ari.AriError as exc:
            self.log.info("customer left before the bridge: %s", exc)
            await self.attempt_failed(Dial.FAILED)
            return Outcome.ATTEMPT_FAILED
        if not self._engine_step(lambda: self.ctx.engine.callback_connected(self.item.id)):
            return Outcome.WITHDRAWN
        await self.ctx.commit()
        self.phase = Phase.CONNECTED
        self.ctx.publish(events.CallbackConnected(self.q.name, self.item.id,
                                                  agent=self.agent.id))
        await self.talk()
        return Outcome.TALKED

    async def attempt_failed(self, result: Dial) -> None:
        """R10: one attempt failed. A trunk that never answered is our outage, not the
        customer's no-answer: its own log line and event, and no attempt used up."""
        trunk = result == Dial.TRUNK_FAILURE
        failed: list[WorkItem] = []
        if not self._engine_step(lambda: failed.append(self.ctx.engine.dial_failed(
                self.item.id, result.value, counted=not trunk))):
            return
        await self.ctx.commit()
        if trunk:
            self.ctx.publish(events.TrunkFailed(self.q.name, self.item.id, agent=self.agent.id))
            self.log.warning("trunk failure: the carrier never answered the callback INVITE "
                             "(check outbound.dial and the trunk); retried later")
        else:
            self.ctx.publish(events.CallbackAttemptFailed(
                self.q.name, self.item.id, agent=self.agent.id, reason=result.value))
        self.log.info("callback attempt %d failed: %s -> %s", failed[0].attempts, result,
                      failed[0].state)

    async def machine_message_left(self) -> Outcome:
        """An answering machine took the queue's message (``answering_machine:
        message``): nobody talked, and nothing is retried. The engine has no "closed by
        a message" transition: the callback is cancelled with reason ``machine_message``
        (its attempt stays counted). The agent is freed (no notice: it is not retried)."""
        self._engine_step(lambda: self.ctx.engine.cancel(self.item.id, "machine_message"))
        await self.ctx.commit()
        self.log.info("answering machine: message left, callback closed")
        await self.hangup_peer()
        await self.quietly(self.ari.stop_ringing(self.channel_id))
        await self.hangup()
        return Outcome.ATTEMPT_FAILED

    async def tell_agent_failed(self) -> Outcome:
        await self.hangup_peer()
        await self.quietly(self.ari.stop_ringing(self.channel_id))
        with contextlib.suppress(Hangup):
            await self.play_until([self.ctx.prompt(self.q, "callback_failed")])
        await self.hangup()
        return Outcome.ATTEMPT_FAILED

    async def withdrawn(self) -> Outcome:
        """The item was closed while this agent held it (cancelled, or the customer got
        through on an inbound call): stop, free the agent, dial nobody."""
        self.log.info("callback withdrawn while offered to agent %s", self.agent.id)
        self.ctx.publish(events.OfferWithdrawn(self.q.name, self.item.id, agent=self.agent.id))
        await self.hangup_peer()
        await self.hangup()
        return Outcome.WITHDRAWN

    async def preview(self, national: str) -> str:
        """R7: callback, the number, minutes waited; 1 accepts, 2 declines (on the
        softphone or the console, whichever first). Returns "1", "2", "" when the agent
        stayed silent, or ``CANCEL`` (item withdrawn). An accept or decline given on the
        console while the phone rang applies at once: no preview."""
        if self.decision is not None:
            if self.decision == ACCEPT:
                self.accepted_at = time.monotonic()  # it takes effect now, on answer
            return "1" if self.decision == ACCEPT else "2"
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
        got = await self.play_until(media, {"1", "2"}, on_message=_is_cancel_or_decided)
        if not got:
            ev = await self.wait_for(
                lambda e: (isinstance(e, ari.ChannelDtmfReceived) and e.digit in ("1", "2"))
                or _is_cancel_or_decided(e),
                deadline,
            )
            if isinstance(ev, ari.ChannelDtmfReceived):
                got = ev.digit
            elif isinstance(ev, Message):
                got = ev
        if isinstance(got, Message) and got.kind == CANCEL:
            return CANCEL
        if self.decision is None and got in ("1", "2"):
            self._decided(ACCEPT if got == "1" else DECLINE)  # the key came first
        if self.decision is not None:  # the first of key and button, whatever came next
            return "1" if self.decision == ACCEPT else "2"
        return ""

    # ------------------------------------------------------------------ conversation

    async def bridge(self, peer_id: str) -> None:
        self.bridge_id = await self.ari.create_bridge()
        await self.ari.add_to_bridge(self.bridge_id, [self.channel_id, peer_id])

    async def talk(self) -> None:
        """Until either side hangs up; then the other side is hung up too."""
        self.talking = True
        while True:
            ev = await self.next()
            if isinstance(ev, Message) and ev.kind == PEER_GONE:
                return
            if isinstance(ev, ari.StasisEnd | ari.ChannelDestroyed) and \
                    ev.channel_id == self.peer_id:
                return

    async def agent_hung_up(self) -> Outcome:
        """Our (agent) channel ended. Before the answer: unanswered; in preview: a
        decline; while dialling: the attempt fails; in conversation: done."""
        engine = self.ctx.engine
        item = engine.get(self.item.id)
        if not self.answered:
            ring = self._unanswered_cause()
            await self.return_offer(timed_out=ring == Ring.SILENT)
            return RING_OUTCOME[ring]
        if item.state == State.OFFERED:
            await self.return_offer(timed_out=False)
            return Outcome.DECLINED
        if item.state == State.DIALLING:
            self._engine_step(lambda: engine.dial_failed(self.item.id, "agent_hangup"))
            await self.ctx.commit()
            return Outcome.DECLINED
        return Outcome.TALKED

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
