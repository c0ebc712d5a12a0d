"""What every per-channel flow shares: an ordered event inbox, deadlines, hang-up handling.

A session owns one Asterisk channel. The switchboard routes that channel's ARI events
(and our own internal messages) into ``inbox``; the session's task reads them in order
with ``next()``. A channel leaving Stasis raises ``Hangup`` out of ``next()`` wherever
the flow is, so every state handles it at the place it can happen ("every path out
of a state is handled where the state is").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ivr import ari
from ivr.ari import AriClient, AriConflict, AriNotFound
from ivr.domain.items import Clock, SystemClock

T = TypeVar("T")


class Hangup(Exception):
    """The channel left Stasis (hung up, or gone while the app was away)."""


@dataclass
class Message:
    """An internal message to a session (not from Asterisk)."""

    kind: str

    @property
    def channel_id(self) -> str:
        return ""


#: what ``play_until`` returns when the other channel it played to has left
GONE = "gone"
#: to an agent leg: its work item was closed or withdrawn (stop, dial nobody)
CANCEL = "cancel"
#: to an agent leg: the caller it was bridged with hung up
PEER_GONE = "peer_gone"
#: to an agent leg: the agent accepted or declined on the console (see ``decision``)
DECIDED = "decided"
#: to a caller session that handed its channel over: the agent leg could not connect
#: it (the agent vanished); the caller takes the call back and keeps waiting
HANDBACK = "handback"


class Handover(Message):
    """R9: an agent leg taking over a waiting caller's channel. The only way the two
    sessions meet:

    1. the leg ``offer``s it to the caller session (delivered into its inbox);
    2. the caller session ``accept``s when it can hand its channel over right now (on
       hold or hearing the offer: it stops the music or the prompt first), else it
       ``refuse``s at once (busy entering another number, hearing its confirmation);
    3. once accepted, the agent leg owns the channel; when the caller hangs up, the
       caller session tells the leg (``caller_gone``);
    4. when the leg cannot connect the call after all (the agent's phone vanished), it
       ``hand_back``s the channel: the caller hears why and keeps waiting in place.
    """

    def __init__(self, leg: ChannelSession) -> None:
        super().__init__("handover")
        self.leg = leg
        self.caller: ChannelSession | None = None
        self._answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def accept(self) -> None:
        if not self._answer.done():
            self._answer.set_result(True)

    def refuse(self) -> None:
        if not self._answer.done():
            self._answer.set_result(False)

    def caller_gone(self) -> None:
        self.leg.deliver(Message(PEER_GONE))

    def hand_back(self) -> None:
        if self.caller is not None:
            self.caller.deliver(Message(HANDBACK))

    async def offer(self, caller: ChannelSession, timeout: float) -> bool:
        """Deliver to ``caller`` and wait for its answer (False on timeout or when the
        caller's session has already ended)."""
        if caller.gone or caller.ended.is_set():
            return False
        self.caller = caller
        caller.deliver(self)
        try:
            return await asyncio.wait_for(asyncio.shield(self._answer), timeout)
        except TimeoutError:
            self.refuse()  # too late now, even if the caller gets to it
            return False


Item = ari.Event | Message


class ItemLogger(logging.LoggerAdapter[logging.Logger]):
    """Every log line carries the work item id (R19)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        item, chan = extra.get("item", "-"), extra.get("chan", "-")
        kwargs.setdefault("extra", {}).update(item=item, chan=chan)  # fields in JSON logs
        return f"[item={item} chan={chan}] {msg}", kwargs


def say_digits(number: str) -> list[str]:
    """A number read digit by digit, one stoppable playback each (``digits:`` is not
    stoppable on Asterisk 22)."""
    return [f"sound:digits/{d}" for d in number if d.isdigit()]


def say_number(n: int) -> list[str]:
    """A whole number as Asterisk's English digit files (0-99); ``number:`` beyond."""
    if n < 0 or n >= 100:
        return [f"number:{n}"]
    if n <= 20 or n % 10 == 0:
        return [f"sound:digits/{n}"]
    return [f"sound:digits/{n - n % 10}", f"sound:digits/{n % 10}"]


class ChannelSession:
    """Base for caller, agent and customer legs."""

    def __init__(self, client: AriClient, channel_id: str, log: logging.Logger,
                 clock: Clock | None = None, node: str = "") -> None:
        self.ari = client
        self.channel_id = channel_id
        #: the Asterisk node the channel is on (``client`` is that node's)
        self.node = node
        #: why the channel is gone when that is not a hang-up we saw ("node_down")
        self.gone_reason = ""
        #: deadlines are read on this clock (a seam for tests)
        self.clock: Clock = clock or SystemClock()
        self.inbox: asyncio.Queue[Item] = asyncio.Queue()
        self.gone = False
        #: Q.850 cause when the channel was destroyed (e.g. 17 busy, 19 no answer)
        self.end_cause = 0
        self.ended = asyncio.Event()
        self.extra: dict[str, str] = {"item": "-", "chan": channel_id[-12:]}
        self.log = ItemLogger(log, self.extra)
        self.task: asyncio.Task[None] | None = None
        #: a barge-in's playback stop still in flight (``play_until(defer_stop=True)``)
        self._stopping: asyncio.Task[None] | None = None

    async def run(self) -> None:
        raise NotImplementedError

    async def on_crash(self) -> None:
        """``run`` raised: undo what the flow holds in the queue (the switchboard then
        hangs the channel up)."""

    # ---- inbox

    def deliver(self, item: Item) -> None:
        self.inbox.put_nowait(item)

    async def next(self, deadline: float | None = None) -> Item | None:
        """The next event or message; ``None`` once ``deadline`` (wall time) passes.
        Raises ``Hangup`` when the channel has left Stasis."""
        if self.gone:
            raise Hangup()
        timeout = None if deadline is None else max(0.0, deadline - self.clock.now())
        # asyncio.timeout, not wait_for: Python 3.11's wait_for may swallow a cancel
        # arriving as the timeout fires (the session would then outlive its close).
        try:
            async with asyncio.timeout(timeout):
                ev = await self.inbox.get()
        except TimeoutError:
            return None
        if isinstance(ev, ari.StasisEnd | ari.ChannelDestroyed) \
                and ev.channel_id == self.channel_id:
            if isinstance(ev, ari.ChannelDestroyed):
                self.end_cause = ev.cause
            self.gone = True
            raise Hangup()
        return ev

    async def wait_for(
        self, match: Callable[[Item], bool], deadline: float | None = None
    ) -> Item | None:
        """Skip events until one matches; ``None`` on deadline. Others are dropped: use
        only where nothing else matters (e.g. waiting for the end of a final prompt)."""
        while True:
            ev = await self.next(deadline)
            if ev is None or match(ev):
                return ev

    # ---- ARI calls that tolerate a vanished channel

    async def quietly(self, call: Awaitable[T]) -> T | None:
        """Run an ARI call on our channel; a 404/409 means it is gone or leaving Stasis,
        which the StasisEnd in the inbox will tell the flow in order."""
        try:
            return await call
        except (AriNotFound, AriConflict) as exc:
            self.log.debug("channel call ignored: %s", exc)
            return None

    async def play(self, media: Sequence[str], channel_id: str | None = None) -> str | None:
        """Start a playback with an id we choose, so its events can be matched at once.
        None when the channel is gone (404/409)."""
        playback_id = uuid.uuid4().hex
        target = channel_id or self.channel_id
        await self.settle()
        try:
            await self.ari.play(target, media, playback_id=playback_id)
        except (AriNotFound, AriConflict) as exc:
            self.log.debug("playback on a gone channel: %s", exc)
            return None
        return playback_id

    async def settle(self) -> None:
        """Wait for a deferred playback stop: the channel's next media command (a
        playback, music on hold, a hang-up) must not overtake it."""
        stopping, self._stopping = self._stopping, None
        if stopping is not None:
            await stopping

    async def stop_playback(self, playback_id: str) -> None:
        try:
            await self.ari.stop_playback(playback_id)
        except (AriNotFound, AriConflict):
            pass  # finished or the channel is gone
        except ari.AriUnavailable as exc:
            # 500 "Could not stop playback": a say-type media (digits:, number:) has no
            # stop control. It ends by itself; its PlaybackFinished comes in order.
            self.log.debug("playback %s not stoppable: %s", playback_id, exc)

    async def play_until(
        self,
        media: Sequence[str],
        digits: Collection[str] = (),
        on_message: Callable[[Message], bool] | None = None,
        *,
        channel_id: str | None = None,
        defer_stop: bool = False,
    ) -> str | Message:
        """Play each media in turn, to the end or until one of ``digits`` (barge-in; the
        playback is stopped). Returns the digit, ``""`` when all finished (or failed), a
        message for which ``on_message`` returned True (the playback is stopped too), or
        ``GONE`` when ``channel_id`` (another channel routed to this session, e.g. a
        callback's customer) left.

        One playback per media, not one ARI playlist: on Asterisk 22 stopping a playlist
        playback ends only its current item, and the channel stays busy with the rest
        (a bridge addChannel then waits behind it).

        ``defer_stop``: on a barge-in digit, return at once and let the stop's round trip
        run alongside what the flow does next (a caller's press 1: the disk commit);
        ``settle()``, called by ``play`` and ``hangup``, waits for it."""
        for uri in media:
            got = await self._play_one(uri, digits, on_message, channel_id or self.channel_id,
                                       defer_stop)
            if got != "":
                return got
        return ""

    async def _play_one(
        self,
        uri: str,
        digits: Collection[str],
        on_message: Callable[[Message], bool] | None,
        target: str,
        defer_stop: bool = False,
    ) -> str | Message:
        playback_id = await self.play([uri], target)
        if playback_id is None:
            # Gone: on our own channel its StasisEnd is in the inbox and ``next`` raises.
            return GONE if target != self.channel_id else ""
        while True:
            ev = await self.next()
            if isinstance(ev, ari.PlaybackFinished) and ev.playback.id == playback_id:
                if ev.playback.state == "failed":
                    # Prompt files are checked at start, so this is nearly always a
                    # channel hanging up mid-prompt; its StasisEnd follows.
                    self.log.warning("playback failed: %s", uri)
                return ""
            if isinstance(ev, ari.ChannelDtmfReceived) and ev.digit in digits \
                    and ev.channel_id == target:
                if defer_stop and target == self.channel_id:
                    self._stopping = asyncio.create_task(self.stop_playback(playback_id))
                else:
                    await self.stop_playback(playback_id)
                return ev.digit
            if isinstance(ev, Message) and on_message is not None and on_message(ev):
                await self.stop_playback(playback_id)
                return ev
            if isinstance(ev, ari.StasisEnd | ari.ChannelDestroyed) \
                    and target != self.channel_id and ev.channel_id == target:
                return GONE

    async def hangup(self) -> None:
        await self.settle()
        with contextlib.suppress(AriNotFound, AriConflict):
            await self.ari.hangup(self.channel_id)
