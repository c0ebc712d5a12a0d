"""A callback's customer leg (SPEC R8, R10): dial the customer through the trunk, tell
what came of it, optionally have the customer confirm before the agent is connected.

The customer's channel events are routed into its agent leg's inbox (``_Route``), so the
leg's script reads both channels in order; ``CustomerCall`` is the customer half of that
script, run by the leg.
"""

from __future__ import annotations

import contextlib
import logging
import time
from enum import StrEnum

from ivr import ari
from ivr.config import QueueConfig
from ivr.domain import events
from ivr.flows.context import FlowContext
from ivr.flows.session import CANCEL, GONE, ChannelSession, Message
from ivr.flows.switchboard import Switchboard, leg_channel_id

log = logging.getLogger("ivr.flows.agents")

# Asterisk hang-up causes on an originated leg that never answered (Q.850).
CAUSE_BUSY = 17
CAUSE_NO_ANSWER = (18, 19)
# A final response that says the network, not the number, failed: 503 congestion (34),
# 500 network out of order (38), 502 destination out of order (27), 504 (102), temporary
# failure (41), switching congestion (42), resource unavailable (47), and 408 / no user
# responding (18: what SIP timer B gives a carrier that never answered, at 32 s, when
# dial_timeout is longer). Other refusals (404 unallocated, 480, 603 declined...) are the
# customer's side and count as an attempt.
CAUSE_TRUNK = (18, 27, 34, 38, 41, 42, 47, 102)

# Extra seconds past an originate timeout before we give up on Asterisk telling us.
GRACE = 5.0

# The dialplan context that runs AMD() on an answered customer and hands the channel
# back (asterisk-config/extensions.conf), and how long we wait for it: AMD's total
# analysis time (amd.conf's default, or amd_options' fourth value) plus GRACE; for
# ``message``, also WaitForSilence's limit (the end of the greeting, for the beep).
AMD_CONTEXT = "ivr-amd"
AMD_TOTAL_DEFAULT = 5.0
AMD_SILENCE_WAIT = "1000,1,20"
AMD_SILENCE_LIMIT = 20.0


class Dial(StrEnum):
    """A callback attempt's result; the values are the history's ``reason``."""

    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "noanswer"
    FAILED = "failed"
    UNVERIFIED = "unverified"
    TRUNK_FAILURE = "trunk_failure"
    CANCELLED = "cancelled"
    #: an answering machine answered (answering_machine: retry): a failed attempt
    MACHINE = "machine"
    #: an answering machine took our message (answering_machine: message): closed
    MACHINE_MESSAGE = "machine_message"


def _classify(dialstatus: str, rang: bool, refused: int | None, cause: int) -> Dial:
    """What an unanswered attempt means (measured on Asterisk 22 with a SIP carrier):
    busy is busy; a customer's phone that rang and was not answered is no answer; a
    carrier that never answered the INVITE at all (no ringing, no final response: the
    originate timed out) or refused it for a network reason is a trunk failure; any
    other immediate refusal is the number's (counted as an attempt)."""
    if dialstatus == "BUSY" or cause == CAUSE_BUSY or refused == CAUSE_BUSY:
        return Dial.BUSY
    if rang:
        if cause in CAUSE_NO_ANSWER or dialstatus in ("NOANSWER", "RINGING"):
            return Dial.NO_ANSWER
        return Dial.FAILED
    if refused is None or refused in CAUSE_TRUNK:
        return Dial.TRUNK_FAILURE
    return Dial.FAILED


def _is_cancel(ev: object) -> bool:
    return isinstance(ev, Message) and ev.kind == CANCEL


def amd_wait(q: QueueConfig) -> float:
    """Seconds to wait for the answering-machine check's result."""
    fields = q.amd_options.split(",") if q.amd_options else []
    total = int(fields[3]) / 1000 if len(fields) > 3 and fields[3] else AMD_TOTAL_DEFAULT
    extra = AMD_SILENCE_LIMIT if q.answering_machine == "message" else 0.0
    return total + extra + GRACE


