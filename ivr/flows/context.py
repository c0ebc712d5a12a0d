"""What the flows share: the ARI client, the queue engine, the store and the config.

The switchboard builds one ``FlowContext``; flows read it and never reach further (no
websocket, no web layer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ivr.ari import AriClient
from ivr.config import Config, QueueConfig
from ivr.domain.items import WorkItem
from ivr.domain.numbers import NumberGuard
from ivr.domain.queues import QueueEngine
from ivr.store import Store, StoreError

log = logging.getLogger("ivr.flows")


@dataclass
class Counters:
    """Event counts exported as metrics (R19); the web layer reads them."""

    values: dict[str, int] = field(default_factory=dict)

    def inc(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n


class FlowContext:
    def __init__(
        self, cfg: Config, client: AriClient, engine: QueueEngine, store: Store
    ) -> None:
        self.cfg = cfg
        self.ari = client
        self.engine = engine
        self.store = store
        self.counters = Counters()
        # R13: one guard per queue, built exactly as check-config built it.
        self.guards: dict[str, NumberGuard] = {
            name: q.number_guard() for name, q in cfg.queues.items()
        }
        #: items whose caller is busy (choosing a callback, entering a number): the
        #: dispatcher does not offer them to agents meanwhile; they keep their place
        self.held: set[str] = set()
        #: set by the dispatcher: called whenever work or agents may have changed
        self.on_work_changed: Callable[[], None] = lambda: None
        #: set by the dispatcher: a live item left the queue (hang-up, callback)
        self.on_item_closed: Callable[[WorkItem], None] = lambda item: None

    def queue(self, name: str) -> QueueConfig | None:
        return self.cfg.queues.get(name)

    def prompt(self, queue: QueueConfig | None, prompt_id: str) -> str:
        if queue is None:
            return self.cfg.prompts.uri(prompt_id)
        return self.cfg.prompts.uri(prompt_id, queue.language, queue.prompts)

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
            self.on_item_closed(item)
        try:
            await self.store.save(changed)
        except StoreError as exc:
            self.engine.mark_changed(changed)
            self.counters.inc("store_failures")
            log.error("store refused a commit of %d item(s): %s", len(changed), exc)
            return False
        return True

    def now(self) -> float:
        return time.time()
