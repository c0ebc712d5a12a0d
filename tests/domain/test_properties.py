"""Invariants under any sequence of operations (hypothesis stateful testing).

- Order: every queue lists its open items by original arrival (arrived_at, seq), which
  never changes, whatever conversions, offers, declines, retries and hang-ups happen.
- Dispatch equals a naive reference (earliest eligible per agent, R7 decline rule),
  never offers more than the free agents, never the same item twice at once.
- At most one open callback per (queue, number).
- A refused operation changes nothing; an accepted one follows the transition table.
- A restart (restore from copies) keeps the order.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ivr.domain import (
    OPEN_STATES,
    DuplicateCallback,
    FakeClock,
    InvalidTransition,
    Kind,
    QueueEngine,
    QueuePolicy,
    State,
    UnknownItem,
    WorkItem,
)

QUEUES = ("q0", "q1")
AGENTS: dict[str, tuple[str, ...]] = {
    "a0": ("q0",),
    "a1": ("q1",),
    "a2": ("q0", "q1"),
    "a3": ("q1", "q0"),
}
NUMBERS = ("0201", "0202", "0203", "0204")

S = State
ALLOWED: dict[str, set[tuple[State, State]]] = {
    "convert": {(S.WAITING, S.CALLBACK_PENDING)},
    "abandon": {(S.WAITING, S.ABANDONED), (S.OFFERED, S.ABANDONED)},
    "cancel": {(s, S.CANCELLED) for s in OPEN_STATES},
    "decline": {(S.OFFERED, S.WAITING), (S.OFFERED, S.CALLBACK_PENDING)},
    "timeout": {(S.OFFERED, S.WAITING), (S.OFFERED, S.CALLBACK_PENDING)},
    "connect": {(S.OFFERED, S.CONNECTED)},
    "dial": {(S.OFFERED, S.DIALLING)},
    "answered": {(S.DIALLING, S.DONE)},
    "dial_failed": {(S.DIALLING, S.CALLBACK_PENDING), (S.DIALLING, S.FAILED)},
}


def fields(item: WorkItem) -> dict[str, object]:
    return {f: copy.deepcopy(getattr(item, f)) for f in WorkItem.__slots__}


def state_of(item: WorkItem) -> State:
    """Read the state afresh (mypy narrows item.state across engine calls)."""
    return item.state


def reference_dispatch(
    items: Sequence[WorkItem], free: Mapping[str, Sequence[str]], now: float
) -> list[tuple[str, str]]:
    """The rule in the plainest form, O(agents x items)."""
    taken: set[str] = set()
    result: list[tuple[str, str]] = []
    for agent, queues in free.items():
        best: WorkItem | None = None
        for item in items:
            if item.id in taken or item.queue not in queues:
                continue
            eligible = item.state is S.WAITING or (
                item.state is S.CALLBACK_PENDING and item.next_eligible_at <= now
            )
            if not eligible:
                continue
            if agent in item.declined_by and any(
                b != agent and item.queue in qs and b not in item.declined_by
                for b, qs in free.items()
            ):
                continue
            if best is None or (item.arrived_at, item.seq) < (best.arrived_at, best.seq):
                best = item
        if best is not None:
            taken.add(best.id)
            result.append((agent, best.id))
    return result


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.engine = self._new_engine()
        self.all: dict[str, WorkItem] = {}
        self.keys: dict[str, tuple[float, int]] = {}  # original (arrived_at, seq)
        self.channel = 0
        #: items the engine reported closed behind an agent's back (drain_side_closes)
        self.side_closed: set[str] = set()

    def _new_engine(self) -> QueueEngine:
        policies = [
            QueuePolicy(q, retry_interval=60, max_attempts=2, expire_after=3000) for q in QUEUES
        ]
        return QueueEngine(policies, self.clock)

    def _track(self, item: WorkItem) -> None:
        self.all[item.id] = item
        self.keys[item.id] = (item.arrived_at, item.seq)

    def _pick(self, i: int, open_only: bool) -> WorkItem | None:
        pool = {x.id: x for x in self.engine.open_items()} if open_only else self.all
        if not pool:
            return None
        ids = sorted(pool)
        return pool[ids[i % len(ids)]]

    def _busy_agents(self) -> set[str]:
        return {
            i.offered_to
            for i in self.engine.open_items()
            if i.state in (S.OFFERED, S.DIALLING) and i.offered_to is not None
        }

    # ---------------------------------------------------------------- arrivals

    @initialize(
        callers=st.lists(st.sampled_from(QUEUES), max_size=4),
        callbacks=st.lists(st.tuples(st.sampled_from(QUEUES), st.sampled_from(NUMBERS))),
    )
    def seed(self, callers: list[str], callbacks: list[tuple[str, str]]) -> None:
        for queue in callers:
            self.arrive(queue, None)
        for queue, number in callbacks[:4]:
            self.add_callback(queue, number, None)

    @rule(queue=st.sampled_from(QUEUES), number=st.sampled_from((*NUMBERS, None)))
    def arrive(self, queue: str, number: str | None) -> None:
        self.channel += 1
        self._track(self.engine.arrive(queue, channel_id=f"ch{self.channel}", number=number))

    @rule(
        queue=st.sampled_from(QUEUES),
        number=st.sampled_from(NUMBERS),
        back=st.one_of(st.none(), st.integers(0, 100)),
    )
    def add_callback(self, queue: str, number: str, back: int | None) -> None:
        existing = self.engine.open_callback_for(queue, number)
        at = None if back is None else self.clock.now() - back
        try:
            item = self.engine.add_callback(queue, number, arrived_at=at)
        except DuplicateCallback as exc:
            assert existing is exc.existing
            return
        assert existing is None
        self._track(item)

    @rule(seconds=st.sampled_from((0, 1, 5, 30, 61, 400, 3001)))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    # ---------------------------------------------------------------- dispatch

    @rule(
        agents=st.permutations(sorted(AGENTS)),
        k=st.integers(1, len(AGENTS)),
        hours=st.booleans() | st.just(True),
    )
    def dispatch(self, agents: list[str], k: int, hours: bool) -> None:
        busy = self._busy_agents()
        free = {a: AGENTS[a] for a in agents[:k] if a not in busy}
        callback_queues = None if hours else ("q0",)
        snapshot = [copy.deepcopy(i) for i in self.engine.open_items()]
        if callback_queues is not None:
            # The reference does not know about hours: hide q1's callbacks from it.
            snapshot = [i for i in snapshot if not (i.kind is Kind.CALLBACK and i.queue == "q1")]
        expected = reference_dispatch(snapshot, free, self.clock.now())
        offers = self.engine.dispatch(free, callback_queues=callback_queues)
        assert [(a, i.id) for a, i in offers] == expected
        assert len(offers) <= len(free)
        assert len({i.id for _, i in offers}) == len(offers)
        for agent, item in offers:
            assert item.state is S.OFFERED and item.offered_to == agent

    # ---------------------------------------------------------------- item operations

    @rule(
        op=st.sampled_from(sorted(ALLOWED)),
        i=st.integers(0, 10_000),
        agent=st.sampled_from(sorted(AGENTS)),
        number=st.sampled_from(NUMBERS),
        right_agent=st.booleans(),
        open_only=st.booleans(),
    )
    def operate(
        self, op: str, i: int, agent: str, number: str, right_agent: bool, open_only: bool
    ) -> None:
        item = self._pick(i, open_only)
        if item is None:
            return
        if right_agent and item.offered_to is not None:
            agent = item.offered_to
        e = self.engine
        actions: dict[str, Callable[[], WorkItem]] = {
            "convert": lambda: e.convert_to_callback(item.id, number),
            "abandon": lambda: e.abandon(item.id),
            "cancel": lambda: e.cancel(item.id, "test"),
            "decline": lambda: e.offer_declined(item.id, agent),
            "timeout": lambda: e.offer_timed_out(item.id, agent),
            "connect": lambda: e.connected(item.id, agent),
            "dial": lambda: e.dial_started(item.id, agent),
            "answered": lambda: e.callback_connected(item.id),
            "dial_failed": lambda: e.dial_failed(item.id, "busy"),
        }
        e.drain_changes()
        before = fields(item)
        order_before = {q: [x.id for x in e.items(q)] for q in QUEUES}
        try:
            result = actions[op]()
        except (InvalidTransition, DuplicateCallback, UnknownItem):
            assert fields(item) == before
            assert {q: [x.id for x in e.items(q)] for q in QUEUES} == order_before
            assert e.drain_changes() == []
            return
        assert result is item
        assert (before["state"], item.state) in ALLOWED[op], (op, before["state"], item.state)
        assert len(item.history) == len(before["history"]) + 1  # type: ignore[arg-type]
        assert item in e.drain_changes()

    @rule(i=st.integers(0, 10_000), timeout=st.booleans())
    def decline_an_offer(self, i: int, timeout: bool) -> None:
        offered = sorted(
            (x for x in self.engine.open_items() if x.state is S.OFFERED), key=lambda x: x.id
        )
        if not offered:
            return
        item = offered[i % len(offered)]
        agent = item.offered_to or ""
        if timeout:
            self.engine.offer_timed_out(item.id, agent)
        else:
            self.engine.offer_declined(item.id, agent)
        assert agent in item.declined_by
        assert item.state in (S.WAITING, S.CALLBACK_PENDING) and item.offered_to is None

    @rule(outcomes=st.lists(st.booleans(), min_size=1, max_size=4))
    def agents_progress(self, outcomes: list[bool]) -> None:
        """Drive offered/dialling work forward the way flows would (makes dials, retries
        and connects common enough for the invariants to see them)."""
        active = sorted(
            (x for x in self.engine.open_items() if x.state in (S.OFFERED, S.DIALLING)),
            key=lambda x: x.seq,
        )
        for item, succeed in zip(active, outcomes, strict=False):
            if item.state not in (S.OFFERED, S.DIALLING):
                # Closed by an earlier step of this rule (R12: the same number got
                # through inbound). The engine must have said so, for the leg's sake.
                assert item.id in self.side_closed, f"{item.id} closed silently"
                continue
            self._progress(item, succeed)
            self.side_closed.update(i.id for i in self.engine.drain_side_closes())

    def _progress(self, item: WorkItem, succeed: bool) -> None:
        agent = item.offered_to or ""
        position = self.engine.position(item.id)
        if item.state is S.OFFERED and item.kind is Kind.INBOUND:
            self.engine.connected(item.id, agent)
            assert state_of(item) is S.CONNECTED
        elif item.state is S.OFFERED:
            attempts = item.attempts
            self.engine.dial_started(item.id, agent)
            assert item.attempts == attempts + 1
            assert self.engine.position(item.id) == position
        elif succeed:
            self.engine.callback_connected(item.id)
            assert state_of(item) is S.DONE
        else:
            self.engine.dial_failed(item.id, "noanswer")
            if item.is_open:
                assert item.next_eligible_at == self.clock.now() + 60
                assert self.engine.position(item.id) == position
            else:
                assert item.state is S.FAILED and item.attempts >= 2

    @rule()
    def expire(self) -> None:
        for item in self.engine.expire_due():
            assert item.state is S.EXPIRED and item.kind is Kind.CALLBACK

    @rule()
    def restart(self) -> None:
        saved = [copy.deepcopy(i) for i in self.engine.open_items()]
        order = {q: [x.id for x in self.engine.items(q)] for q in QUEUES}
        self.engine = self._new_engine()
        self.engine.restore(saved)
        assert {q: [x.id for x in self.engine.items(q)] for q in QUEUES} == order
        self.all = {**self.all, **{i.id: i for i in self.engine.open_items()}}

    # ---------------------------------------------------------------- invariants

    @invariant()
    def ordered_by_original_arrival(self) -> None:
        for q in QUEUES:
            listed = self.engine.items(q)
            keys = [self.keys[i.id] for i in listed]
            assert keys == sorted(keys)
            assert all((i.arrived_at, i.seq) == self.keys[i.id] for i in listed)
            expected = sorted(
                (i for i in self.engine.open_items() if i.queue == q and i.state in OPEN_STATES),
                key=lambda i: self.keys[i.id],
            )
            assert [i.id for i in listed] == [i.id for i in expected]
            for n, item in enumerate(listed, 1):
                assert self.engine.position(item.id) == n
            assert self.engine.waiting_count(q) == len(listed)

    @invariant()
    def open_items_are_open(self) -> None:
        for item in self.all.values():
            if item.id in {i.id for i in self.engine.open_items()}:
                assert item.is_open

    @invariant()
    def one_offer_per_agent_and_item(self) -> None:
        holders = [
            i.offered_to for i in self.engine.open_items() if i.state in (S.OFFERED, S.DIALLING)
        ]
        assert None not in holders
        assert len(holders) == len(set(holders))

    @invariant()
    def one_open_callback_per_number(self) -> None:
        seen: set[tuple[str, str | None]] = set()
        for item in self.engine.open_items():
            if item.kind is Kind.CALLBACK:
                key = (item.queue, item.number)
                assert key not in seen
                seen.add(key)
                assert self.engine.open_callback_for(item.queue, item.number or "") is item


QueueMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("IVR_HYPOTHESIS_EXAMPLES", "400")),
    stateful_step_count=50,
    deadline=None,
)
TestQueueMachine = QueueMachine.TestCase
