"""Queue engine rules, one test per rule, with a fake clock."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest

from ivr.domain import (
    DuplicateCallback,
    InvalidTransition,
    Kind,
    QueuePolicy,
    State,
    UnknownItem,
    UnknownQueue,
    WorkItem,
)
from ivr.domain.order_index import OrderIndex
from ivr.domain.queues import QueueEngine
from tests.domain.helpers import make_engine


def ids(items: list[WorkItem]) -> list[str]:
    return [i.id for i in items]


def snapshot(item: WorkItem) -> dict[str, object]:
    return {f: copy.deepcopy(getattr(item, f)) for f in WorkItem.__slots__}


# ---------------------------------------------------------------- R1 order


def test_queue_is_fifo_by_arrival() -> None:
    engine, clock = make_engine()
    a = engine.arrive("sales", channel_id="c1", number="0201")
    clock.advance(1)
    b = engine.arrive("sales", channel_id="c2", number="0202")
    clock.advance(1)
    c = engine.arrive("sales", channel_id="c3", number=None)
    assert ids(engine.items("sales")) == [a.id, b.id, c.id]
    assert [engine.position(x.id) for x in (a, b, c)] == [1, 2, 3]
    assert a.state is State.WAITING and a.kind is Kind.INBOUND
    assert a.history[0].event == "arrived"


def test_equal_arrival_times_ordered_by_seq() -> None:
    engine, _ = make_engine()
    items = [engine.arrive("sales", channel_id=f"c{i}", number=None) for i in range(5)]
    assert ids(engine.items("sales")) == ids(items)
    assert [i.seq for i in items] == sorted(i.seq for i in items)


def test_queues_are_independent() -> None:
    engine, _ = make_engine()
    a = engine.arrive("sales", channel_id="c1", number=None)
    b = engine.arrive("support", channel_id="c2", number=None)
    assert engine.position(a.id) == 1
    assert engine.position(b.id) == 1
    assert engine.waiting_count("sales") == 1


def test_unknown_queue_and_item() -> None:
    engine, _ = make_engine()
    with pytest.raises(UnknownQueue):
        engine.arrive("nope", channel_id="c", number=None)
    with pytest.raises(UnknownItem):
        engine.get("missing")
    with pytest.raises(UnknownItem):
        engine.abandon("missing")


# ---------------------------------------------------------------- R6 keep the place


def test_convert_keeps_everyones_position() -> None:
    engine, clock = make_engine()
    callers = []
    for i in range(6):
        callers.append(engine.arrive("sales", channel_id=f"c{i}", number=f"0207946000{i}"))
        clock.advance(3)
    before = {c.id: engine.position(c.id) for c in callers}
    arrived = {c.id: c.arrived_at for c in callers}
    for c in (callers[2], callers[4], callers[0]):
        clock.advance(10)
        converted = engine.convert_to_callback(c.id, c.number or "")
        assert converted is c
        assert c.state is State.CALLBACK_PENDING
        assert c.kind is Kind.CALLBACK
        assert c.channel_id is None
        assert {x.id: engine.position(x.id) for x in callers} == before
    assert {c.id: c.arrived_at for c in callers} == arrived
    assert ids(engine.items("sales")) == ids(callers)


def test_convert_keeps_the_parsed_number_as_given() -> None:
    """Numbers reach the engine parsed once (E.164, ivr.domain.numbers): the engine
    keys dedupe on them and never re-interprets them."""
    engine, _ = make_engine()
    a = engine.arrive("sales", channel_id="c1", number=None)
    engine.convert_to_callback(a.id, "+442079460001")
    assert a.number == "+442079460001"
    assert engine.open_callback_for("sales", "+442079460001") is a


@pytest.mark.parametrize("bad", ["", "  ", " +12015550123"])
def test_convert_rejects_non_number(bad: str) -> None:
    engine, _ = make_engine()
    a = engine.arrive("sales", channel_id="c1", number=None)
    before = snapshot(a)
    with pytest.raises(ValueError):
        engine.convert_to_callback(a.id, bad)
    assert snapshot(a) == before


def test_undo_convert_restores_the_waiting_caller_at_its_place() -> None:
    """R20: a press 1 the store refused leaves no callback behind, only the caller."""
    engine, clock = make_engine()
    first = engine.arrive("sales", channel_id="c0", number="+12015550100")
    a = engine.arrive("sales", channel_id="c1", number="+12015550101")
    last = engine.arrive("sales", channel_id="c2", number=None)
    engine.drain_changes()
    engine.convert_to_callback(a.id, "+12015550199")
    engine.undo_convert(a.id, "c1", "+12015550101")
    assert (a.kind, a.state, a.channel_id, a.number) == (
        Kind.INBOUND, State.WAITING, "c1", "+12015550101")
    assert engine.open_callback_for("sales", "+12015550199") is None
    assert ids(engine.items("sales")) == ids([first, a, last])
    assert a.history[-1].event == "callback_not_stored"
    # It is a live caller again in every index: dispatch reaches it in order, and it
    # never expires as a callback.
    offers = engine.dispatch({"ann": ["sales"], "bob": ["sales"]})
    assert [i.id for _, i in offers] == [first.id, a.id]
    clock.advance(30 * 86400)
    assert engine.expire_due() == []
    # And it may still press 1 later.
    engine.offer_declined(a.id, "bob")
    engine.convert_to_callback(a.id, "+12015550101")
    assert a.state is State.CALLBACK_PENDING


def test_uncounted_dial_failure_gives_the_attempt_back() -> None:
    """A trunk that never answered is not the customer's failed attempt (R10)."""
    engine, clock = make_engine()
    cb = engine.add_callback("sales", "+12015550123")
    for _ in range(5):  # more than max_attempts
        (_, item), = engine.dispatch({"ann": ["sales"]})
        engine.dial_started(item.id, "ann")
        engine.dial_failed(item.id, "trunk_failure", counted=False)
        assert cb.attempts == 0 and cb.state is State.CALLBACK_PENDING
        assert engine.dispatch({"ann": ["sales"]}) == []  # waits out retry_interval
        clock.advance(engine.policy("sales").retry_interval)
    assert cb.history[-1].detail["reason"] == "trunk_failure"


