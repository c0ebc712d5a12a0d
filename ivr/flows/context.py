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
from ivr.store import Store

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
        self.guards = {
            name: NumberGuard(q.allowed_numbers, q.denied_numbers) for name, q in cfg.queues.items()
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

    async def commit(self) -> None:
        """Commit every change the engine made so far; returns once durable (R20).

        Drained and handed to the store in one synchronous step: the store's queue is
        FIFO, so even when another session's save carried our changes, our (maybe empty)
        save resolves only after that one committed."""
        await self.store.save(self.engine.drain_changes())

    def now(self) -> float:
        return time.time()
