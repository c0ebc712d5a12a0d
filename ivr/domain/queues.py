"""The queue engine: FIFO by original arrival, callbacks keep their place, dispatch to
free agents (SPEC R1, R2, R6, R7, R10-R12, R14, R16).

Pure and synchronous: no I/O, no asyncio, time comes from the injected ``Clock``.
The caller persists what changed (``drain_changes()``) before telling anyone about it.

Data structures, per queue:
- ``open``: every open item (live callers and callbacks, eligible or not, offered or
  dialling), sorted by ``(arrived_at, seq)``. Positions are ranks in it: O(log n).
- ``ready_inbound`` / ``ready_callback``: the subset that may be offered right now.
  Dispatch reads their heads: O(log n) plus the items a given agent declined. Two
  indexes so callbacks can be held back (outside business hours) without scanning them.
- ``retry``: a heap of ``(next_eligible_at, seq, id)`` for callbacks waiting out their
  retry interval. They stay in ``open`` (they keep their place and count for positions)
  and move into ``ready_callback`` when due: O(log n) each, no scan of waiting retries.
Engine-wide: an expiry heap and a ``(queue, number) -> id`` map for open callbacks (R12).
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime

from ivr.domain.ewt import DequeueEstimator
from ivr.domain.items import (
    Clock,
    HistoryEntry,
    Kind,
    State,
    WorkItem,
    new_item_id,
)
from ivr.domain.order_index import Key, OrderIndex
from ivr.domain.policy import QueuePolicy

# Closed items are dropped from memory (the store has them); a bounded tail is kept so
# get() still answers for an item that closed a moment ago (e.g. a late agent event).
RECENTLY_CLOSED = 10_000


def _checked(number: str) -> str:
    """Numbers reach the engine already parsed (``ivr.domain.numbers.parse``, E.164):
    here they are opaque keys for ordering and dedupe (R12), never re-interpreted."""
    if not isinstance(number, str) or not number.strip() or number != number.strip():
        raise ValueError("not a phone number")
    return number


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


class QueueError(Exception):
    """Base for the engine's refusals."""


class UnknownQueue(QueueError, KeyError):
    pass


class UnknownItem(QueueError, KeyError):
    pass


class InvalidTransition(QueueError):
    """The operation is not possible in the item's current state. Nothing was changed."""

    def __init__(self, item: WorkItem, action: str, why: str = "") -> None:
        self.item_id = item.id
        self.state = item.state
        self.action = action
        msg = f"cannot {action} work item {item.id} in state {item.state.value}"
        super().__init__(f"{msg}: {why}" if why else msg)


class DuplicateCallback(QueueError):
    """R12: an open callback already exists for this (queue, number)."""

    def __init__(self, existing: WorkItem) -> None:
        self.existing = existing
        super().__init__(f"callback {existing.id} already scheduled in queue {existing.queue}")


class _Queue:
    __slots__ = (
        "estimator",
        "open",
        "policy",
        "ready_callback",
        "ready_inbound",
        "retry",
        "scheduled",
        "serving",
    )

    def __init__(self, policy: QueuePolicy) -> None:
        self.policy = policy
        self.open = OrderIndex()
        self.ready_inbound = OrderIndex()
        self.ready_callback = OrderIndex()
        self.retry: list[tuple[float, int, str]] = []
        # Callbacks booked for a later time (``add_callback(not_before=...)``): outside
        # ``open`` until then, so they neither count as waiting nor push anyone back.
        self.scheduled: list[tuple[float, int, str]] = []
        # Until the app tells us, assume one agent: EWT must be finite at start-up.
        self.serving = 1
        self.estimator = DequeueEstimator(policy.ewt_alpha, policy.initial_dequeue_interval)

    def ready_for(self, kind: Kind) -> OrderIndex:
        return self.ready_inbound if kind is Kind.INBOUND else self.ready_callback