def test_inbound_connect_reports_the_offered_callback_it_cancels() -> None:
    """R12 closes an OFFERED callback for the same number behind its agent's back: the
    engine says so (drain_side_closes) so the leg holding it can be told."""
    engine, _ = make_engine()
    cb = engine.add_callback("sales", "+12015550123")
    (_, offered), = engine.dispatch({"ann": ["sales"]})
    assert offered is cb
    live = engine.arrive("sales", channel_id="c1", number="+12015550123")
    (_, got), = engine.dispatch({"bob": ["sales"]})
    assert got is live
    engine.connected(live.id, "bob")
    assert cb.state is State.CANCELLED
    assert engine.drain_side_closes() == [cb]
    assert engine.drain_side_closes() == []


# ---------------------------------------------------------------- R12 dedupe


def test_dedupe_one_open_callback_per_queue_and_number() -> None:
    engine, _ = make_engine()
    first = engine.add_callback("sales", "0201")
    with pytest.raises(DuplicateCallback) as err:
        engine.add_callback("sales", "0201")
    assert err.value.existing is first
    # another queue is another callback
    engine.add_callback("support", "0201")
    live = engine.arrive("sales", channel_id="c", number="0201")
    before = snapshot(live)
    with pytest.raises(DuplicateCallback):
        engine.convert_to_callback(live.id, "0201")
    assert snapshot(live) == before
    assert engine.waiting_count("sales") == 2


def test_dedupe_frees_after_close() -> None:
    engine, _ = make_engine()
    first = engine.add_callback("sales", "0201")
    engine.cancel(first.id)
    second = engine.add_callback("sales", "0201")
    assert engine.open_callback_for("sales", "0201") is second


def test_inbound_connect_closes_pending_callback_for_same_number() -> None:
    engine, clock = make_engine()
    cb = engine.add_callback("sales", "0201")
    clock.advance(5)
    live = engine.arrive("sales", channel_id="c", number="0201")
    # An agent who must not take the callback: it declined it and nobody else is free.
    # Simplest: offer the live caller explicitly by cancelling the callback's eligibility.
    offers = engine.dispatch({"a1": ["sales"]})
    assert offers[0][1] is cb  # callback is earlier
    engine.offer_declined(cb.id, "a1")
    offers = engine.dispatch({"a1": ["sales"], "a2": ["sales"]})
    assert dict((a, i.id) for a, i in offers) == {"a1": live.id, "a2": cb.id}
    engine.connected(live.id, "a1")
    assert live.state is State.CONNECTED
    assert cb.state is State.CANCELLED
    assert cb.history[-1].detail == {"reason": "served_inbound", "by": live.id}
    assert engine.open_callback_for("sales", "0201") is None
    assert engine.waiting_count("sales") == 0