class CustomerCall:
    """One attempt to reach the customer of a callback, on behalf of the agent's leg
    (``leg``: its session, whose inbox and playback helpers this script uses)."""

    def __init__(self, leg: ChannelSession, ctx: FlowContext, q: QueueConfig, item_id: str,
                 agent_id: str, switchboard: Switchboard) -> None:
        self.leg = leg
        self.ctx = ctx
        self.q = q
        self.item_id = item_id
        self.agent_id = agent_id
        self.switchboard = switchboard
        self.channel_id = leg_channel_id(ctx.cfg.ari.app, "customer")
        self._route = _Route(leg, self.channel_id)
        switchboard.register(self._route)  # its events come to the leg's inbox

    def close(self) -> None:
        self.switchboard.unregister(self._route)

    async def dial(self, dial_string: str, accepted_at: float = 0.0) -> Dial:
        """R8: originate to the customer through the trunk; the agent hears ringback.

        Trunk failure: the call ended without the customer's side ever ringing (no 180/
        183 from the carrier: it never answered the INVITE, or refused it with 5xx).
        A customer's phone that does not answer always rang first."""
        leg, q, ctx = self.leg, self.q, self.ctx
        customer_id = self.channel_id
        await leg.quietly(leg.ari.start_ringing(leg.channel_id))
        latency = time.monotonic() - accepted_at if accepted_at else 0.0
        variables = {"PJSIP_HEADER(add,X-Work-Item)": self.item_id}
        if q.answering_machine != "off":
            # For the [ivr-amd] context (screen()): where to hand the channel back.
            variables.update({
                "IVR_APP": ctx.cfg.ari.app, "IVR_ITEM": self.item_id,
                "IVR_AMD_OPTIONS": q.amd_options,
                "IVR_AMD_WAIT": AMD_SILENCE_WAIT if q.answering_machine == "message" else "",
            })
        try:
            await leg.ari.originate(
                dial_string,
                app_args=f"customer,{self.item_id}",
                caller_id=f'"{q.caller_id}" <{q.caller_id}>',
                timeout=ctx.cfg.outbound.dial_timeout,
                channel_id=customer_id,
                variables=variables,
            )
        except ari.AriError as exc:
            leg.log.error("callback originate failed: %s", exc)
            return Dial.TRUNK_FAILURE
        ctx.publish(events.CustomerDialled(q.name, self.item_id, agent=self.agent_id,
                                           latency=latency))
        deadline = ctx.now() + ctx.cfg.outbound.dial_timeout + GRACE
        dialstatus = ""
        rang = False
        refused: int | None = None  # cause of an immediate final response (no ringing)
        while True:
            ev = await leg.next(deadline)
            if ev is None:
                await self.hangup()
                return Dial.NO_ANSWER if rang else Dial.TRUNK_FAILURE
            if _is_cancel(ev):
                await self.hangup()
                return Dial.CANCELLED
            if isinstance(ev, ari.Dial) and ev.peer.id == customer_id and ev.dialstatus:
                dialstatus = ev.dialstatus
                rang = rang or dialstatus in ("RINGING", "PROGRESS")
            if isinstance(ev, ari.ChannelStateChange) and ev.channel_id == customer_id \
                    and ev.channel.state == "Ringing":
                rang = True
            if isinstance(ev, ari.ChannelHangupRequest) and ev.channel_id == customer_id:
                # Asterisk 22 sends one only for a final SIP response; the originate
                # timeout (a carrier that never answered the INVITE) sends none.
                refused = ev.cause
            if isinstance(ev, ari.ChannelDestroyed | ari.StasisEnd) and \
                    ev.channel_id == customer_id:
                cause = ev.cause if isinstance(ev, ari.ChannelDestroyed) else 0
                return _classify(dialstatus, rang, refused, cause)
            if isinstance(ev, ari.StasisStart) and ev.channel.id == customer_id:
                if q.answering_machine != "off":
                    screened = await self.screen()
                    if screened != Dial.ANSWERED:
                        return screened
                if q.verify_customer and not await self.verify():
                    await self.hangup()
                    return Dial.UNVERIFIED
                return Dial.ANSWERED

    async def screen(self) -> Dial:
        """Answering-machine detection (queues with ``answering_machine``): the answered
        customer leaves our app for the [ivr-amd] context, where ``AMD()`` listens to the
        greeting, and comes back with ``customer,<item>,<AMDSTATUS>,<AMDCAUSE>``.

        The customer is originated into our app as always (so the app is subscribed to
        the channel from its creation and every dial outcome is classified exactly as
        without AMD), and moved to the dialplan only once answered; an explicit
        subscription keeps its hang-up reaching us while it is out of the app.

        HUMAN and NOTSURE: ``ANSWERED`` (the agent gets the customer). MACHINE:
        ``MACHINE`` (``retry``), or, with ``message``, the message is played once the
        greeting has ended and the result is ``MACHINE_MESSAGE`` (``MACHINE`` when the
        machine hung up before the end of it). Gone meanwhile: ``FAILED``."""
        leg, q, customer = self.leg, self.q, self.channel_id
        try:
            await leg.ari.subscribe_channel(customer)
            await leg.ari.continue_in_dialplan(customer, AMD_CONTEXT)
        except ari.AriError as exc:
            leg.log.info("customer left before the answering-machine check: %s", exc)
            await self.hangup()
            return Dial.FAILED
        deadline = self.ctx.now() + amd_wait(q)
        left_app = False
        while True:
            ev = await leg.next(deadline)
            if ev is None:
                leg.log.warning("no answering-machine result in time; hanging up")
                await self.hangup()
                return Dial.FAILED
            if _is_cancel(ev):
                await self.hangup()
                return Dial.CANCELLED
            if ev.channel_id != customer:
                continue
            if isinstance(ev, ari.StasisEnd) and not left_app \
                    and not ev.raw.get("synthetic"):
                left_app = True  # our continue: the channel is in [ivr-amd] now
                continue
            if isinstance(ev, ari.StasisEnd | ari.ChannelDestroyed):
                leg.log.info("customer hung up during the answering-machine check")
                return Dial.FAILED
            if isinstance(ev, ari.StasisStart):
                back = ev
                break
        status, cause = [*back.args[2:4], "", ""][:2]
        leg.log.info("answering-machine check: %s (%s)", status or "?", cause or "-")
        if status.upper() != "MACHINE":
            return Dial.ANSWERED  # HUMAN, NOTSURE (and anything unexpected): a person
        self.ctx.publish(events.AnsweringMachine(q.name, self.item_id, agent=self.agent_id,
                                                 action=q.answering_machine, cause=cause))
        if q.answering_machine == "message":
            language = self.ctx.engine.get(self.item_id).language  # the customer's own
            message = [self.ctx.prompt(q, "callback_machine_message", language)]
            if await leg.play_until(message, channel_id=customer) == "":
                await self.hangup()
                return Dial.MACHINE_MESSAGE
        await self.hangup()
        return Dial.MACHINE

    async def verify(self) -> bool:
        """R8 option: the customer confirms with 1 (during the prompt or within
        ``preview_timeout``), so agents never talk to voicemail; then "connecting"."""
        leg, q, customer = self.leg, self.q, self.channel_id
        # The customer hears their own language (chosen when they called).
        language = self.ctx.engine.get(self.item_id).language
        deadline = self.ctx.now() + q.preview_timeout
        got = await leg.play_until([self.ctx.prompt(q, "verify_customer", language)], {"1"},
                                   channel_id=customer)
        if got == "":
            ev = await leg.wait_for(
                lambda e: e.channel_id == customer and (
                    (isinstance(e, ari.ChannelDtmfReceived) and e.digit == "1")
                    or isinstance(e, ari.StasisEnd | ari.ChannelDestroyed)),
                deadline,
            )
            got = "1" if isinstance(ev, ari.ChannelDtmfReceived) else (
                "" if ev is None else GONE)
        if got == "":
            # No answer in time: told, not just hung up on (retried later, R10).
            await leg.play_until([self.ctx.prompt(q, "verify_timeout", language)],
                                 channel_id=customer)
        if got != "1":
            return False
        connecting = [self.ctx.prompt(q, "connecting", language)]
        return await leg.play_until(connecting, channel_id=customer) != GONE

    async def hangup(self) -> None:
        with contextlib.suppress(ari.AriNotFound, ari.AriConflict):
            await self.leg.ari.hangup(self.channel_id)


class _Route(ChannelSession):
    """Routes a callback customer's channel events into its agent leg's inbox: the
    switchboard's table holds sessions, and this is the customer's entry in it."""

    def __init__(self, leg: ChannelSession, channel_id: str) -> None:
        super().__init__(leg.ari, channel_id, log, leg.clock, leg.node)
        self.leg = leg
        # Resync treats it like its leg: a running session whose channel may vanish.
        self.task = leg.task

    def deliver(self, item: ari.Event | Message) -> None:
        self.leg.deliver(item)
