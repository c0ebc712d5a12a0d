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
        clock: Clock | None = None,
    ) -> None:
        self.cfg = cfg
        self.ari = client
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
        #: a graceful stop began: no new offers, no new callers (see Dispatcher.drain)
        self.stopping = False

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

    def now(self) -> float:
        return self.clock.now()


def _subscriber_failed(event: Event, exc: Exception) -> None:
    log.error("a subscriber failed on %s: %r", type(event).__name__, exc)