def test_inbound_connect_leaves_dialling_callback_alone() -> None:
    engine, _ = make_engine()
    cb = engine.add_callback("sales", "0201")
    engine.dispatch({"a1": ["sales"]})
    engine.dial_started(cb.id, "a1")
    live = engine.arrive("sales", channel_id="c", number="0201")
    engine.dispatch({"a2": ["sales"]})
    engine.connected(live.id, "a2")
    assert cb.state is State.DIALLING


# ---------------------------------------------------------------- R2 overflow


def test_overflow_by_count() -> None:
    engine, _ = make_engine(QueuePolicy("q", max_waiting=2))
    engine.arrive("q", channel_id="c1", number=None)
    engine.arrive("q", channel_id="c2", number=None)
    assert not engine.in_overflow("q")
    engine.add_callback("q", "0201")  # callbacks count as waiting items
    assert engine.in_overflow("q")


def test_overflow_by_ewt() -> None:
    # Prior: 60 s per agent per dequeue, 1 agent -> EWT(p) = 60 p.
    engine, _ = make_engine(QueuePolicy("q", max_ewt=150, initial_dequeue_interval=60))
    engine.arrive("q", channel_id="c1", number=None)
    engine.arrive("q", channel_id="c2", number=None)
    assert engine.ewt("q", 2) == 120
    assert not engine.in_overflow("q")
    engine.arrive("q", channel_id="c3", number=None)  # last position EWT 180 > 150
    assert engine.in_overflow("q")
    engine.set_serving_agents("q", 2)  # 90 s
    assert not engine.in_overflow("q")
    engine.set_serving_agents("q", 0)  # nobody serves: the wait is unbounded
    assert engine.ewt("q") == math.inf
    assert engine.in_overflow("q")


def test_overflow_either_condition_and_none_set() -> None:
    engine, _ = make_engine(
        QueuePolicy("both", max_waiting=5, max_ewt=100, initial_dequeue_interval=60),
        QueuePolicy("neither"),
    )
    engine.arrive("both", channel_id="c1", number=None)
    engine.arrive("both", channel_id="c2", number=None)  # EWT 120 > 100, count 2 <= 5
    assert engine.in_overflow("both")
    for i in range(200):
        engine.arrive("neither", channel_id=f"n{i}", number=None)
    assert not engine.in_overflow("neither")


def test_empty_queue_not_in_overflow() -> None:
    engine, _ = make_engine(QueuePolicy("q", max_waiting=1, max_ewt=30))
    assert not engine.in_overflow("q")


def test_policy_validation_names_the_key() -> None:
    with pytest.raises(ValueError, match="max_waiting"):
        QueuePolicy("q", max_waiting=0)
    with pytest.raises(ValueError, match="max_waiting"):
        QueuePolicy("q", max_waiting=101)
    with pytest.raises(ValueError, match="max_ewt"):
        QueuePolicy("q", max_ewt=29)
    with pytest.raises(ValueError, match="max_ewt"):
        QueuePolicy("q", max_ewt=3601)
    with pytest.raises(ValueError, match="max_attempts"):
        QueuePolicy("q", max_attempts=0)
    with pytest.raises(ValueError, match="ewt_alpha"):
        QueuePolicy("q", ewt_alpha=0)
    QueuePolicy("q", max_waiting=1, max_ewt=30)
    QueuePolicy("q", max_waiting=100, max_ewt=3600)
    with pytest.raises(ValueError, match="twice"):
        QueueEngine([QueuePolicy("q"), QueuePolicy("q")], make_engine()[1])


# ---------------------------------------------------------------- R16 EWT


