"""Routes ARI events to per-channel sessions and resyncs after a (re)connect.

Asterisk does not replay events missed while the websocket was down (FACTS), so after
every connect we compare ``GET /channels`` with our sessions: a session whose channel is
gone gets a synthetic ``StasisEnd`` (its flow cleans up as on any hang-up), and a caller
channel in our Stasis app that no session owns (the app restarted) is adopted again with
its stored work item, so it keeps its original place (R21).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ivr import ari
from ivr.domain.items import OPEN_STATES, Kind, WorkItem
from ivr.flows.caller import CallerSession
from ivr.flows.context import FlowContext
from ivr.flows.session import ChannelSession

log = logging.getLogger("ivr.flows.switchboard")

# Stasis arguments of the legs we originate ourselves: "<role>,<work item id>".
LEG_ROLES = ("agent", "customer")


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
        role = ev.args[0] if ev.args else ""
        if role in LEG_ROLES:
            # A leg originated by an earlier run of the app: nobody waits for it now.
            log.warning("stray %s leg %s from an earlier run; hanging up", role, ev.channel.id)
            task = asyncio.create_task(self._hangup(ev.channel.id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self.start(CallerSession(self.ctx, ev.channel, role))

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
        prefix = self.ctx.cfg.ari.app + ","
        for c in channels:
            if c.id in self.sessions or c.app_name != "Stasis":
                continue
            if not (c.app_data == self.ctx.cfg.ari.app or c.app_data.startswith(prefix)):
                continue
            args = c.app_data.split(",")[1:]
            role = args[0] if args else ""
            if role in LEG_ROLES:
                log.warning("stray %s leg %s after resync; hanging up", role, c.id)
                await self._hangup(c.id)
                continue
            item = by_channel.get(c.id)
            log.info("adopting caller channel %s (stored item: %s)", c.id, bool(item))
            self.start(CallerSession(self.ctx, c, role, item=item, adopted=True))
        # Live items whose channel vanished while we were away (Asterisk restarted).
        for channel_id, item in by_channel.items():
            if channel_id not in present and item.channel_id not in self.sessions:
                self.ctx.engine.abandon(item.id)
                await self.ctx.commit()
                log.info("[item=%s] caller channel gone while away: abandoned", item.id[:12])
        self.ctx.on_work_changed()

    def _open_items_by_channel(self) -> dict[str, WorkItem]:
        out: dict[str, WorkItem] = {}
        for name in self.ctx.cfg.queues:
            for item in self.ctx.engine.items(name):
                if item.kind == Kind.INBOUND and item.channel_id and item.state in OPEN_STATES:
                    out[item.channel_id] = item
        return out


def _gone(channel_id: str, app: str) -> ari.StasisEnd:
    channel = ari.Channel(id=channel_id, name="", state="Down", caller_number="",
                          caller_name="", exten="", created_at=0.0)
    return ari.StasisEnd(type="StasisEnd", timestamp=time.time(), application=app,
                         raw={"synthetic": True}, channel=channel)
