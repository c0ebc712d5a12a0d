"""The notifier seam: typed events in, counters (and any subscriber) out."""

from __future__ import annotations

from ivr.domain import events


def test_counters_follow_events_by_their_counter_name() -> None:
    counters = events.Counters()
    seen: list[events.Event] = []
    n = events.Notifier()
    n.subscribe(counters)
    n.subscribe(seen.append)
    n.publish(events.CallbackCommitted("sales", "i1"))
    n.publish(events.CallbackCommitted("sales", "i2"))
    n.publish(events.TrunkFailed("sales", "i1", agent="ann"))
    n.publish(events.WorkChanged())  # no counter
    assert counters.values == {"callbacks_committed": 2, "trunk_failures": 1}
    assert [type(e).__name__ for e in seen] == [
        "CallbackCommitted", "CallbackCommitted", "TrunkFailed", "WorkChanged"]


def test_a_failing_subscriber_stops_nobody() -> None:
    errors: list[str] = []
    n = events.Notifier(on_error=lambda e, exc: errors.append(f"{type(e).__name__}: {exc}"))
    counters = events.Counters()

    def broken(event: events.Event) -> None:
        raise RuntimeError("boom")

    n.subscribe(broken)
    n.subscribe(counters)
    n.publish(events.CallerArrived("sales", "i1"))
    assert counters.values == {"arrivals": 1}
    assert errors == ["CallerArrived: boom"]


def test_every_counted_event_has_its_own_counter() -> None:
    def subclasses(cls: type[events.Event]) -> list[type[events.Event]]:
        out = []
        for sub in cls.__subclasses__():
            out += [sub, *subclasses(sub)]
        return out

    names = [c.counter for c in subclasses(events.Event) if c.counter]
    assert len(names) == len(set(names))