def test_ewt_ema_of_dequeue_intervals_per_agent() -> None:
    engine, clock = make_engine(QueuePolicy("q", ewt_alpha=0.5, initial_dequeue_interval=60))
    items = [engine.arrive("q", channel_id=f"c{i}", number=None) for i in range(5)]
    assert engine.ewt("q") == 6 * 60  # prior, new arrival at position 6
    clock.advance(20)
    engine.dispatch({"a": ["q"]})
    engine.connected(items[0].id, "a")
    # first sample replaces the prior: 20 s since the queue became busy
    assert engine.per_agent_dequeue_interval("q") == 20
    engine.set_serving_agents("q", 2)
    clock.advance(30)
    engine.dispatch({"a": ["q"]})
    engine.connected(items[1].id, "a")
    # sample 30 s x 2 agents = 60; EMA 0.5: 20 + 0.5 * (60 - 20) = 40
    assert engine.per_agent_dequeue_interval("q") == 40
    assert engine.ewt("q", 3) == 3 * 40 / 2
    assert engine.ewt("q") == engine.ewt("q", 4)


def test_ewt_ignores_idle_time() -> None:
    engine, clock = make_engine(QueuePolicy("q", initial_dequeue_interval=60))
    a = engine.arrive("q", channel_id="c1", number=None)
    clock.advance(10)
    engine.dispatch({"a": ["q"]})
    engine.connected(a.id, "a")
    clock.advance(3600)  # empty queue for an hour
    b = engine.arrive("q", channel_id="c2", number=None)
    clock.advance(12)
    engine.dispatch({"a": ["q"]})
    engine.connected(b.id, "a")
    assert engine.per_agent_dequeue_interval("q") == pytest.approx(10 + 0.25 * (12 - 10))


def test_ewt_errors_predicted_vs_actual() -> None:
    engine, clock = make_engine(QueuePolicy("q", initial_dequeue_interval=60))
    a = engine.arrive("q", channel_id="c1", number=None)
    b = engine.arrive("q", channel_id="c2", number=None)
    assert a.predicted_wait == 60 and b.predicted_wait == 120
    clock.advance(45)
    engine.dispatch({"x": ["q"]})
    engine.connected(a.id, "x")
    engine.convert_to_callback(b.id, "0201")
    engine.dispatch({"x": ["q"]})
    engine.dial_started(b.id, "x")
    clock.advance(15)
    engine.callback_connected(b.id)
    assert engine.ewt_errors("q") == [(60, 45), (120, 60)]


# ---------------------------------------------------------------- R7 / R11 dispatch


def test_dispatch_one_offer_per_free_agent_in_order() -> None:
    engine, clock = make_engine()
    items = []
    for i in range(3):
        items.append(engine.arrive("sales", channel_id=f"c{i}", number=None))
        clock.advance(1)
    offers = engine.dispatch({"longest_idle": ["sales"], "second": ["sales"]})
    assert [(a, i.id) for a, i in offers] == [
        ("longest_idle", items[0].id),
        ("second", items[1].id),
    ]
    assert items[0].state is State.OFFERED and items[0].offered_to == "longest_idle"
    assert engine.dispatch({"third": ["sales"], "fourth": ["sales"]}) == [("third", items[2])]
    assert engine.dispatch({"fifth": ["sales"]}) == []
    # offered items keep their positions
    assert [engine.position(i.id) for i in items] == [1, 2, 3]


def test_dispatch_picks_earliest_across_served_queues() -> None:
    engine, clock = make_engine()
    s = engine.arrive("support", channel_id="c1", number=None)
    clock.advance(1)
    engine.arrive("sales", channel_id="c2", number=None)
    offers = engine.dispatch({"a": ["sales", "support"]})
    assert offers == [("a", s)]


def test_dispatch_only_served_queues_and_unknown_queues_ignored() -> None:
    engine, _ = make_engine()
    engine.arrive("support", channel_id="c1", number=None)
    assert engine.dispatch({"a": ["sales", "ghost"]}) == []


def test_decliner_not_reoffered_while_another_agent_could_take_it() -> None:
    engine, clock = make_engine()
    cb = engine.add_callback("sales", "0201")
    clock.advance(1)
    later = engine.arrive("sales", channel_id="c", number=None)
    assert engine.dispatch({"a": ["sales"]}) == [("a", cb)]
    declined = engine.offer_declined(cb.id, "a")
    assert declined.state is State.CALLBACK_PENDING and declined.attempts == 0
    assert engine.position(cb.id) == 1
    # a and b free: a must not get cb again; b gets it, a gets the later caller
    offers = engine.dispatch({"a": ["sales"], "b": ["sales"]})
    assert dict((ag, i.id) for ag, i in offers) == {"a": later.id, "b": cb.id}


