"""The caller's half of direct callback (SPEC R1-R6, R12, R13), one session per channel.

Reads top to bottom like the source document: answer and queue with music on hold; at
``first_offer_after`` and then every ``repeat_offer_every``, while the queue is in
overflow, stop the music and play the offer; on 1 (barge-in or any time after the first
offer) commit the callback, play the confirmation and hang up. The work item keeps its
original arrival time, so its place in the queue does not move.
"""

from __future__ import annotations

import logging
import time

from ivr import ari
from ivr.config import QueueConfig
from ivr.domain import events
from ivr.domain.ewt import spoken_wait
from ivr.domain.items import State, WorkItem
from ivr.domain.numbers import PhoneNumber
from ivr.domain.queues import DuplicateCallback, InvalidTransition
from ivr.flows.context import FlowContext
from ivr.flows.session import (
    HANDBACK,
    ChannelSession,
    Handover,
    Hangup,
    Item,
    Message,
    say_digits,
    say_number,
)

log = logging.getLogger("ivr.flows.caller")

# Dialled into the alternate-number prompt: digits end with '#', or after this long.
ENTRY_TIMEOUT = 10.0
MAX_ENTRY_TRIES = 3

OPEN_LIVE = (State.WAITING, State.OFFERED)


class CallerSession(ChannelSession):
    """One inbound caller waiting in a queue."""

    def __init__(
        self,
        ctx: FlowContext,
        channel: ari.Channel,
        queue: QueueConfig,
        item: WorkItem | None = None,
        *,
        adopted: bool = False,
        node: str = "",
    ) -> None:
        node = ctx.node_name(node)
        super().__init__(ctx.client(node), channel.id, log, ctx.clock, node)
        self.adopted = adopted
        self.ctx = ctx
        self.channel = channel
        self.q = queue
        self.item = item
        self.moh_on = False
        self.offered = False
        #: R9: an agent leg may take this caller now (on hold or hearing the offer); a
        #: handover offered at any other moment is refused at once
        self.takes_handovers = False
        #: the accepted handover: the agent leg owns the channel from then on
        self.handover: Handover | None = None
        #: the caller id as parsed on arrival (R13), so that each offer and the press
        #: check the number without parsing it again
        self.parsed: PhoneNumber | None = None
        #: an agent took the call during the greeting (language menu, announcement)
        self.early: Handover | None = None

    @property
    def language(self) -> str:
        """The caller's language: chosen at entry, else the queue's."""
        return (self.item.language if self.item is not None else "") or self.q.language

    def prompt(self, prompt_id: str) -> str:
        return self.ctx.prompt(self.q, prompt_id, self.language)

    # ------------------------------------------------------------------ top level

    async def run(self) -> None:
        try:
            await self.join_queue()
            await self.wait_in_queue()
        except Hangup:
            await self.left()
        finally:
            self.ended.set()

    async def join_queue(self) -> None:
        """R1: answer, music on hold, a work item at the back of the queue."""
        arriving = self.item is None  # not re-adopted: greet (menu, announcement)
        if self.item is None:
            await self.quietly(self.ari.answer(self.channel_id))
            # R13: the caller id is parsed once, in the queue's region, and stored in
            # E.164; everything later (offer, press 1, dial) reads the stored form.
            parsed = self.ctx.guards[self.q.name].parse(self.channel.caller_number)
            self.parsed = parsed
            self.item = self.ctx.engine.arrive(
                self.q.name, channel_id=self.channel_id,
                number=parsed.e164 if parsed is not None else None,
                # Adopted after a restart before its arrival was committed: the channel's
                # creation time (Asterisk's clock) is the best arrival we have. Otherwise
                # our own clock, which also drives the offer timers.
                arrived_at=(self.channel.created_at or None) if self.adopted else None,
                node=self.node,
            )
            await self.ctx.commit()
            self.ctx.publish(events.CallerArrived(self.q.name, self.item.id))
        self.extra["item"] = self.item.id[:12]
        self.ctx.publish(events.WorkChanged(self.q.name, self.item.id))
        if arriving:
            # A free agent need not wait for the greeting: it can take the call now.
            self.takes_handovers = True
            if self.q.languages:
                await self.choose_language()
            if self.q.announce_on_arrival and self.early is None:
                got = await self.play_until(self.position_and_wait(),
                                            on_message=lambda m: isinstance(m, Handover))
                if isinstance(got, Handover):
                    self.early = got
        self.log.info("caller waiting in %s at position %d", self.q.name,
                      self.ctx.engine.position(self.item.id))

    async def choose_language(self) -> None:
        """Queues with several languages: key 1, 2, ... picks one (the menu names
        them); no key within ``language_timeout``: the first. It is stored on the item
        so everything this customer hears later, the callback included, speaks it."""
        assert self.item is not None
        keys = {str(n): lang for n, lang in enumerate(self.q.languages, start=1)}
        got = await self.play_until([self.ctx.prompt(self.q, "language_menu",
                                                     self.q.languages[0])], set(keys),
                                    on_message=lambda m: isinstance(m, Handover))
        if isinstance(got, Handover):
            self.early = got  # an agent takes the call: the first language it is
            got = ""
        elif got == "":
            ev = await self.wait_for(
                lambda e: (isinstance(e, ari.ChannelDtmfReceived) and e.digit in keys)
                or isinstance(e, Handover),
                deadline=self.ctx.now() + self.q.language_timeout)
            if isinstance(ev, Handover):
                self.early = ev
            got = ev.digit if isinstance(ev, ari.ChannelDtmfReceived) else ""
        language = keys.get(got if isinstance(got, str) else "", self.q.languages[0])
        self.ctx.engine.set_language(self.item.id, language)
        await self.ctx.commit()
        self.log.info("language %s%s", language, "" if got else " (no key: the first)")

    def position_and_wait(self) -> list[str]:
        """"You are number 3 in line. The expected wait is about 4 minutes." The
        position counts callbacks ahead that keep their place; the wait is the queue's
        EWT at that position, said the way people speak, or that it cannot be
        estimated (nobody serving) instead of a number."""
        assert self.item is not None
        position = self.ctx.engine.position(self.item.id)
        media = [self.prompt("position_intro"), *say_number(position),
                 self.prompt("position_in_line")]
        how, minutes = spoken_wait(self.ctx.engine.ewt(self.q.name, position))
        if how == "unknown":
            return [*media, self.prompt("wait_unknown")]
        media.append(self.prompt("wait_intro"))
        if how == "under_minute":
            return [*media, self.prompt("wait_under_minute")]
        media.append(self.prompt("wait_about" if how == "about" else "wait_more_than"))
        unit = "minute" if minutes == 1 else "minutes"
        return [*media, *say_number(minutes), self.prompt(unit)]

    async def on_crash(self) -> None:
        await self.left()

    async def left(self) -> None:
        """The caller hung up. A live item leaves the queue (abandoned); a callback that
        was committed before stays exactly where it is."""
        item = self.item
        if self.handover is not None:
            self.handover.caller_gone()
        if item is None:
            return
        current = self.ctx.engine.get(item.id)
        if current.state in OPEN_LIVE:
            self.ctx.engine.abandon(item.id, self.gone_reason)
            # Not awaited: nothing was promised, and a crash before the next commit is
            # repaired at the next start (its channel is gone: abandoned at resync).
            self.ctx.commit_soon()
            self.ctx.publish(events.CallerAbandoned(item.queue, item.id))
            self.ctx.publish(events.ItemClosed(item.queue, item.id))
            self.log.info("caller hung up while waiting: abandoned")

    # ------------------------------------------------------------------ waiting

    def deliver(self, item: Item) -> None:
        """A handover that arrives where the flow cannot take it (entering another
        number, hearing the confirmation) is refused at once, so the agent leg returns
        the offer instead of waiting for nothing."""
        if isinstance(item, Handover) and not self.takes_handovers:
            item.refuse()
            return
        super().deliver(item)

    async def wait_in_queue(self) -> None:
        """R3/R5: offers at first_offer_after, then every repeat_offer_every, until the
        caller takes a callback, hangs up (``Hangup``) or an agent takes the call."""
        assert self.item is not None
        next_offer = self.item.arrived_at + self.q.first_offer_after
        if self.early is not None:
            early, self.early = self.early, None
            await self.hand_over(early)  # returns only if handed back
        while True:
            # Waiting is on hold: whatever was played last (an offer, an apology, a
            # failed entry), the music comes back here, once (R3).
            await self.music(on=True)
            self.takes_handovers = True
            ev = await self.next(deadline=next_offer)
            choice: str | Handover | None = None
            if ev is None:
                now = self.ctx.now()
                while next_offer <= now:
                    next_offer += self.q.repeat_offer_every
                if not self.may_offer():
                    continue
                played = await self.offer()
                choice = played if isinstance(played, str | Handover) else None
            elif isinstance(ev, Handover):
                choice = ev
            elif (
                isinstance(ev, ari.ChannelDtmfReceived)
                and self.offered
                and (ev.digit == "1" or (ev.digit == "2" and self.q.alternate_number))
            ):
                # R5: after the first offer, a 1 at any time counts; other keys are ignored.
                choice = ev.digit
            if isinstance(choice, Handover):
                await self.hand_over(choice)
                continue  # handed back: the agent could not be connected
            self.takes_handovers = False
            if choice in ("1", "2"):
                self.ctx.held.add(self.item.id)
                try:
                    if await self.choose_callback(choice):
                        return
                finally:
                    self.ctx.held.discard(self.item.id)
                    self.ctx.publish(events.WorkChanged(self.q.name, self.item.id))

    async def choose_callback(self, key: str) -> bool:
        """The caller pressed 1 (own number) or 2 (another number). True when the call
        is over (callback committed, or already scheduled); False to keep waiting."""
        assert self.item is not None
        number = self.item.number if key == "1" else await self.enter_alternate()
        if key == "2" and number is None:
            return False
        return await self.take_callback(number)

    def may_offer(self) -> bool:
        """R2 overflow, R13 number guard, R14 hours: checked at each offer time. No new
        offers once a graceful stop began."""
        assert self.item is not None
        if self.ctx.stopping:
            return False
        item = self.ctx.engine.get(self.item.id)
        if item.state != State.WAITING:
            return False  # being offered to an agent right now: about to be connected
        if not self.ctx.engine.in_overflow(self.q.name):
            return False
        if self.ctx.engine.position(self.item.id) < self.q.min_position_for_offer:
            return False  # near the head: a callback would not help this caller
        if self.q.hours is not None and self.q.stop_offers_before_close > 0:
            now = self.ctx.now()
            closing = self.q.hours.seconds_to_close(now) < self.q.stop_offers_before_close
            if self.q.hours.is_open(now) and closing:
                return False
        if self.q.alternate_number:
            return True  # a caller without a usable number may still give another one
        reason = self.refusal(item.number)
        if reason is not None:
            self.log.info("no callback offer: number refused (%s)", reason)
            return False
        return True

    def refusal(self, number: str | None) -> str | None:
        """The number guard's verdict (R13) on a stored E.164 number. The caller id
        parsed on arrival is reused rather than parsed again at every offer and at the
        press (libphonenumber's parse was ~3 % of the service's CPU at 750 callers)."""
        guard = self.ctx.guards[self.q.name]
        if number is not None and self.parsed is not None and self.parsed.e164 == number:
            return guard.check(self.parsed)
        return guard.check(number)

    async def offer(self) -> str | Message:
        """Stop the music, play the offer; a 1 (or 2) barges in. An agent taking the
        caller (a ``Handover``) stops the offer at once."""
        assert self.item is not None
        self.offered = True
        self.ctx.engine.note_offer_played(self.item.id)  # the day's funnel (saved later)
        self.ctx.publish(events.OfferPlayed(self.q.name, self.item.id))
        await self.music(on=False)
        media = [*(self.position_and_wait() if self.q.announce_with_offer else []),
                 self.prompt("offer")]
        digits = {"1"}
        if self.q.alternate_number:
            media.append(self.prompt("offer_alternate"))
            digits.add("2")
        self.log.info("callback offer played")
        # A 1 stops the offer without waiting for Asterisk's answer: the stop travels
        # while the callback is committed to disk (R20), so it is not in series with it.
        return await self.play_until(media, digits, defer_stop=True,
                                     on_message=lambda m: isinstance(m, Handover))

    async def announce(self, prompt_id: str) -> None:
        """R3: the music stops for a prompt; it comes back when the caller is waiting
        again (the top of ``wait_in_queue``)."""
        await self.music(on=False)
        await self.play_until([self.prompt(prompt_id)])

    async def music(self, *, on: bool) -> None:
        # A playback stops MOH and Asterisk 22 does not resume it: we track it ourselves.
        await self.settle()  # a deferred stop of the offer goes first
        if on and not self.moh_on:
            await self.quietly(self.ari.start_moh(self.channel_id, self.q.moh_class))
        elif not on and self.moh_on:
            await self.quietly(self.ari.stop_moh(self.channel_id))
        self.moh_on = on

    # ------------------------------------------------------------------ press 1

    async def take_callback(self, number: str | None) -> bool:
        """R6: commit the callback at the same place, then confirm and hang up.
        Returns False when the caller has to keep waiting instead."""
        assert self.item is not None
        pressed = time.monotonic()
        self.ctx.publish(events.CallbackRequested(self.q.name, self.item.id))
        if self.ctx.engine.get(self.item.id).state == State.OFFERED:
            # An agent is being rung for this caller, not yet connected (a connected
            # caller's keys never get here): the caller's choice wins. The ring stops
            # and the callback is taken at the same place.
            self.ctx.engine.revoke_offer(self.item.id)
            self.ctx.publish(events.OfferRevoked(self.q.name, self.item.id))
            self.log.info("key pressed while an agent was being rung: the ring stops")
        if self.ctx.engine.get(self.item.id).state != State.WAITING:
            self.log.info("callback not taken: the call is no longer waiting")
            return False
        if number is None or self.refusal(number) is not None:
            # Pressed 1 without a number we may call (withheld): nothing to convert.
            self.log.info("callback refused: no callable number")
            await self.announce("invalid_number")
            return False
        before_number = self.item.number
        try:
            item = self.ctx.engine.convert_to_callback(self.item.id, number)
        except DuplicateCallback:
            self.log.info("callback already scheduled for this number; caller told")
            self.ctx.publish(events.DuplicateRequest(self.q.name, self.item.id))
            self.ctx.engine.cancel(self.item.id, "duplicate")
            await self.ctx.commit()
            self.ctx.publish(events.ItemClosed(self.q.name, self.item.id))
            await self.final_words("already_scheduled")
            return True
        except InvalidTransition as exc:
            self.log.warning("callback not taken: %s", exc)
            return False
        # R20: durable before the caller hears the confirmation. A store that refuses
        # (disk full) means no callback at all: the item is the waiting caller again,
        # told so, never dialled later on a promise nobody kept.
        if not await self.ctx.commit():
            self.item = self.ctx.engine.undo_convert(item.id, self.channel_id, before_number)
            await self.ctx.commit()
            self.ctx.publish(events.CallbackNotStored(self.q.name, item.id))
            self.log.error("callback request not stored; the caller keeps waiting in place")
            await self.announce("request_failed")
            return False
        self.item = item
        self.ctx.publish(events.CallbackCommitted(self.q.name, item.id,
                                                  latency=time.monotonic() - pressed))
        self.log.info("callback committed at position %d", self.ctx.engine.position(item.id))
        self.ctx.publish(events.WorkChanged(self.q.name, item.id))
        await self.final_words("confirmation")
        return True

    async def final_words(self, prompt_id: str) -> None:
        """Play a last prompt to its end, then hang up. A hang-up meanwhile changes
        nothing: what was committed stands."""
        try:
            await self.music(on=False)
            await self.play_until([self.prompt(prompt_id)])
        except Hangup:
            return
        await self.hangup()

    # ------------------------------------------------------------------ press 2

    async def enter_alternate(self) -> str | None:
        """R13: "press 2 to enter a different number", read back, same validation.
        Three bad tries send the caller back to waiting."""
        await self.music(on=False)
        guard = self.ctx.guards[self.q.name]
        for _ in range(MAX_ENTRY_TRIES):
            # Parsed once, in the queue's region, like a caller id (R13).
            number = guard.parse(await self.collect_digits())
            if number is not None and guard.check(number) is None:
                readback = [self.prompt("number_readback"),
                            *say_digits(number.national),
                            self.prompt("confirm_number")]
                answer = await self.play_until(readback, {"1", "2"})
                if answer == "":
                    ev = await self.wait_for(
                        lambda e: isinstance(e, ari.ChannelDtmfReceived) and e.digit in "12",
                        deadline=self.ctx.now() + ENTRY_TIMEOUT,
                    )
                    answer = ev.digit if isinstance(ev, ari.ChannelDtmfReceived) else ""
                if answer == "1":
                    return number.e164
                continue
            await self.play_until([self.prompt("invalid_number")])
        await self.play_until([self.prompt("back_to_queue")])
        return None

    async def collect_digits(self) -> str:
        digits: list[str] = []
        first = await self.play_until(
            [self.prompt("enter_number")], set("0123456789#")
        )
        if isinstance(first, str) and first:
            if first == "#":
                return ""
            digits.append(first)
        deadline = self.ctx.now() + ENTRY_TIMEOUT
        while len(digits) < 20:
            ev = await self.next(deadline)
            if ev is None:
                break
            if isinstance(ev, ari.ChannelDtmfReceived):
                if ev.digit == "#":
                    break
                if ev.digit.isdigit():
                    digits.append(ev.digit)
                    deadline = self.ctx.now() + ENTRY_TIMEOUT
        return "".join(digits)

    # ------------------------------------------------------------------ agent takes over

    async def hand_over(self, handover: Handover) -> None:
        """R3/R9: an agent takes the call. Stop the music (a prompt was stopped by
        ``play_until``), accept, and from here the agent leg owns this channel's fate,
        until the call ends (``Hangup``) or the leg hands it back (the agent vanished
        before the connection): then the caller hears why and waits on in place."""
        self.handover = handover
        self.takes_handovers = False  # one agent at a time
        await self.music(on=False)
        handover.accept()
        # Stay alive to notice the hang-up (``left`` tells the agent leg), or to take the
        # call back when the agent leg could not connect it (HANDBACK).
        while True:
            ev = await self.next()
            if isinstance(ev, Message) and ev.kind == HANDBACK:
                break
        self.handover = None
        self.log.warning("the agent could not be connected; the caller keeps waiting")
        await self.play_until([self.prompt("connect_failed")])