class QueueEngine:
    def __init__(self, policies: Iterable[QueuePolicy], clock: Clock) -> None:
        self._clock = clock
        self._queues: dict[str, _Queue] = {}
        for policy in policies:
            if policy.name in self._queues:
                raise ValueError(f"queue {policy.name} defined twice")
            self._queues[policy.name] = _Queue(policy)
        self._items: dict[str, WorkItem] = {}  # open items only
        self._closed: OrderedDict[str, WorkItem] = OrderedDict()
        self._callbacks: dict[tuple[str, str], str] = {}  # R12: open callback per number
        self._expiry: list[tuple[float, int, str]] = []
        self._changed: dict[str, WorkItem] = {}  # insertion-ordered set of dirty items
        # Items closed as a side effect of another item's change while an agent held
        # them (offered): whoever drains changes tells that agent's leg.
        self._side_closes: list[WorkItem] = []
        self._seq = 0

    # ------------------------------------------------------------------ reading

    def queue_names(self) -> list[str]:
        return list(self._queues)

    def policy(self, queue: str) -> QueuePolicy:
        return self._queue(queue).policy

    def get(self, item_id: str) -> WorkItem:
        item = self._items.get(item_id) or self._closed.get(item_id)
        if item is None:
            raise UnknownItem(item_id)
        return item

    def position(self, item_id: str) -> int:
        """1-based among the queue's open items: live callers and callbacks, eligible or
        not, offered or dialling (a callback waiting out a retry keeps its place)."""
        item = self.get(item_id)
        if not item.is_open:
            raise InvalidTransition(item, "get the position of", "item is closed")
        return self._queues[item.queue].open.rank(item.key) + 1

    def items(self, queue: str) -> list[WorkItem]:
        q = self._queue(queue)
        return [self._items[key[2]] for key in q.open]

    def open_items(self) -> list[WorkItem]:
        return list(self._items.values())

    def waiting_count(self, queue: str) -> int:
        """R2's "waiting work items": every open item, live or callback."""
        return len(self._queue(queue).open)

    def open_callback_for(self, queue: str, number: str) -> WorkItem | None:
        self._queue(queue)
        item_id = self._callbacks.get((queue, number))
        return self._items[item_id] if item_id is not None else None

    def ewt(self, queue: str, position: int | None = None) -> float:
        """R16. ``position=None``: the wait a new arrival would have (count + 1).
        ``math.inf`` when no agent serves the queue."""
        q = self._queue(queue)
        if position is None:
            position = len(q.open) + 1
        return q.estimator.estimate(position, q.serving)

    def in_overflow(self, queue: str) -> bool:
        """R2, evaluated at each offer. Count: open items > max_waiting. EWT: the wait of
        the last item in the queue (position = count) > max_ewt — "the queue's" EWT,
        not the asking caller's, so callers near the head get offers too while the queue
        as a whole is slow. Neither limit set: never in overflow."""
        q = self._queue(queue)
        policy = q.policy
        count = len(q.open)
        if policy.max_waiting is not None and count > policy.max_waiting:
            return True
        if policy.max_ewt is not None and count > 0:
            return q.estimator.estimate(count, q.serving) > policy.max_ewt
        return False

    def ewt_errors(self, queue: str) -> list[tuple[float, float]]:
        """(predicted, actual) wait per dequeued item, latest last (bounded)."""
        return list(self._queue(queue).estimator.errors)

    def per_agent_dequeue_interval(self, queue: str) -> float:
        return self._queue(queue).estimator.per_agent_interval

    def serving_agents(self, queue: str) -> int:
        return self._queue(queue).serving

    # ------------------------------------------------------------------ configuration

    def set_serving_agents(self, queue: str, n: int) -> None:
        if n < 0:
            raise ValueError("serving agents must be >= 0")
        self._queue(queue).serving = n

    def set_policy(self, policy: QueuePolicy) -> None:
        """Replace a queue's policy (config reload) or add a queue. Items keep their
        places; new limits apply from the next decision."""
        q = self._queues.get(policy.name)
        if q is None:
            self._queues[policy.name] = _Queue(policy)
            return
        q.policy = policy
        q.estimator.alpha = policy.ewt_alpha

    # ------------------------------------------------------------------ arrivals

    def arrive(
        self, queue: str, *, channel_id: str, number: str | None,
        arrived_at: float | None = None, language: str = "", node: str = "",
    ) -> WorkItem:
        """A live inbound caller enters the queue (R1). ``node``: the Asterisk node its
        channel is on (several nodes behind one queue)."""
        q = self._queue(queue)
        now = self._clock.now()
        # arrived_at: a caller adopted after a restart before its arrival was committed
        # keeps the time Asterisk created its channel (never later than now).
        item = WorkItem(
            id=new_item_id(),
            queue=queue,
            kind=Kind.INBOUND,
            state=State.WAITING,
            arrived_at=now if arrived_at is None else min(arrived_at, now),
            seq=self._next_seq(),
            number=number,
            channel_id=channel_id,
            next_eligible_at=now,
            created_at=now,
            updated_at=now,
            language=language,
            node=node,
        )
        key = item.key  # one tuple shared by both indexes (memory at 100k items)
        self._insert(q, item, key)
        q.ready_inbound.add(key)
        item.predicted_wait = q.estimator.estimate(q.open.rank(key) + 1, q.serving)
        self._record(item, "arrived", channel=channel_id)
        return item

    def add_callback(
        self, queue: str, number: str, *, arrived_at: float | None = None,
        not_before: float | None = None,
    ) -> WorkItem:
        """A callback requested from outside (web form, API). Raises DuplicateCallback
        (R12) and ValueError for a number that is not a phone number, a future
        ``arrived_at`` or a ``not_before`` past the expiry window. The number guard (R13)
        and business hours are the caller's business: it knows the queue's config.

        ``not_before`` (a scheduled callback, "call me tomorrow at 9"): not dispatched
        before that time, and FIFO-fair from it on: its place is that of a caller who
        arrives at that moment, behind everyone who came earlier. Until then it is not
        in the queue (no position, not counted as waiting) but it is open, durable and
        deduplicated like any callback."""
        q = self._queue(queue)
        norm = _checked(number)
        self._check_duplicate(queue, norm)
        now = self._clock.now()
        at = now if arrived_at is None else arrived_at
        if at > now:
            raise ValueError("arrived_at is in the future")
        later = not_before is not None and not_before > now
        if later:
            assert not_before is not None
            if not_before > now + q.policy.expire_after:
                raise ValueError("not_before is further away than the queue's expire_after")
            at = not_before
        item = WorkItem(
            id=new_item_id(),
            queue=queue,
            kind=Kind.CALLBACK,
            state=State.CALLBACK_PENDING,
            arrived_at=at,
            seq=self._next_seq(),
            number=norm,
            next_eligible_at=at if later else now,
            created_at=now,
            updated_at=now,
            expires_at=max(at, now) + q.policy.expire_after,
        )
        self._callbacks[(queue, norm)] = item.id
        heapq.heappush(self._expiry, (item.expires_at or now, item.seq, item.id))
        if later:
            self._items[item.id] = item
            heapq.heappush(q.scheduled, (at, item.seq, item.id))
            self._record(item, "callback_scheduled", not_before=_iso(at))
            return item
        self._insert(q, item)
        item.predicted_wait = q.estimator.estimate(q.open.rank(item.key) + 1, q.serving)
        self._enter_pending(q, item, now)
        self._record(item, "callback_requested")
        return item

    def scheduled(self, queue: str) -> list[WorkItem]:
        """Open callbacks booked for later, soonest first (not yet in the queue)."""
        q = self._queue(queue)
        items = [self._items[i] for _, _, i in q.scheduled if self._is_scheduled(q, i)]
        return sorted(items, key=lambda i: i.key)

    def activate_scheduled(self) -> list[WorkItem]:
        """Scheduled callbacks whose time has come join their queue, at the place of an
        arrival at that time. Called by every dispatch (and by anyone who wants the
        queues current before reading them)."""
        now = self._clock.now()
        joined: list[WorkItem] = []
        for q in self._queues.values():
            heap = q.scheduled
            while heap and heap[0][0] <= now:
                _, _, item_id = heapq.heappop(heap)
                if not self._is_scheduled(q, item_id):
                    continue  # cancelled meanwhile
                item = self._items[item_id]
                self._insert(q, item)
                item.predicted_wait = q.estimator.estimate(q.open.rank(item.key) + 1,
                                                           q.serving)
                self._enter_pending(q, item, now)
                self._record(item, "callback_due")
                joined.append(item)
        return joined

    def _is_scheduled(self, q: _Queue, item_id: str) -> bool:
        item = self._items.get(item_id)
        return item is not None and item.state is State.CALLBACK_PENDING and \
            item.key not in q.open

    def note_offer_played(self, item_id: str) -> None:
        """R3: the callback offer played to this caller; recorded once per item (the
        first time) for the day's outcome funnel. Saved with the next commit."""
        item = self._items.get(item_id)
        if item is not None and not any(h.event == "callback_offered" for h in item.history):
            self._record(item, "callback_offered")

    def convert_to_callback(self, item_id: str, number: str) -> WorkItem:
        """R6: a waiting caller pressed 1. Same item, same (arrived_at, seq): exactly the
        same place. Only from WAITING: once an agent is being rung (OFFERED) the caller is
        about to be connected, so the request is refused rather than pulling the offer.
        """
        item = self._open_item(item_id, "convert")
        if item.kind is not Kind.INBOUND or item.state is not State.WAITING:
            raise InvalidTransition(item, "convert", "only a waiting live caller converts")
        norm = _checked(number)
        self._check_duplicate(item.queue, norm)
        q = self._queues[item.queue]
        now = self._clock.now()
        q.ready_inbound.discard(item.key)
        item.kind = Kind.CALLBACK
        item.state = State.CALLBACK_PENDING
        item.number = norm
        item.channel_id = None
        item.next_eligible_at = now
        item.expires_at = now + q.policy.expire_after
        self._enter_pending(q, item, now)
        self._callbacks[(item.queue, norm)] = item.id
        heapq.heappush(self._expiry, (item.expires_at, item.seq, item.id))
        self._record(item, "converted_to_callback")
        return item

    def undo_convert(self, item_id: str, channel_id: str, number: str | None) -> WorkItem:
        """The store refused to commit a press 1 (R20): the caller was told nothing, so
        the item is again the waiting live caller it was — same place, its own number —
        and no callback exists that was never durable."""
        item = self._open_item(item_id, "undo convert")
        if item.kind is not Kind.CALLBACK or item.state is not State.CALLBACK_PENDING:
            raise InvalidTransition(item, "undo convert", "not a pending callback")
        q = self._queues[item.queue]
        q.ready_callback.discard(item.key)
        dedupe_key = (item.queue, item.number or "")
        if self._callbacks.get(dedupe_key) == item.id:
            del self._callbacks[dedupe_key]
        item.kind = Kind.INBOUND
        item.state = State.WAITING
        item.number = number
        item.channel_id = channel_id
        item.expires_at = None  # its expiry heap entry goes stale and is skipped
        q.ready_inbound.add(item.key)
        self._record(item, "callback_not_stored")
        return item

    # ------------------------------------------------------------------ dispatch

    def dispatch(
        self,
        free_agents: Mapping[str, Collection[str]],
        *,
        callback_queues: Collection[str] | None = None,
        standby: Mapping[str, Collection[str]] | None = None,
        skip: Collection[str] = (),
    ) -> list[tuple[str, WorkItem]]:
        """Offer work to free agents (R7, R9, R11). ``free_agents``: agent id -> queues
        it serves, in priority order (longest idle first). Each agent gets at most one
        item: the earliest-arrived eligible one across its queues. Returns the offers made
        (items are now OFFERED to that agent).

        An agent is not offered an item it declined (or let time out) while some other
        agent in ``free_agents`` serves that queue and has not declined it (R7); with no
        such agent it gets the item again rather than leaving it unserved.
        ``callback_queues``: queues whose callbacks may be dialled now (R14 business
        hours); None = all. Live callers are offered regardless.
        ``standby``: agent id -> queues, for agents not free now but on duty (ringing,
        busy, wrap-up): they "could take it" too, so a decliner is not asked again while
        one of them has not declined.
        ``skip``: item ids not to offer now (a caller busy entering another number); they
        keep their place and the next item is offered instead.
        """
        self.activate_scheduled()
        now = self._clock.now()
        # Free agents per queue, for the "could another agent take it" test.
        serving_free: dict[str, list[str]] = {}
        for agent, queues in free_agents.items():
            for name in queues:
                if name in self._queues:
                    serving_free.setdefault(name, []).append(agent)
        for name in serving_free:
            self._promote_due(self._queues[name], now)
        could_take = {name: list(agents) for name, agents in serving_free.items()}
        for agent, queues in (standby or {}).items():
            for name in queues:
                if name in could_take and agent not in could_take[name]:
                    could_take[name].append(agent)

        offers: list[tuple[str, WorkItem]] = []
        for agent, queues in free_agents.items():
            best: WorkItem | None = None
            for name in dict.fromkeys(queues):  # dedupe, keep order
                q = self._queues.get(name)
                if q is None:
                    continue
                candidates = [q.ready_inbound]
                if callback_queues is None or name in callback_queues:
                    candidates.append(q.ready_callback)
                for index in candidates:
                    item = self._first_offerable(index, agent, could_take[name], skip)
                    if item is not None and (best is None or item.key < best.key):
                        best = item
            if best is None:
                continue
            q = self._queues[best.queue]
            q.ready_for(best.kind).discard(best.key)
            best.state = State.OFFERED
            best.offered_to = agent
            self._record(best, "offered", agent=agent)
            offers.append((agent, best))
        return offers

    def _first_offerable(
        self, index: OrderIndex, agent: str, serving_free: list[str], skip: Collection[str]
    ) -> WorkItem | None:
        for key in index:
            item = self._items[key[2]]
            if item.id in skip:
                continue
            if agent not in item.declined_by:
                return item
            if not any(a != agent and a not in item.declined_by for a in serving_free):
                return item
        return None

    def offer_declined(self, item_id: str, agent_id: str) -> WorkItem:
        """R7: decline. Back to the same place, not an attempt (R10)."""
        return self._offer_returned(item_id, agent_id, "declined")

    def offer_timed_out(self, item_id: str, agent_id: str) -> WorkItem:
        """R7/R9: no answer within preview/ring timeout; treated like a decline."""
        return self._offer_returned(item_id, agent_id, "offer_timed_out")

    def set_language(self, item_id: str, language: str) -> WorkItem:
        """The caller chose a language at entry: it travels with the item."""
        item = self._open_item(item_id, "set language")
        if item.language != language:
            item.language = language
            self._record(item, "language", language=language)
        return item

    def revoke_offer(self, item_id: str) -> WorkItem:
        """A live caller pressed 1 while an agent was being rung for them (not yet
        connected): the caller's choice wins. Back to WAITING at the same place, not a
        decline by that agent (so ``convert_to_callback`` can follow)."""
        item = self._open_item(item_id, "revoke offer")
        if item.kind is not Kind.INBOUND or item.state is not State.OFFERED:
            raise InvalidTransition(item, "revoke offer", "not a live caller being offered")
        agent = item.offered_to
        item.offered_to = None
        item.state = State.WAITING
        self._queues[item.queue].ready_inbound.add(item.key)
        self._record(item, "offer_revoked", agent=agent, reason="caller_chose_callback")
        return item

    def _offer_returned(self, item_id: str, agent_id: str, event: str) -> WorkItem:
        item = self._open_item(item_id, event)
        self._check_offered_to(item, agent_id, event)
        q = self._queues[item.queue]
        item.offered_to = None
        item.declined_by.add(agent_id)
        if item.kind is Kind.INBOUND:
            item.state = State.WAITING
            q.ready_inbound.add(item.key)
        else:
            item.state = State.CALLBACK_PENDING
            self._enter_pending(q, item, self._clock.now())
        self._record(item, event, agent=agent_id)
        return item

    # ------------------------------------------------------------------ outcomes

    def connected(self, item_id: str, agent_id: str) -> WorkItem:
        """R9: the agent answered a live caller. Dequeued. R12: an open callback for the
        same (queue, number) is closed: the customer has been served."""
        item = self._open_item(item_id, "connect")
        if item.kind is not Kind.INBOUND:
            raise InvalidTransition(item, "connect", "callbacks use dial_started")
        self._check_offered_to(item, agent_id, "connect")
        q = self._queues[item.queue]
        now = self._clock.now()
        self._close(q, item, State.CONNECTED)
        self._dequeue_sample(q, item, now)
        self._record(item, "connected", agent=agent_id)
        if item.number is not None:
            other_id = self._callbacks.get((item.queue, item.number))
            if other_id is not None:
                other = self._items[other_id]
                # A DIALLING callback is left alone: that call is already in progress
                # and its outcome will close it.
                if other.state in (State.CALLBACK_PENDING, State.OFFERED):
                    self._withdraw_offer(q, other)
                    self._close(q, other, State.CANCELLED)
                    self._record(other, "cancelled", reason="served_inbound", by=item.id)
                    if other.offered_to is not None:
                        self._side_closes.append(other)
        return item

    def dial_started(self, item_id: str, agent_id: str, node: str = "") -> WorkItem:
        """R8: the agent accepted a callback; we dial. Counts as an attempt (R10).
        ``node``: the Asterisk node that dials (the agent's), kept on the item so that
        after a restart the attempt is looked for there."""
        item = self._open_item(item_id, "start dialling")
        if item.kind is not Kind.CALLBACK:
            raise InvalidTransition(item, "start dialling", "not a callback")
        self._check_offered_to(item, agent_id, "start dialling")
        item.state = State.DIALLING
        item.attempts += 1
        if node:
            item.node = node
        self._record(item, "dial_started", agent=agent_id, attempt=str(item.attempts),
                     node=node or None)
        return item

    def callback_connected(self, item_id: str) -> WorkItem:
        """R8: the customer answered and is bridged to the agent: done."""
        item = self._open_item(item_id, "connect callback")
        if item.state is not State.DIALLING:
            raise InvalidTransition(item, "connect callback", "not dialling")
        q = self._queues[item.queue]
        agent = item.offered_to or ""
        now = self._clock.now()
        self._close(q, item, State.DONE)
        self._dequeue_sample(q, item, now)
        self._record(item, "callback_connected", agent=agent)
        return item

    def lost_dials(self) -> list[WorkItem]:
        """Callbacks whose dial was in flight when the last process died (restored as
        pending, ``dial_lost_on_restart``): what Asterisk still holds decides them
        (``connected_before_restart`` when the customer is found talking to an agent)."""
        return [item for item in self._items.values()
                if item.state is State.CALLBACK_PENDING and item.history
                and item.history[-1].event == "dial_lost_on_restart"]

    def connected_before_restart(self, item_id: str, agent_id: str = "") -> WorkItem:
        """A dial lost on restart whose customer Asterisk still has bridged to an agent:
        the customer was reached, the callback is done (never dialled again)."""
        item = self._open_item(item_id, "connect callback")
        if item.kind is not Kind.CALLBACK or item.state is not State.CALLBACK_PENDING:
            raise InvalidTransition(item, "connect callback", "not a callback being dialled")
        q = self._queues[item.queue]
        self._close(q, item, State.DONE)
        self._dequeue_sample(q, item, self._clock.now())
        self._record(item, "callback_connected", agent=agent_id or None,
                     found="after_restart")
        return item

    def dial_failed(self, item_id: str, reason: str, *, counted: bool = True) -> WorkItem:
        """R10: busy / no answer / failed / not verified. Keeps its place, not eligible
        for retry_interval; after max_attempts it closes as FAILED.

        ``counted=False``: the customer never had a chance (our trunk did not answer,
        the store could not record the attempt): the attempt is given back, so an outage
        on our side never uses up a customer's attempts; expiry (R14) still bounds it."""
        item = self._open_item(item_id, "fail dial")
        if item.state is not State.DIALLING:
            raise InvalidTransition(item, "fail dial", "not dialling")
        q = self._queues[item.queue]
        now = self._clock.now()
        if not counted:
            item.attempts = max(0, item.attempts - 1)
        if counted and item.attempts >= q.policy.max_attempts:
            self._close(q, item, State.FAILED)
            self._record(item, "failed", reason=reason, attempts=str(item.attempts))
        else:
            item.offered_to = None
            item.state = State.CALLBACK_PENDING
            item.next_eligible_at = now + q.policy.retry_interval
            self._enter_pending(q, item, now)
            self._record(
                item,
                "dial_failed",
                reason=reason,
                attempts=str(item.attempts),
                retry_at=repr(item.next_eligible_at),
            )
        return item

    def abandon(self, item_id: str, reason: str = "") -> WorkItem:
        """The live caller hung up before being connected (``reason``: why we know, when
        it is not a hang-up we saw, e.g. its Asterisk node went down)."""
        item = self._open_item(item_id, "abandon")
        if item.kind is not Kind.INBOUND:
            raise InvalidTransition(item, "abandon", "not a live caller")
        q = self._queues[item.queue]
        self._withdraw_offer(q, item)
        self._close(q, item, State.ABANDONED)
        self._record(item, "abandoned", reason=reason or None)
        return item

    def cancel(self, item_id: str, reason: str = "cancelled") -> WorkItem:
        """Supervisor / API cancel of any open item. If it was OFFERED or DIALLING, the
        caller of this method owns telling the agent and hanging up that leg."""
        item = self._open_item(item_id, "cancel")
        q = self._queues[item.queue]
        self._withdraw_offer(q, item)
        self._close(q, item, State.CANCELLED)
        self._record(item, "cancelled", reason=reason)
        return item

    def expire_due(self) -> list[WorkItem]:
        """R14: open callbacks past expires_at close as EXPIRED. One being offered or
        dialled right now is left to finish and expires at the next call if still open."""
        now = self._clock.now()
        expired: list[WorkItem] = []
        deferred: list[tuple[float, int, str]] = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            item = self._items.get(entry[2])
            if item is None or item.expires_at != entry[0]:
                continue  # closed since, or a stale entry
            if item.state is not State.CALLBACK_PENDING:
                deferred.append(entry)
                continue
            q = self._queues[item.queue]
            self._close(q, item, State.EXPIRED)
            self._record(item, "expired")
            expired.append(item)
        for entry in deferred:
            heapq.heappush(heap, entry)
        return expired

    # ------------------------------------------------------------------ persistence

    def drain_changes(self) -> list[WorkItem]:
        """Items mutated since the last drain, in first-change order. Hand them to the
        store in the same synchronous step (``await store.save(engine.drain_changes())``)
        so durable order follows mutation order."""
        changed = list(self._changed.values())
        self._changed.clear()
        return changed

    def mark_changed(self, items: Iterable[WorkItem]) -> None:
        """A save of drained items failed: they are dirty again, so the next save
        carries them (the store never misses a change the engine made)."""
        for item in items:
            self._changed.setdefault(item.id, item)

    def drain_side_closes(self) -> list[WorkItem]:
        """Items closed while offered to an agent by something other than that agent's
        leg (R12: the customer got through on an inbound call). The leg must be told."""
        out, self._side_closes = self._side_closes, []
        return out

    def restore(self, items: Iterable[WorkItem]) -> None:
        """Rebuild from the store at start-up. Closed items are ignored. Offers and
        dials in flight died with the old process: OFFERED returns to its waiting state
        and DIALLING to CALLBACK_PENDING, eligible now (the attempt stays counted — the
        customer's phone may have rung). Those repairs are recorded and drained."""
        now = self._clock.now()
        for item in sorted(items, key=lambda i: (i.arrived_at, i.seq)):
            self._seq = max(self._seq, item.seq + 1)
            if not item.is_open:
                continue
            if item.id in self._items:
                raise ValueError(f"work item {item.id} restored twice")
            q = self._queues.get(item.queue)
            if q is None:
                # A queue removed from config: its items cannot be served; keep them
                # visible by recreating the queue with default policy rather than
                # silently dropping confirmed callbacks.
                q = _Queue(QueuePolicy(name=item.queue))
                self._queues[item.queue] = q
            booked = item.state is State.CALLBACK_PENDING and item.arrived_at > now
            if booked:
                self._items[item.id] = item  # scheduled: joins the queue at arrived_at
                heapq.heappush(q.scheduled, (item.arrived_at, item.seq, item.id))
            else:
                self._insert(q, item)
            norm = item.number
            if item.kind is Kind.CALLBACK and norm:
                if (item.queue, norm) in self._callbacks:
                    self._close(q, item, State.CANCELLED)
                    self._record(item, "cancelled", reason="duplicate_on_restore")
                    continue
                self._callbacks[(item.queue, norm)] = item.id
            if item.expires_at is not None:
                heapq.heappush(self._expiry, (item.expires_at, item.seq, item.id))
            if item.state is State.OFFERED:
                agent = item.offered_to or ""
                item.offered_to = None
                item.state = State.WAITING if item.kind is Kind.INBOUND else State.CALLBACK_PENDING
                self._record(item, "offer_lost_on_restart", agent=agent)
            elif item.state is State.DIALLING:
                item.offered_to = None
                item.state = State.CALLBACK_PENDING
                item.next_eligible_at = now
                self._record(item, "dial_lost_on_restart")
            if item.state is State.WAITING:
                q.ready_inbound.add(item.key)
            elif item.state is State.CALLBACK_PENDING and not booked:
                self._enter_pending(q, item, now)

    # ------------------------------------------------------------------ internals

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            raise UnknownQueue(name)
        return q

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq

    def _open_item(self, item_id: str, action: str) -> WorkItem:
        item = self._items.get(item_id)
        if item is not None:
            return item
        closed = self._closed.get(item_id)
        if closed is not None:
            raise InvalidTransition(closed, action, "item is closed")
        raise UnknownItem(item_id)

    def _check_offered_to(self, item: WorkItem, agent_id: str, action: str) -> None:
        if item.state is not State.OFFERED:
            raise InvalidTransition(item, action, "not offered")
        if item.offered_to != agent_id:
            raise InvalidTransition(item, action, f"offered to another agent, not {agent_id}")

    def _check_duplicate(self, queue: str, number: str) -> None:
        existing = self._callbacks.get((queue, number))
        if existing is not None:
            raise DuplicateCallback(self._items[existing])

    def _insert(self, q: _Queue, item: WorkItem, key: Key | None = None) -> None:
        if not q.open:
            q.estimator.queue_became_busy(self._clock.now())
        q.open.add(key or item.key)
        self._items[item.id] = item

    def _enter_pending(self, q: _Queue, item: WorkItem, now: float) -> None:
        """Make a CALLBACK_PENDING item dispatchable now, or park it until eligible."""
        if item.next_eligible_at <= now:
            q.ready_callback.add(item.key)
        else:
            heapq.heappush(q.retry, (item.next_eligible_at, item.seq, item.id))

    def _promote_due(self, q: _Queue, now: float) -> None:
        heap = q.retry
        while heap and heap[0][0] <= now:
            at, _, item_id = heapq.heappop(heap)
            item = self._items.get(item_id)
            # Stale entries (closed, re-parked with another time, offered) are skipped.
            if (
                item is not None
                and item.state is State.CALLBACK_PENDING
                and item.next_eligible_at == at
            ):
                q.ready_callback.add(item.key)

    def _withdraw_offer(self, q: _Queue, item: WorkItem) -> None:
        q.ready_for(item.kind).discard(item.key)

    def _close(self, q: _Queue, item: WorkItem, state: State) -> None:
        q.open.discard(item.key)
        q.ready_for(item.kind).discard(item.key)
        item.state = state
        self._items.pop(item.id, None)
        dedupe_key = (item.queue, item.number or "")
        if item.kind is Kind.CALLBACK and self._callbacks.get(dedupe_key) == item.id:
            del self._callbacks[dedupe_key]
        self._closed[item.id] = item
        if len(self._closed) > RECENTLY_CLOSED:
            self._closed.popitem(last=False)

    def _dequeue_sample(self, q: _Queue, item: WorkItem, now: float) -> None:
        q.estimator.dequeued(now, q.serving)
        if item.predicted_wait is not None and math.isfinite(item.predicted_wait):
            q.estimator.record_error(item.predicted_wait, now - item.arrived_at)

    def _record(self, item: WorkItem, event: str, **detail: str | None) -> None:
        now = self._clock.now()
        item.history.append(
            HistoryEntry(now, event, {k: v for k, v in detail.items() if v is not None})
        )
        item.updated_at = now
        self._changed[item.id] = item