def test_decliner_gets_item_again_when_nobody_else_can() -> None:
    engine, _ = make_engine()
    cb = engine.add_callback("sales", "0201")
    engine.dispatch({"a": ["sales"]})
    engine.offer_timed_out(cb.id, "a")
    assert cb.history[-1].event == "offer_timed_out"
    # b serves another queue only: cannot take it
    assert engine.dispatch({"a": ["sales"], "b": ["support"]}) == [("a", cb)]


def test_decliner_waits_while_an_agent_on_duty_could_take_it() -> None:
    """R7: b is busy (standby), not free; a declined: a is not asked again meanwhile."""
    engine, _ = make_engine()
    cb = engine.add_callback("sales", "0201")
    engine.dispatch({"a": ["sales"]})
    engine.offer_declined(cb.id, "a")
    assert engine.dispatch({"a": ["sales"]}, standby={"b": ["sales"]}) == []
    assert engine.position(cb.id) == 1
    # b declined it too: nobody else could take it, so a gets it again.
    assert engine.dispatch({"b": ["sales"]}) == [("b", cb)]
    engine.offer_declined(cb.id, "b")
    assert engine.dispatch({"a": ["sales"]}, standby={"b": ["sales"]}) == [("a", cb)]


def test_skipped_items_keep_their_place_and_the_next_is_offered() -> None:
    engine, clock = make_engine()
    first = engine.arrive("sales", channel_id="c1", number=None)
    clock.advance(1)
    second = engine.arrive("sales", channel_id="c2", number=None)
    assert engine.dispatch({"a": ["sales"]}, skip={first.id}) == [("a", second)]
    assert engine.position(first.id) == 1 and first.state is State.WAITING
    assert engine.dispatch({"b": ["sales"]}) == [("b", first)]


def test_dispatch_holds_callbacks_outside_hours_but_not_live_callers() -> None:
    engine, clock = make_engine()
    cb = engine.add_callback("sales", "0201")
    clock.advance(1)
    live = engine.arrive("sales", channel_id="c", number=None)
    offers = engine.dispatch({"a": ["sales"], "b": ["sales"]}, callback_queues=())
    assert offers == [("a", live)]
    assert cb.state is State.CALLBACK_PENDING


# ---------------------------------------------------------------- R10 retries


def test_retry_not_eligible_is_skipped_but_keeps_its_place() -> None:
    engine, clock = make_engine()
    cb = engine.add_callback("sales", "0201")
    clock.advance(1)
    live = engine.arrive("sales", channel_id="c", number=None)
    engine.dispatch({"a": ["sales"]})
    engine.dial_started(cb.id, "a")
    assert cb.attempts == 1 and cb.state is State.DIALLING
    assert engine.position(cb.id) == 1
    clock.advance(30)
    engine.dial_failed(cb.id, "busy")
    assert engine.get(cb.id).state is State.CALLBACK_PENDING
    assert cb.next_eligible_at == clock.now() + 600
    assert engine.position(cb.id) == 1 and engine.position(live.id) == 2
    assert engine.dispatch({"a": ["sales"], "b": ["sales"]}) == [("a", live)]
    engine.offer_declined(live.id, "a")
    clock.advance(599)
    assert engine.dispatch({"c": ["sales"]}) == [("c", live)]
    engine.offer_declined(live.id, "c")
    clock.advance(1)
    assert engine.dispatch({"c": ["sales"]}) == [("c", cb)]


def test_retries_up_to_max_attempts_then_failed() -> None:
    engine, clock = make_engine()
    cb = engine.add_callback("sales", "0201")
    for attempt in (1, 2):
        assert engine.dispatch({"a": ["sales"]}) == [("a", cb)]
        engine.dial_started(cb.id, "a")
        engine.dial_failed(cb.id, "noanswer")
        assert cb.attempts == attempt and cb.state is State.CALLBACK_PENDING
        clock.advance(600)
    engine.dispatch({"a": ["sales"]})
    engine.dial_started(cb.id, "a")
    engine.dial_failed(cb.id, "failed")
    assert cb.state is State.FAILED and cb.attempts == 3
    assert engine.waiting_count("sales") == 0
    assert engine.open_callback_for("sales", "0201") is None
    assert engine.dispatch({"a": ["sales"]}) == []


