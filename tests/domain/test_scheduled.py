"""Scheduled callbacks (``add_callback(not_before=...)``): booked now, in the queue from
that time on, FIFO-fair from it (the place of an arrival at that moment)."""

from __future__ import annotations

import pytest

from ivr.domain import DuplicateCallback, QueuePolicy, State
from ivr.domain.queues import QueueEngine
from tests.domain.helpers import make_engine


def test_scheduled_callback_is_outside_the_queue_until_its_time() -> None:
    engine, clock = make_engine()
    t0 = clock.now()
    booked = engine.add_callback("sales", "+12015550123", not_before=t0 + 3600)
    assert booked.state == State.CALLBACK_PENDING and booked.arrived_at == t0 + 3600
    assert engine.items("sales") == [] and engine.waiting_count("sales") == 0
    assert engine.scheduled("sales") == [booked]
    assert engine.dispatch({"a": ["sales"]}) == []
    with pytest.raises(DuplicateCallback):  # R12 holds while it is booked
        engine.add_callback("sales", "+12015550123")


def test_at_its_time_it_joins_behind_everyone_who_came_earlier() -> None:
    engine, clock = make_engine()
    t0 = clock.now()
    booked = engine.add_callback("sales", "+12015550123", not_before=t0 + 600)
    clock.advance(300)
    early = engine.arrive("sales", channel_id="c1", number=None)  # arrived before 600
    clock.advance(301)
    late_cb = engine.add_callback("sales", "+12015550124")  # after the booked time
    offers = engine.dispatch({"a": ["sales"], "b": ["sales"], "c": ["sales"]})
    assert [i.id for _, i in offers] == [early.id, booked.id, late_cb.id]
    assert booked.history[-2].event == "callback_due"
    assert engine.scheduled("sales") == []


def test_cancelled_before_its_time_never_joins() -> None:
    engine, clock = make_engine()
    booked = engine.add_callback("sales", "+12015550123", not_before=clock.now() + 60)
    engine.cancel(booked.id, "customer asked")
    clock.advance(120)
    assert engine.activate_scheduled() == []
    assert engine.items("sales") == [] and engine.get(booked.id).state == State.CANCELLED
    engine.add_callback("sales", "+12015550123")  # the number is free again


def test_not_before_past_the_expiry_window_is_refused() -> None:
    engine, clock = make_engine(QueuePolicy("q", expire_after=3600))
    with pytest.raises(ValueError, match="expire_after"):
        engine.add_callback("q", "+12015550123", not_before=clock.now() + 3601)
    assert engine.scheduled("q") == []


def test_a_booked_callback_survives_a_restart_still_booked() -> None:
    engine, clock = make_engine()
    booked = engine.add_callback("sales", "+12015550123", not_before=clock.now() + 600)
    saved = engine.drain_changes()
    fresh = QueueEngine([QueuePolicy("sales"), QueuePolicy("support")], clock)
    fresh.restore(saved)
    assert fresh.items("sales") == [] and [i.id for i in fresh.scheduled("sales")] == [booked.id]
    clock.advance(600)
    assert [i.id for i in fresh.activate_scheduled()] == [booked.id]
    assert [i.id for i in fresh.items("sales")] == [booked.id]


def test_offer_played_is_noted_once() -> None:
    engine, _ = make_engine()
    item = engine.arrive("sales", channel_id="c1", number="+12015550123")
    engine.note_offer_played(item.id)
    engine.note_offer_played(item.id)
    assert [h.event for h in item.history].count("callback_offered") == 1
