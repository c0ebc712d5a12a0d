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
from ivr.domain.events import ItemClosed, WorkChanged
from ivr.domain.items import OPEN_STATES, Kind, WorkItem
from ivr.domain.queues import QueueError
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
        #: by (node, channel id): channel ids are unique per Asterisk, not across nodes
        self.sessions: dict[tuple[str, str], ChannelSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: events about no channel (endpoint state), with their node: the dispatcher
        self.on_other_event: Callable[[ari.Event, str], None] = lambda ev, node: None

    # ------------------------------------------------------------------ sessions

    def _key(self, node: str, channel_id: str) -> tuple[str, str]:
        return (self.ctx.node_name(node), channel_id)

    def start(self, session: ChannelSession) -> None:
        self.sessions[self._key(session.node, session.channel_id)] = session
        task = asyncio.create_task(self._run(session), name=f"session-{session.channel_id}")
        session.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def register(self, session: ChannelSession) -> None:
        """Route a channel's events to a session before the channel exists (originate)."""
        self.sessions[self._key(session.node, session.channel_id)] = session

    def session_for(self, channel_id: str, node: str = "") -> ChannelSession | None:
        return self.sessions.get(self._key(node, channel_id))

    def unregister(self, session: ChannelSession) -> None:
        key = self._key(session.node, session.channel_id)
        if self.sessions.get(key) is session:
            del self.sessions[key]

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

    def on_event(self, ev: ari.Event, node: str = "") -> None:
        """An event from ``node``'s websocket ("" = the first node)."""
        node = self.ctx.node_name(node)
        if isinstance(ev, ari.StasisStart):
            self.on_stasis_start(ev, node)
            return
        if not ev.channel_id:
            self.on_other_event(ev, node)
            return
        session = self.sessions.get((node, ev.channel_id))
        if session is not None:
            session.deliver(ev)

    def on_stasis_start(self, ev: ari.StasisStart, node: str = "") -> None:
        node = self.ctx.node_name(node)
        existing = self.sessions.get((node, ev.channel.id))
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
            task = asyncio.create_task(self._hangup(ev.channel.id, node))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self.start(self._caller(ev.channel, role, node=node))

    def _caller(self, channel: ari.Channel, queue_name: str, item: WorkItem | None = None,
                *, adopted: bool = False, node: str = "") -> ChannelSession:
        queue = self.ctx.queue(queue_name)
        if queue is None:
            return UnknownQueueCall(self.ctx, channel, queue_name, node=node)
        return CallerSession(self.ctx, channel, queue, item, adopted=adopted, node=node)

    async def _hangup(self, channel_id: str, node: str = "") -> None:
        try:
            await self.ctx.client(node).hangup(channel_id)
        except ari.AriError as exc:
            log.debug("hangup of %s: %s", channel_id, exc)

    async def node_lost(self, node: str) -> int:
        """``node`` is given up for lost: every session on it ends as if its channel
        hung up (a live caller is abandoned, an agent leg gives its offer back), and a
        live caller of it that no session holds (never adopted: the node was down when
        we started) is abandoned too. Returns how many callers and legs that was."""
        node = self.ctx.node_name(node)
        for item_id, item_node in list(self.ctx.unresolved.items()):
            if item_node == node:
                del self.ctx.unresolved[item_id]  # the other nodes may dial it now
        told = 0
        for (session_node, channel_id), session in list(self.sessions.items()):
            if session_node == node and session.task is not None:
                session.gone_reason = "node_down"
                session.deliver(_gone(channel_id, self.ctx.cfg.ari.app))
                told += 1
        orphans = [item for channel_id, item in self._open_items_by_channel(node).items()
                   if (node, channel_id) not in self.sessions]
        for item in orphans:
            self.ctx.engine.abandon(item.id, "node_down")
        if orphans:
            await self.ctx.commit()
            for item in orphans:
                self.ctx.publish(ItemClosed(item.queue, item.id))
        return told + len(orphans)

    # ------------------------------------------------------------------ resync

    async def on_connect(self, reconnected: bool, node: str = "") -> None:
        """``node``'s websocket is (again) up: compare its channels with our sessions
        on it; adopt callers, end sessions whose channel is gone."""
        node = self.ctx.node_name(node)
        client = self.ctx.client(node)
        try:
            channels = await client.list_channels()
        except ari.AriError as exc:
            log.error("resync of node %s failed, GET /channels: %s", node, exc)
            return
        present = {c.id: c for c in channels}
        for (session_node, channel_id), session in list(self.sessions.items()):
            if session_node == node and channel_id not in present \
                    and session.task is not None:
                session.deliver(_gone(channel_id, self.ctx.cfg.ari.app))
        by_channel = self._open_items_by_channel(node)
        confirmed = self._callbacks_by_origin(node)
        prefix = self.ctx.cfg.ari.app + ","
        watched = await self._adopt_conversations(present, node)
        leg_prefixes = tuple(f"{self.ctx.cfg.ari.app}-{role}-" for role in LEG_ROLES)
        await self._resolve_lost_dials(node, self._items_of_legs(present, watched))
        for c in channels:
            if c.id.startswith(leg_prefixes) and (node, c.id) not in self.sessions \
                    and c.id not in watched and c.app_name != "Stasis":
                # Originated by an earlier run and not answered yet (a customer's phone
                # still ringing): nobody waits for it now, and the item will be dialled
                # again; without this the customer's phone would ring twice at once.
                log.warning("stray leg %s (%s) after resync; hanging up", c.id, c.state)
                await self._hangup(c.id, node)
        for c in channels:
            if (node, c.id) in self.sessions or c.app_name != "Stasis":
                continue
            if not (c.app_data == self.ctx.cfg.ari.app or c.app_data.startswith(prefix)):
                continue
            args = c.app_data.split(",")[1:]
            role = args[0] if args else ""
            if role in LEG_ROLES:
                if c.id in watched:
                    continue
                log.warning("stray %s leg %s after resync; hanging up", role, c.id)
                await self._hangup(c.id, node)
                continue
            if c.id in confirmed:
                # Its callback was committed before we went away (the caller was hearing
                # the confirmation): confirm again and say goodbye, never queue it anew.
                log.info("[item=%s] caller with a committed callback still on the line",
                         confirmed[c.id].id[:12])
                queue = self.ctx.queue(confirmed[c.id].queue)
                if queue is not None:
                    self.start(AlreadyConfirmed(self.ctx, c, queue, node=node))
                else:
                    await self._hangup(c.id, node)
                continue
            item = by_channel.get(c.id)
            log.info("adopting caller channel %s on node %s (stored item: %s)", c.id, node,
                     bool(item))
            self.start(self._caller(c, role, item, adopted=True, node=node))
        # Live items whose channel vanished while we were away (Asterisk restarted).
        for channel_id, item in by_channel.items():
            if channel_id not in present and (node, channel_id) not in self.sessions:
                self.ctx.engine.abandon(item.id)
                await self.ctx.commit()
                log.info("[item=%s] caller channel gone while away: abandoned", item.id[:12])
        self.ctx.publish(WorkChanged())

    def _items_of_legs(self, present: dict[str, ari.Channel], channels: set[str]) -> set[str]:
        """The work items our legs among ``channels`` belong to (their Stasis arguments:
        ``<app>,<role>,<item id>``)."""
        items: set[str] = set()
        for channel_id in channels:
            args = present[channel_id].app_data.split(",")[1:]
            if len(args) >= 2 and args[0] in LEG_ROLES:
                items.add(args[1])
        return items

    async def _resolve_lost_dials(self, node: str, talking: set[str]) -> None:
        """Dials in flight when the last process died, on ``node``: a customer Asterisk
        still has in a conversation with an agent was reached (done, never dialled
        again); any other such dial died with its legs (hung up as strays) and the
        callback may be offered again. ``talking``: the work items of the
        conversations just adopted."""
        for item_id, item_node in list(self.ctx.unresolved.items()):
            if item_node != node:
                continue
            del self.ctx.unresolved[item_id]
            if item_id not in talking:
                log.info("[item=%s] dial in flight at the restart: not connected, "
                         "offered again", item_id[:12])
                continue
            try:
                item = self.ctx.engine.connected_before_restart(item_id)
            except QueueError as exc:
                log.warning("[item=%s] found connected after the restart: %s",
                            item_id[:12], exc)
                continue
            await self.ctx.commit()
            self.ctx.publish(ItemClosed(item.queue, item.id))
            log.info("[item=%s] dial in flight at the restart: the customer is talking "
                     "to the agent, callback done", item_id[:12])

    async def _adopt_conversations(self, present: dict[str, ari.Channel],
                                   node: str) -> set[str]:
        """Bridges an earlier run left behind (it stopped or died mid-conversation): a
        conversation between two of our channels goes on, watched until one side hangs
        up; anything else in a bridge of ours (one leg left, or none) is cleaned up, so
        no orphan bridge or half-call outlives a restart. Returns the watched channels."""
        client = self.ctx.client(node)
        try:
            bridges = await client.list_bridges()
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
            if any((node, m) in self.sessions for m in ours):
                continue  # a live session of ours owns it
            if len(ours) == 2:
                watch = ConversationWatch(self.ctx, bridge_id, ours[0], ours[1], node)
                self.sessions[node, ours[1]] = watch
                self.start(watch)
                watched.update(ours)
                log.info("adopted a conversation left up by an earlier run (bridge %s)",
                         bridge_id)
                continue
            for m in ours:
                await self._hangup(m, node)
            try:
                await client.destroy_bridge(bridge_id)
            except ari.AriError as exc:
                log.debug("destroy of orphan bridge %s: %s", bridge_id, exc)
            log.info("cleaned up orphan bridge %s (%d channel(s))", bridge_id, len(ours))
        return watched

    def _callbacks_by_origin(self, node: str) -> dict[str, WorkItem]:
        """Open callbacks by the channel the caller pressed 1 on (their ``arrived``
        history entry) on ``node``: that channel may still be up after a restart."""
        out: dict[str, WorkItem] = {}
        for item in self.ctx.engine.open_items():
            origin = _origin_node(item)
            if item.kind == Kind.CALLBACK and item.history and origin is not None \
                    and self.ctx.node_name(origin) == node:
                origin = item.history[0].detail.get("channel")
                if origin:
                    out[origin] = item
        return out

    def _open_items_by_channel(self, node: str) -> dict[str, WorkItem]:
        out: dict[str, WorkItem] = {}
        for name in self.ctx.cfg.queues:
            for item in self.ctx.engine.items(name):
                if item.kind == Kind.INBOUND and item.channel_id \
                        and item.state in OPEN_STATES \
                        and self.ctx.node_name(item.node) == node:
                    out[item.channel_id] = item
        return out


class ConversationWatch(ChannelSession):
    """A conversation (agent + caller or customer) bridged by an earlier run of the app:
    its work item is already closed in the store; all that is left is to end the call
    cleanly when either side hangs up."""

    def __init__(self, ctx: FlowContext, bridge_id: str, first: str, second: str,
                 node: str = "") -> None:
        super().__init__(ctx.client(node), first, log, node=node)
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


def _origin_node(item: WorkItem) -> str | None:
    """The node a converted caller pressed 1 on: the item's, until a dial attempt moved
    it to the dialling agent's node (by then that caller has long gone: None)."""
    if any(entry.event == "dial_started" for entry in item.history):
        return None
    return item.node


def _gone(channel_id: str, app: str) -> ari.StasisEnd:
    channel = ari.Channel(id=channel_id, name="", state="Down", caller_number="",
                          caller_name="", exten="", created_at=0.0)
    return ari.StasisEnd(type="StasisEnd", timestamp=time.time(), application=app,
                         raw={"synthetic": True}, channel=channel)