def test_decline_is_not_an_attempt() -> None:
    engine, _ = make_engine()
    cb = engine.add_callback("sales", "0201")
    for agent in ("a", "b", "c", "d"):
        engine.dispatch({agent: ["sales"]})
        engine.offer_declined(cb.id, agent)
    assert cb.attempts == 0 and cb.state is State.CALLBACK_PENDING
    assert cb.declined_by == {"a", "b", "c", "d"}


def test_callback_connected_is_done() -> None:
    engine, _ = make_engine()
    cb = engine.add_callback("sales", "0201")
    engine.dispatch({"a": ["sales"]})
    engine.dial_started(cb.id, "a")
    engine.callback_connected(cb.id)
    assert cb.state is State.DONE
    assert engine.waiting_count("sales") == 0
    assert [h.event for h in cb.history] == [
        "callback_requested",
        "offered",
        "dial_started",
        "callback_connected",
    ]


# ---------------------------------------------------------------- R14 expiry


def test_expiry() -> None:
    engine, clock = make_engine(QueuePolicy("q", expire_after=3600))
    old = engine.add_callback("q", "0201")
    clock.advance(1800)
    newer = engine.add_callback("q", "0202")
    live = engine.arrive("q", channel_id="c", number=None)
    clock.advance(1799)
    assert engine.expire_due() == []
    clock.advance(1)
    assert engine.expire_due() == [old]
    assert old.state is State.EXPIRED
    clock.advance(3600)
    assert engine.expire_due() == [newer]
    assert live.state is State.WAITING  # live callers do not expire


def test_expiry_waits_for_an_offer_in_flight() -> None:
    engine, clock = make_engine(QueuePolicy("q", expire_after=60))
    cb = engine.add_callback("q", "0201")
    engine.dispatch({"a": ["q"]})
    clock.advance(61)
    assert engine.expire_due() == []
    engine.offer_declined(cb.id, "a")
    assert engine.expire_due() == [cb]


def test_add_callback_in_the_past_takes_its_place() -> None:
    engine, clock = make_engine()
    a = engine.arrive("sales", channel_id="c1", number=None)
    clock.advance(10)
    b = engine.arrive("sales", channel_id="c2", number=None)
    clock.advance(10)
    cb = engine.add_callback("sales", "0201", arrived_at=a.arrived_at + 5)
    assert ids(engine.items("sales")) == [a.id, cb.id, b.id]
    with pytest.raises(ValueError):
        engine.add_callback("sales", "0202", arrived_at=clock.now() + 1)


# ---------------------------------------------------------------- transitions


def test_invalid_transitions_change_nothing() -> None:
    engine, _ = make_engine()
    live = engine.arrive("sales", channel_id="c1", number="0201")
    cb = engine.add_callback("sales", "0202")
    engine.abandon(live.id)
    cases: list[tuple[Callable[[], object], WorkItem]] = [
        (lambda: engine.convert_to_callback(live.id, "0201"), live),
        (lambda: engine.abandon(live.id), live),
        (lambda: engine.cancel(live.id), live),
        (lambda: engine.abandon(cb.id), cb),
        (lambda: engine.connected(cb.id, "a"), cb),
        (lambda: engine.dial_started(cb.id, "a"), cb),  # not offered
        (lambda: engine.callback_connected(cb.id), cb),
        (lambda: engine.dial_failed(cb.id, "busy"), cb),
        (lambda: engine.offer_declined(cb.id, "a"), cb),
    ]
    for action, item in cases:
        before = snapshot(item)
        with pytest.raises(InvalidTransition):
            action()
        assert snapshot(item) == before
    engine.dispatch({"a": ["sales"]})
    before = snapshot(cb)
    for action in (
        lambda: engine.dial_started(cb.id, "b"),  # offered to a, not b
        lambda: engine.offer_declined(cb.id, "b"),
        lambda: engine.callback_connected(cb.id),
    ):
        with pytest.raises(InvalidTransition):
            action()
        assert snapshot(cb) == before
    with pytest.raises(InvalidTransition):
        engine.position(live.id)


def test_convert_refused_while_offered() -> None:
    engine, _ = make_engine()
    live = engine.arrive("sales", channel_id="c1", number="0201")
    engine.dispatch({"a": ["sales"]})
    with pytest.raises(InvalidTransition):
        engine.convert_to_callback(live.id, "0201")
    assert live.state is State.OFFERED


