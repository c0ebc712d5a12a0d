"""Prometheus metrics (SPEC R19), with ``prometheus-client`` and a registry per app (two
services in one process — the tests — never share counters).

A subscriber of the flows' notifier: every typed event moves ``ivr_events_total{event,
queue}`` (the event names its counter), and the timed ones feed histograms. Gauges
(queue depth, EWT, longest wait, agents per status, ARI reconnects) are read from the
domain at scrape time by a collector. Labels are queue names and fixed words: never a
phone number or a work item id.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ivr.domain import events
from ivr.domain.agents import AgentBoard, AgentStatus
from ivr.domain.queues import QueueError
from ivr.flows.context import FlowContext

# No ``*_created`` series: they double the output and nobody here graphs them.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: time from arrival to an agent: seconds to days (callbacks can wait overnight)
WAIT_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400)
#: fast steps measured in the app: milliseconds to seconds
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
EWT_ERROR_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)


def _counted_events() -> list[str]:
    seen: set[str] = set()
    todo: list[type[events.Event]] = [events.Event]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.counter:
            seen.add(cls.counter)
    return sorted(seen)


class Metrics:
    def __init__(self, ctx: FlowContext, board: AgentBoard) -> None:
        self.ctx = ctx
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter("ivr_events", "Flow events (offers, requests, commits, "
                              "accepts, dials, connects, failures, expiries, abandons, ...)",
                              ["event", "queue"], registry=r)
        self.wait = Histogram("ivr_wait_seconds", "Arrival to agent: a live caller bridged, "
                              "or a callback's customer connected", ["queue", "kind"],
                              buckets=WAIT_BUCKETS, registry=r)
        self.dtmf_to_confirmation = Histogram(
            "ivr_dtmf_to_confirmation_seconds", "Press 1 received to the confirmation's "
            "play request (the commit to disk is inside)", ["queue"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.accept_to_dial = Histogram(
            "ivr_accept_to_dial_seconds", "Agent accept to the customer's originate request",
            ["queue"], buckets=LATENCY_BUCKETS, registry=r)
        self.ewt_error = Histogram(
            "ivr_ewt_error_seconds", "|EWT predicted at arrival - actual wait| per item served",
            ["queue"], buckets=EWT_ERROR_BUCKETS, registry=r)
        self.commit = Histogram("ivr_store_commit_seconds", "One durable store commit",
                                buckets=LATENCY_BUCKETS, registry=r)
        for queue in ctx.cfg.queues:  # every series present from the start, at 0
            for name in _counted_events():
                self.events.labels(name, queue)
        r.register(_Live(ctx, board))
        ctx.notifier.subscribe(self.on_event)

    def on_event(self, event: events.Event) -> None:
        if event.counter:
            self.events.labels(event.counter, event.queue).inc()
        if isinstance(event, events.CallbackCommitted) and event.latency > 0:
            self.dtmf_to_confirmation.labels(event.queue).observe(event.latency)
        elif isinstance(event, events.CustomerDialled) and event.latency > 0:
            self.accept_to_dial.labels(event.queue).observe(event.latency)
        elif isinstance(event, events.StoreCommitted):
            self.commit.observe(event.seconds)
        elif isinstance(event, events.InboundConnected | events.CallbackConnected):
            self._served(event)

    def _served(self, event: events.Event) -> None:
        try:
            item = self.ctx.engine.get(event.item_id)
        except QueueError:
            return
        actual = max(0.0, self.ctx.now() - item.arrived_at)
        self.wait.labels(event.queue, item.kind.value).observe(actual)
        if item.predicted_wait is not None and math.isfinite(item.predicted_wait):
            self.ewt_error.labels(event.queue).observe(abs(item.predicted_wait - actual))


class _Live(Collector):
    """Gauges read at scrape time."""

    def __init__(self, ctx: FlowContext, board: AgentBoard) -> None:
        self.ctx = ctx
        self.board = board

    def collect(self) -> Iterator[Metric]:
        engine = self.ctx.engine
        now = self.ctx.now()
        waiting = GaugeMetricFamily("ivr_queue_waiting", "Open items in the queue",
                                    labels=["queue", "kind"])
        ewt = GaugeMetricFamily("ivr_queue_ewt_seconds", "Estimated wait of a new arrival "
                                "(absent while no agent serves the queue)", labels=["queue"])
        longest = GaugeMetricFamily("ivr_queue_longest_wait_seconds", "Longest wait now",
                                    labels=["queue"])
        scheduled = GaugeMetricFamily("ivr_queue_scheduled", "Callbacks booked for later",
                                      labels=["queue"])
        error = GaugeMetricFamily("ivr_ewt_abs_error_seconds", "Mean |predicted - actual| "
                                  "wait over the recent served items", labels=["queue"])
        for name in self.ctx.cfg.queues:
            items = engine.items(name)
            live = sum(1 for i in items if i.kind == "inbound")
            waiting.add_metric([name, "inbound"], live)
            waiting.add_metric([name, "callback"], len(items) - live)
            value = engine.ewt(name)
            if math.isfinite(value):
                ewt.add_metric([name], value)
            longest.add_metric([name], max((now - i.arrived_at for i in items), default=0.0))
            scheduled.add_metric([name], len(engine.scheduled(name)))
            errors = [abs(p - a) for p, a in engine.ewt_errors(name) if math.isfinite(p)]
            if errors:
                error.add_metric([name], sum(errors) / len(errors))
        agents = GaugeMetricFamily("ivr_agents", "Agents per status", labels=["status"])
        counts = {s.value: 0 for s in AgentStatus}
        for agent in self.board:
            counts[agent.status.value] += 1
        for status, n in counts.items():
            agents.add_metric([status], n)
        reconnects = CounterMetricFamily("ivr_ari_reconnects", "ARI websocket reconnects",
                                         value=sum(c.reconnects for c in self.ctx.nodes.values()))
        yield from (waiting, ewt, longest, scheduled, error, agents, reconnects)
