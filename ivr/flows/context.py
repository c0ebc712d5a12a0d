"""What the flows share: the ARI client, the queue engine, the store, the config, the
clock and the notifier.

The app builds one ``FlowContext``; flows read it and never reach further (no websocket,
no web layer). Flows tell the rest of the service what happened by publishing typed
events on ``notifier`` (``ivr.domain.events``): counters, the dispatcher and (next) the
consoles subscribe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from ivr.ari import AriClient
from ivr.config import Config, QueueConfig
from ivr.domain.events import (
    Counters,
    Event,
    ItemClosed,
    Notifier,
    StoreCommitted,
    StoreFailed,
)
from ivr.domain.items import Clock, SystemClock
from ivr.domain.numbers import NumberGuard
from ivr.domain.queues import QueueEngine
from ivr.store import Store, StoreError

log = logging.getLogger("ivr.flows")


class FlowContext:
    def __init__(
        self, cfg: Config, client: AriClient, engine: QueueEngine, store: Store,
        clock: Clock | None = None, nodes: Mapping[str, AriClient] | None = None,
    ) -> None:
        self.cfg = cfg
        #: the first node's client (the only one with ``ari:``)
        self.ari = client
        first = next(iter(cfg.nodes)) if cfg.nodes else ""
        #: one ARI client per Asterisk node, by node name
        self.nodes: dict[str, AriClient] = dict(nodes) if nodes else {first: client}
        self.engine = engine
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.notifier = Notifier(on_error=_subscriber_failed)
        self.counters = Counters()
        self.notifier.subscribe(self.counters)
        # R13: one guard per queue, built exactly as check-config built it.
        self.guards: dict[str, NumberGuard] = {
            name: q.number_guard() for name, q in cfg.queues.items()
        }
        #: items whose caller is busy (choosing a callback, entering a number): the
        #: dispatcher does not offer them to agents meanwhile; they keep their place
        self.held: set[str] = set()
        #: ``commit_soon`` asked for a commit (monotonic time) that no commit has made yet
        self.commit_due: float | None = None
        #: seconds ``commit_soon`` leaves for another flow's commit to carry its changes
        self.lazy_commit_after = 1.0
        #: a graceful stop began: no new offers, no new callers (see Dispatcher.drain)
        self.stopping = False
        #: callbacks whose dial was in flight when the last process died -> the node it
        #: was on: not offered until that node's channels say whether the customer was
        #: reached (Switchboard.on_connect) or the node is given up
        self.unresolved: dict[str, str] = {}

    def node_name(self, name: str) -> str:
        """The configured node a stored name means ("" or a node no longer configured:
        the first)."""
        return name if name in self.nodes else next(iter(self.nodes))

    def client(self, node: str) -> AriClient:
        """The ARI client of ``node`` (see ``node_name``)."""
        return self.nodes[self.node_name(node)]

    def node_up(self, node: str) -> bool:
        return self.client(node).connected.is_set()

    def publish(self, event: Event) -> None:
        self.notifier.publish(event)

    def queue(self, name: str) -> QueueConfig | None:
        return self.cfg.queues.get(name)

    def prompt(self, queue: QueueConfig | None, prompt_id: str, language: str = "") -> str:
        """The media URI of a prompt: in ``language`` (a caller's own, stored on the
        work item), else the queue's."""
        if queue is None:
            return self.cfg.prompts.uri(prompt_id, language or None)
        return self.cfg.prompts.uri(prompt_id, language or queue.language, queue.prompts)

    async def commit(self) -> bool:
        """Commit every change the engine made so far; True once durable (R20).

        Drained and handed to the store in one synchronous step: the store's queue is
        FIFO, so even when another session's save carried our changes, our (maybe empty)
        save resolves only after that one committed.

        False when the store refused (disk full, I/O error): the drained items are marked
        changed again so a later commit carries them, and the caller decides what an
        undurable change means for it (press 1 rolls the callback back)."""
        changed = self.engine.drain_changes()
        self.commit_due = None  # every pending change goes with this commit
        # Items the engine closed behind an agent's back: their legs must hear of it
        # now, whatever the store says (the engine already considers them closed).
        for item in self.engine.drain_side_closes():
            self.publish(ItemClosed(item.queue, item.id))
        started = time.monotonic()
        try:
            await self.store.save(changed)
        except StoreError as exc:
            self.engine.mark_changed(changed)
            self.publish(StoreFailed(items=len(changed)))
            log.error("store refused a commit of %d item(s): %s", len(changed), exc)
            return False
        if changed:
            self.publish(StoreCommitted(seconds=time.monotonic() - started))
        return True

    def commit_soon(self) -> None:
        """Have the changes made so far committed soon rather than now: by the next
        commit of any flow (a commit carries every pending change), else by the
        dispatcher's next pass after ``lazy_commit_after`` (``commit_if_due``). Only
        for a change nobody is promised anything on and that the next start repairs if
        a crash loses it: a caller's hang-up (a live item whose channel is gone is
        abandoned at resync). Under load it saves a transaction per caller who hangs
        up, and the press-1 commits that R20 waits for queue behind fewer others."""
        if self.commit_due is None:
            self.commit_due = time.monotonic()

    async def commit_if_due(self) -> None:
        """The commit ``commit_soon`` asked for, once ``lazy_commit_after`` has passed
        without another commit making it."""
        due = self.commit_due
        if due is not None and time.monotonic() - due >= self.lazy_commit_after:
            await self.commit()

    def now(self) -> float:
        return self.clock.now()


def _subscriber_failed(event: Event, exc: Exception) -> None:
    log.error("a subscriber failed on %s: %r", type(event).__name__, exc)