def test_abandon_while_offered_and_cancel_pending() -> None:
    engine, _ = make_engine()
    live = engine.arrive("sales", channel_id="c1", number=None)
    cb = engine.add_callback("sales", "0201")
    engine.dispatch({"a": ["sales"]})
    engine.abandon(live.id)
    assert live.state is State.ABANDONED
    engine.cancel(cb.id, "supervisor")
    assert cb.state is State.CANCELLED
    assert cb.history[-1].detail == {"reason": "supervisor"}
    assert engine.waiting_count("sales") == 0
    assert engine.get(cb.id) is cb  # recently closed items stay readable


def test_every_mutation_appends_history_and_is_drained() -> None:
    engine, clock = make_engine()
    a = engine.arrive("sales", channel_id="c1", number=None)
    b = engine.arrive("sales", channel_id="c2", number=None)
    assert engine.drain_changes() == [a, b]
    assert engine.drain_changes() == []
    clock.advance(5)
    engine.convert_to_callback(b.id, "0201")
    assert engine.drain_changes() == [b]
    assert b.history[-1].at == clock.now() and b.updated_at == clock.now()
    assert engine.position(a.id) == 1


# ---------------------------------------------------------------- restore


def test_restore_rebuilds_order_dedupe_and_repairs_in_flight_work() -> None:
    engine, clock = make_engine()
    live = engine.arrive("sales", channel_id="c1", number=None)
    clock.advance(1)
    cb = engine.add_callback("sales", "0201")
    clock.advance(1)
    cb2 = engine.add_callback("sales", "0202")
    clock.advance(1)
    offered = engine.arrive("sales", channel_id="c2", number=None)
    engine.dispatch({"a": ["sales"], "b": ["sales"], "c": ["sales"]})
    engine.dial_started(cb.id, "b")
    engine.offer_declined(live.id, "a")
    engine.dispatch({"d": ["sales"]})  # d gets `live` again, `offered` still waiting
    saved = [copy.deepcopy(i) for i in engine.items("sales")]

    fresh, fresh_clock = make_engine()
    fresh_clock.set(clock.now() + 30)  # restarted a little later
    fresh.restore(reversed(saved))
    items = fresh.items("sales")
    assert ids(items) == [live.id, cb.id, cb2.id, offered.id]
    states = {i.id: i.state for i in items}
    assert states[live.id] is State.WAITING
    assert states[cb.id] is State.CALLBACK_PENDING
    assert states[cb2.id] is State.CALLBACK_PENDING
    assert all(i.offered_to is None for i in items)
    assert items[1].attempts == 1
    with pytest.raises(DuplicateCallback):
        fresh.add_callback("sales", "0201")
    assert {i.id for i in fresh.drain_changes()} == {live.id, cb.id, cb2.id}
    new = fresh.arrive("sales", channel_id="c9", number=None)
    assert new.seq > max(i.seq for i in saved)
    assert fresh.position(new.id) == 5
    offers = fresh.dispatch({"x": ["sales"]})
    assert offers[0][1].id == live.id


# ---------------------------------------------------------------- the index


def test_order_index_matches_a_sorted_list() -> None:
    import random

    rng = random.Random(7)
    index = OrderIndex()
    model: list[tuple[float, int, str]] = []
    for step in range(20_000):
        if model and rng.random() < 0.45:
            key = model.pop(rng.randrange(len(model)) if rng.random() < 0.5 else 0)
            assert index.discard(key)
            assert not index.discard(key)
        else:
            key = (float(rng.randrange(5000)), step, "x")
            assert index.add(key)
            assert not index.add(key)
            model.append(key)
            model.sort()
        if step % 97 == 0:
            assert list(index) == model
            for probe in model[:: max(1, len(model) // 20)]:
                assert index.rank(probe) == model.index(probe)
                assert probe in index
    assert len(index) == len(model)
    assert index.first() == (model[0] if model else None)


def test_set_policy_applies_new_limits_and_adds_queues() -> None:
    engine, _ = make_engine(QueuePolicy("q", max_waiting=5))
    for i in range(3):
        engine.arrive("q", channel_id=f"c{i}", number=None)
    assert not engine.in_overflow("q")
    engine.set_policy(QueuePolicy("q", max_waiting=2))
    assert engine.in_overflow("q")
    engine.set_policy(QueuePolicy("new"))
    assert "new" in engine.queue_names()
    with pytest.raises(ValueError):
        engine.set_serving_agents("q", -1)
