"""Routes ARI events to per-channel sessions and resyncs after a (re)connect.

Asterisk 22 keeps our channels in Stasis while the websocket is down but does not replay
the events missed meanwhile, so after every connect we compare ``GET /channels`` with
our sessions: a session whose channel is gone gets a synthetic ``StasisEnd`` (its flow
cleans up as on any hang-up), and a caller channel in our Stasis app that no session owns
(the app restarted) is adopted again with its stored work item, so it keeps its original
place (R21).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

from ivr import ari
from ivr.domain.events import WorkChanged
from ivr.domain.items import OPEN_STATES, Kind, WorkItem
from ivr.flows.caller import CallerSession
from ivr.flows.context import FlowContext
from ivr.flows.courtesy import AlreadyConfirmed, UnknownQueueCall
from ivr.flows.session import ChannelSession, Hangup

log = logging.getLogger("ivr.flows.switchboard")

# Stasis arguments of the legs we originate ourselves: "<role>,<work item id>".
LEG_ROLES = ("agent", "customer")


def leg_channel_id(app: str, role: str) -> str:
    """The id we give a channel we originate: recognisable after a restart even before
    it enters Stasis (a customer's phone still ringing is in Dial, not in our app)."""
    return f"{app}-{role}-{uuid.uuid4().hex}"


class Switchboard:
    def __init__(self, ctx: FlowContext) -> None:
        self.ctx = ctx
        self.sessions: dict[str, ChannelSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: events about no channel (endpoint state): the dispatcher listens
        self.on_other_event: Callable[[ari.Event], None] = lambda ev: None

    # ------------------------------------------------------------------ sessions

    def start(self, session: ChannelSession) -> None:
        self.sessions[session.channel_id] = session
        task = asyncio.create_task(self._run(session), name=f"session-{session.channel_id}")
        session.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def register(self, session: ChannelSession) -> None:
        """Route a channel's events to a session before the channel exists (originate)."""
        self.sessions[session.channel_id] = session

    def session_for(self, channel_id: str) -> ChannelSession | None:
        return self.sessions.get(channel_id)

    def unregister(self, session: ChannelSession) -> None:
        if self.sessions.get(session.channel_id) is session:
            del self.sessions[session.channel_id]

    async def _run(self, session: ChannelSession) -> None:
        try:
            await session.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            # One broken flow must never take the service down (R22); its channel is
            # hung up so the caller is not left in silence.
            session.log.exception("flow crashed; hanging up its channel")
            try:
                # Leave nothing half-done in the queue: a live caller's item is
                # abandoned, not left waiting for a channel nobody drives.
                await session.on_crash()
            except Exception:
                session.log.exception("clean-up after the crash failed too")
            await session.hangup()
        finally:
            session.ended.set()
            self.unregister(session)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ events

    def on_event(self, ev: ari.Event) -> None:
        if isinstance(ev, ari.StasisStart):
            self.on_stasis_start(ev)
            return
        if not ev.channel_id:
            self.on_other_event(ev)
            return
        session = self.sessions.get(ev.channel_id)
        if session is not None:
            session.deliver(ev)

    def on_stasis_start(self, ev: ari.StasisStart) -> None:
        existing = self.sessions.get(ev.channel.id)
        if existing is not None:
            existing.deliver(ev)  # a leg we originated has answered
            return
        if self.ctx.stopping:
            # A graceful stop takes no new callers: the channel waits in Stasis (ringing)
            # for the next instance, which adopts it.
            log.info("stopping: caller channel %s left for the next start", ev.channel.id)
            return
        role = ev.args[0] if ev.args else ""
        if role in LEG_ROLES:
            # A leg originated by an earlier run of the app: nobody waits for it now.
            log.warning("stray %s leg %s from an earlier run; hanging up", role, ev.channel.id)
            task = asyncio.create_task(self._hangup(ev.channel.id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self.start(self._caller(ev.channel, role))

    def _caller(self, channel: ari.Channel, queue_name: str, item: WorkItem | None = None,
                *, adopted: bool = False) -> ChannelSession:
        queue = self.ctx.queue(queue_name)
        if queue is None:
            return UnknownQueueCall(self.ctx, channel, queue_name)
        return CallerSession(self.ctx, channel, queue, item, adopted=adopted)

    async def _hangup(self, channel_id: str) -> None:
        try:
            await self.ctx.ari.hangup(channel_id)
        except ari.AriError as exc:
            log.debug("hangup of %s: %s", channel_id, exc)

    # ------------------------------------------------------------------ resync

    async def on_connect(self, reconnected: bool) -> None:
        try:
            channels = await self.ctx.ari.list_channels()
        except ari.AriError as exc:
            log.error("resync failed, GET /channels: %s", exc)
            return
        present = {c.id: c for c in channels}
        for channel_id, session in list(self.sessions.items()):
            if channel_id not in present and session.task is not None:
                session.deliver(_gone(channel_id, self.ctx.cfg.ari.app))
        by_channel = self._open_items_by_channel()
        confirmed = self._callbacks_by_origin()
        prefix = self.ctx.cfg.ari.app + ","
        watched = await self._adopt_conversations(present)
        leg_prefixes = tuple(f"{self.ctx.cfg.ari.app}-{role}-" for role in LEG_ROLES)
        for c in channels:
            if c.id.startswith(leg_prefixes) and c.id not in self.sessions \
                    and c.id not in watched and c.app_name != "Stasis":
                # Originated by an earlier run and not answered yet (a customer's phone
                # still ringing): nobody waits for it now, and the item will be dialled
                # again; without this the customer's phone would ring twice at once.
                log.warning("stray leg %s (%s) after resync; hanging up", c.id, c.state)
                await self._hangup(c.id)
        for c in channels:
            if c.id in self.sessions or c.app_name != "Stasis":
                continue
            if not (c.app_data == self.ctx.cfg.ari.app or c.app_data.startswith(prefix)):
                continue
            args = c.app_data.split(",")[1:]
            role = args[0] if args else ""
            if role in LEG_ROLES:
                if c.id in watched:
                    continue
                log.warning("stray %s leg %s after resync; hanging up", role, c.id)
                await self._hangup(c.id)
                continue
            if c.id in confirmed:
                # Its callback was committed before we went away (the caller was hearing
                # the confirmation): confirm again and say goodbye, never queue it anew.
                log.info("[item=%s] caller with a committed callback still on the line",
                         confirmed[c.id].id[:12])
                queue = self.ctx.queue(confirmed[c.id].queue)
                if queue is not None:
                    self.start(AlreadyConfirmed(self.ctx, c, queue))
                else:
                    await self._hangup(c.id)
                continue
            item = by_channel.get(c.id)
            log.info("adopting caller channel %s (stored item: %s)", c.id, bool(item))
            self.start(self._caller(c, role, item, adopted=True))
        # Live items whose channel vanished while we were away (Asterisk restarted).
        for channel_id, item in by_channel.items():
            if channel_id not in present and item.channel_id not in self.sessions:
                self.ctx.engine.abandon(item.id)
                await self.ctx.commit()
                log.info("[item=%s] caller channel gone while away: abandoned", item.id[:12])
        self.ctx.publish(WorkChanged())

    async def _adopt_conversations(self, present: dict[str, ari.Channel]) -> set[str]:
        """Bridges an earlier run left behind (it stopped or died mid-conversation): a
        conversation between two of our channels goes on, watched until one side hangs
        up; anything else in a bridge of ours (one leg left, or none) is cleaned up, so
        no orphan bridge or half-call outlives a restart. Returns the watched channels."""
        try:
            bridges = await self.ctx.ari.list_bridges()
        except ari.AriError as exc:
            log.error("resync failed, GET /bridges: %s", exc)
            return set()
        watched: set[str] = set()
        for b in bridges:
            bridge_id = b.get("id")
            members = b.get("channels")
            if not isinstance(bridge_id, str) or not isinstance(members, list):
                continue
            ours = [m for m in members if isinstance(m, str) and m in present]
            if any(m in self.sessions for m in ours):
                continue  # a live session of ours owns it
            if len(ours) == 2:
                watch = ConversationWatch(self.ctx, bridge_id, ours[0], ours[1])
                self.sessions[ours[1]] = watch
                self.start(watch)
                watched.update(ours)
                log.info("adopted a conversation left up by an earlier run (bridge %s)",
                         bridge_id)
                continue
            for m in ours:
                await self._hangup(m)
            try:
                await self.ctx.ari.destroy_bridge(bridge_id)
            except ari.AriError as exc:
                log.debug("destroy of orphan bridge %s: %s", bridge_id, exc)
            log.info("cleaned up orphan bridge %s (%d channel(s))", bridge_id, len(ours))
        return watched

    def _callbacks_by_origin(self) -> dict[str, WorkItem]:
        """Open callbacks by the channel the caller pressed 1 on (their ``arrived``
        history entry): that channel may still be up after a restart."""
        out: dict[str, WorkItem] = {}
        for item in self.ctx.engine.open_items():
            if item.kind == Kind.CALLBACK and item.history:
                origin = item.history[0].detail.get("channel")
                if origin:
                    out[origin] = item
        return out

    def _open_items_by_channel(self) -> dict[str, WorkItem]:
        out: dict[str, WorkItem] = {}
        for name in self.ctx.cfg.queues:
            for item in self.ctx.engine.items(name):
                if item.kind == Kind.INBOUND and item.channel_id and item.state in OPEN_STATES:
                    out[item.channel_id] = item
        return out


class ConversationWatch(ChannelSession):
    """A conversation (agent + caller or customer) bridged by an earlier run of the app:
    its work item is already closed in the store; all that is left is to end the call
    cleanly when either side hangs up."""

    def __init__(self, ctx: FlowContext, bridge_id: str, first: str, second: str) -> None:
        super().__init__(ctx.ari, first, log)
        self.bridge_id = bridge_id
        self.other = second

    async def run(self) -> None:
        try:
            while True:
                ev = await self.next()
                if isinstance(ev, ari.StasisEnd | ari.ChannelDestroyed) \
                        and ev.channel_id == self.other:
                    break
        except Hangup:
            pass
        for channel_id in (self.channel_id, self.other):
            with contextlib.suppress(ari.AriError):
                await self.ari.hangup(channel_id)
        with contextlib.suppress(ari.AriError):
            await self.ari.destroy_bridge(self.bridge_id)


def _gone(channel_id: str, app: str) -> ari.StasisEnd:
    channel = ari.Channel(id=channel_id, name="", state="Down", caller_number="",
                          caller_name="", exten="", created_at=0.0)
    return ari.StasisEnd(type="StasisEnd", timestamp=time.time(), application=app,
                         raw={"synthetic": True}, channel=channel)
