"""The simulation: a discrete-event loop that drives the real queue engine.

The queue logic is ``ivr.domain``'s, untouched: ``QueueEngine`` (FIFO by original
arrival, overflow, callbacks keeping their place, dispatch, retries, expiry, the EWT
estimator) and ``AgentBoard`` (statuses, wrap-up, who serves). This module only plays
the parts Asterisk, the callers, the customers and the agents play in production, on a
``FakeClock`` it moves from event to event:

- a caller arrives (``engine.arrive``) and is offered a callback the way
  ``ivr/flows/caller.py`` does: at ``first_offer_after``, then every
  ``repeat_offer_every``, while the queue is ``engine.in_overflow``, the caller is at
  ``min_position_for_offer`` or further back (when the config has that option), and not
  within ``stop_offers_before_close`` of the business hours' close. A caller who would accept
  converts at the first offer they hear (``engine.convert_to_callback``: same place);
  one who would not keeps waiting. A live caller still waiting when their patience runs
  out hangs up (``engine.abandon``). The number guard plays no part (every simulated
  caller has a callable number).
- dispatch passes run like ``ivr/flows/dispatcher.py``'s: after every change, plus a
  periodic tick (``TICK``) for business hours opening and expiry: ``expire_due``, the
  serving agents' count for the EWT, then ``engine.dispatch`` with the free agents
  (longest idle first) and the queues whose hours are open for callbacks.
- an agent offered a live caller answers at once (``engine.connected``), talks for the
  call's handle time, then wraps up for the queue's ``wrap_up`` (``AgentBoard``). An
  agent offered a callback accepts at once (``engine.dial_started``); the customer
  answers after ``answer_delay`` with probability ``answer_rate``
  (``engine.callback_connected``), else the attempt fails after
  ``outbound.dial_timeout`` (``engine.dial_failed``: the engine retries after
  ``retry_interval`` up to ``max_attempts``, keeping the place).

Not modelled: agents' ring and preview time, declines, the prompt's duration, trunk
failures, the number guard. Randomness (a customer answering; an unknown caller's
choice) comes from per-call seeded generators, so every scenario sees the same
customers and the same seed gives the same result.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dtime
from enum import IntEnum

from ivr.config import Config, QueueConfig
from ivr.domain.agents import Agent, AgentBoard, AgentStatus
from ivr.domain.items import FakeClock, Kind, State, WorkItem
from ivr.domain.queues import QueueEngine
from ivr.sim.arrivals import Arrival, zone_of
from ivr.sim.scenarios import Scenario, SimParams

#: seconds between periodic dispatch passes (production: 1 s). They only matter for
#: callbacks held outside business hours and for expiry; every other change dispatches
#: at once.
TICK = 60.0
PROGRESS_EVERY = 8192

OCCUPIED = frozenset({AgentStatus.RINGING, AgentStatus.PREVIEWING, AgentStatus.BUSY,
                      AgentStatus.WRAP_UP})
OFF_DUTY = frozenset({AgentStatus.NOT_READY, AgentStatus.OFFLINE})


class Ev(IntEnum):
    ARRIVE = 0
    OFFER = 1
    ABANDON = 2
    TALK_END = 3
    DIAL_END = 4
    WRAP_END = 5
    STAFF = 6
    WAKE = 7


class End(IntEnum):
    """How a call ended (per arrival)."""

    WAITING = 0  # live, still waiting at the end of the simulation
    CONNECTED = 1
    ABANDONED = 2
    CALLBACK = 3  # converted, callback still open at the end
    CALLBACK_DONE = 4
    CALLBACK_FAILED = 5
    CALLBACK_EXPIRED = 6


@dataclass(frozen=True)
class SimAgent:
    """What ``AgentBoard`` needs of an agent (``AgentSpec``)."""

    id: str
    name: str
    endpoint: str
    queues: tuple[str, ...]


@dataclass
class Result:
    scenario: str
    service_level_threshold: float
    start: float
    end: float
    arrivals: int = 0
    offered: int = 0  # callers who heard at least one offer
    offers_played: int = 0
    accepted: int = 0
    abandoned: int = 0
    live_answered: int = 0
    answered_within_sl: int = 0
    callbacks_done: int = 0
    callbacks_failed: int = 0
    callbacks_expired: int = 0
    open_at_end: int = 0
    dial_attempts: int = 0
    live_waits: list[float] = field(default_factory=list)
    callback_waits: list[float] = field(default_factory=list)
    """Original arrival -> the customer is talking to an agent."""
    ewt_errors: list[float] = field(default_factory=list)
    """|predicted - actual| per dequeued item (the engine's own prediction at arrival)."""
    occupied: float = 0.0  # agent-seconds ringing, dialling, talking, wrapping up
    on_duty: float = 0.0  # agent-seconds not NOT_READY
    events: int = 0
    wall: float = 0.0


def customer_answers(seed: int, index: int, attempt: int, rate: float) -> bool:
    """The same customer answers the same attempt in every scenario."""
    return random.Random(f"answer:{seed}:{index}:{attempt}").random() < rate


def resolve_accepts(arrivals: Sequence[Arrival], probability: float, seed: int) -> list[bool]:
    """Each caller's choice; an unknown one drawn once per caller (same in every
    scenario)."""
    out: list[bool] = []
    for i, a in enumerate(arrivals):
        if a.accepts_callback is None:
            out.append(random.Random(f"accept:{seed}:{i}").random() < probability)
        else:
            out.append(a.accepts_callback)
    return out


def known_accept_rate(arrivals: Sequence[Arrival]) -> float | None:
    known = [a.accepts_callback for a in arrivals if a.accepts_callback is not None]
    return sum(known) / len(known) if known else None


def _local_midnight(at: float, cfg: Config) -> datetime:
    zone = zone_of(_zone_name(cfg))
    local = datetime.fromtimestamp(at, zone)
    return datetime.combine(local.date(), dtime(0), zone)


def _zone_name(cfg: Config) -> str | None:
    for q in cfg.queues.values():
        if q.hours is not None:
            return q.hours.timezone
    return None


class Simulation:
    """One scenario over one list of arrivals. ``run()`` returns the ``Result``."""

    def __init__(self, scenario: Scenario, arrivals: Sequence[Arrival],
                 accepts: Sequence[bool], *, seed: int = 0,
                 progress: Callable[[float], None] | None = None) -> None:
        if not arrivals:
            raise ValueError("no arrivals to simulate")
        self.scenario = scenario
        self.cfg = scenario.config
        self.params: SimParams = scenario.params
        self.arrivals = arrivals
        self.accepts = accepts
        self.seed = seed
        self.progress = progress
        first = _local_midnight(arrivals[0].at, self.cfg)
        last = _local_midnight(arrivals[-1].at, self.cfg)
        self.start = first.timestamp()
        self.horizon = (last + timedelta(days=1)).timestamp()
        self.first_day = first
        self.days = (last.date() - first.date()).days + 1
        self.clock = FakeClock(self.start)
        self.engine = QueueEngine([q.policy for q in self.cfg.queues.values()], self.clock)
        self.queues: dict[str, QueueConfig] = dict(self.cfg.queues)
        self.result = Result(scenario.name, self.params.service_level, self.start,
                             self.horizon, arrivals=len(arrivals))
        self._heap: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        # Per arrival: the engine's item while open, how it ended.
        self.items: list[WorkItem | None] = [None] * len(arrivals)
        self.ends = [End.WAITING] * len(arrivals)
        self._offered = bytearray(len(arrivals))
        self._index: dict[str, int] = {}  # open item id -> arrival index
        # Agents: the board, and a free list in the board's order (longest idle first),
        # kept from its change hook instead of sorting every agent at every pass.
        self.agents = self._agent_specs()
        self._agent_no = {a.id: n for n, a in enumerate(self.agents)}
        self._free: OrderedDict[str, Agent] = OrderedDict()
        self._last_change: dict[str, float] = {a.id: self.start for a in self.agents}
        self.board = AgentBoard(self.agents, self.clock, on_change=self._changed)
        self._on_call: dict[str, int] = {}  # agent id -> arrival index it is working
        self._target = len(self.agents)
        self._serving_dirty = True
        for agent in self.board:
            self.board.reachability(agent, "online")
        self._free.clear()
        for agent in self.board.free():
            self._free[agent.id] = agent
        self._dirty = True

    # ------------------------------------------------------------------ set-up

    def _agent_specs(self) -> list[SimAgent]:
        if self.params.agents is None:
            return [SimAgent(a.id, a.name, a.endpoint, a.queues)
                    for a in self.cfg.agents.values()]
        most = max(round(n) for n in self.params.agents)
        served = tuple(self.cfg.queues)
        return [SimAgent(f"agent{n + 1:03d}", f"Agent {n + 1}", f"SIM/agent{n + 1}", served)
                for n in range(most)]

    def _schedule_staffing(self) -> None:
        profile = self.params.agents
        if profile is None:
            return
        zone = self.first_day.tzinfo
        for day in range(self.days):
            d = self.first_day.date() + timedelta(days=day)
            for hour, n in enumerate(profile):
                at = datetime.combine(d, dtime(hour), zone).timestamp()
                self._push(max(at, self.start), Ev.STAFF, round(n))

    # ------------------------------------------------------------------ events

    def _push(self, at: float, kind: Ev, a: int = 0, b: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, a, b))

    def run(self) -> Result:
        wall = time.perf_counter()
        self._schedule_staffing()
        tick = self.start
        while tick < self.horizon:
            self._push(tick, Ev.WAKE)
            tick += TICK
        arrivals = self.arrivals
        n_arrivals = len(arrivals)
        heap = self._heap
        clock = self.clock
        horizon = self.horizon
        span = horizon - self.start
        nxt = 0
        events = 0
        handlers: dict[int, Callable[[int, int], None]] = {
            Ev.OFFER: self._offer, Ev.ABANDON: self._abandon, Ev.TALK_END: self._talk_end,
            Ev.DIAL_END: self._dial_end, Ev.WRAP_END: self._wrap_end,
            Ev.STAFF: self._staff, Ev.WAKE: self._wake,
        }
        while True:
            if nxt < n_arrivals and (not heap or arrivals[nxt].at < heap[0][0]):
                at = arrivals[nxt].at
                if at >= horizon:
                    break
                clock.set(at)
                self._arrive(nxt)
                nxt += 1
            elif heap:
                at, _, kind, a, b = heapq.heappop(heap)
                if at >= horizon:
                    break
                clock.set(at)
                handlers[kind](a, b)
            else:
                break
            events += 1
            if self._serving_dirty:
                self._update_serving()
            if self._dirty:
                self._dispatch()
            if self.progress is not None and events % PROGRESS_EVERY == 0:
                self.progress(min(1.0, (clock.now() - self.start) / span))
        clock.set(max(clock.now(), horizon))
        self._finish()
        self.result.events = events
        self.result.wall = time.perf_counter() - wall
        if self.progress is not None:
            self.progress(1.0)
        return self.result

    # ------------------------------------------------------------------ callers

    def _arrive(self, i: int) -> None:
        a = self.arrivals[i]
        item = self.engine.arrive(a.queue, channel_id=f"sim-{i}", number=None)
        self.items[i] = item
        self._index[item.id] = i
        q = self.queues[a.queue]
        self._push(item.arrived_at + q.first_offer_after, Ev.OFFER, i)
        if math.isfinite(a.patience):
            self._push(item.arrived_at + a.patience, Ev.ABANDON, i)
        self._dirty = True
        self.engine.drain_changes()

    def _may_offer(self, item: WorkItem, q: QueueConfig) -> bool:
        """``CallerSession.may_offer`` without the number guard and the stopping flag."""
        if item.state is not State.WAITING:
            return False
        if not self.engine.in_overflow(q.name):
            return False
        # Callers near the head get no offer (a queue option newer than this module:
        # read defensively, 1 = every position).
        min_position = int(getattr(q, "min_position_for_offer", 1))
        if min_position > 1 and self.engine.position(item.id) < min_position:
            return False
        if q.hours is not None and q.stop_offers_before_close > 0:
            now = self.clock.now()
            closing = q.hours.seconds_to_close(now) < q.stop_offers_before_close
            if q.hours.is_open(now) and closing:
                return False
        return True

    def _offer(self, i: int, _: int) -> None:
        item = self.items[i]
        if item is None or item.kind is not Kind.INBOUND or self.ends[i] is not End.WAITING:
            return  # connected, abandoned or converted meanwhile: no more offers
        q = self.queues[item.queue]
        if self._may_offer(item, q):
            self.engine.note_offer_played(item.id)
            self.result.offers_played += 1
            if not self._offered[i]:
                self._offered[i] = 1
                self.result.offered += 1
            if self.accepts[i]:
                self.engine.convert_to_callback(item.id, f"sim-{i}")
                self.ends[i] = End.CALLBACK
                self.result.accepted += 1
                self._dirty = True
                self.engine.drain_changes()
                return
        self._push(self.clock.now() + q.repeat_offer_every, Ev.OFFER, i)

    def _abandon(self, i: int, _: int) -> None:
        item = self.items[i]
        if item is None or self.ends[i] is not End.WAITING or item.state is not State.WAITING:
            return
        self.engine.abandon(item.id)
        self._closed(i, End.ABANDONED)
        self.result.abandoned += 1
        self.engine.drain_changes()

    def _closed(self, i: int, end: End) -> None:
        item = self.items[i]
        if item is not None:
            self._index.pop(item.id, None)
        self.items[i] = None
        self.ends[i] = end

    # ------------------------------------------------------------------ agents

    def _changed(self, agent: Agent, old: AgentStatus) -> None:
        now = self.clock.now()
        spent = now - self._last_change[agent.id]
        self._last_change[agent.id] = now
        if old not in OFF_DUTY:
            self.result.on_duty += spent
            if old in OCCUPIED:
                self.result.occupied += spent
        if agent.free:
            self._free[agent.id] = agent
            self._free.move_to_end(agent.id)  # since = now: the most recently idle
            self._dirty = True
        else:
            self._free.pop(agent.id, None)
        if (old in OFF_DUTY) != (agent.status in OFF_DUTY):
            self._serving_dirty = True

    def _update_serving(self) -> None:
        for name in self.queues:
            self.engine.set_serving_agents(name, self.board.serving(name))
        self._serving_dirty = False

    def _staff(self, target: int, _: int) -> None:
        """Hourly staffing: agents 1..target on duty, the rest log off (after the call
        they are on, if any)."""
        self._target = target
        for n, spec in enumerate(self.agents):
            agent = self.board.get(spec.id)
            if n < target:
                self.board.set_ready(agent.id, True)
            elif agent.status is AgentStatus.AVAILABLE:
                self.board.set_ready(agent.id, False)

    def _available_again(self, agent: Agent) -> None:
        if agent.status is AgentStatus.AVAILABLE and self._agent_no[agent.id] >= self._target:
            self.board.set_ready(agent.id, False)

    def _wrap_end(self, agent_no: int, _: int) -> None:
        agent = self.board.get(self.agents[agent_no].id)
        if agent.status is AgentStatus.WRAP_UP and agent.wrap_up_until <= self.clock.now():
            self.board.set_status(agent, AgentStatus.AVAILABLE)
            self._available_again(agent)

    def _release(self, agent: Agent, *, talked: bool, queue: QueueConfig) -> None:
        self._on_call.pop(agent.id, None)
        self.board.release(agent, unresponsive=False, talked=talked, wrap_up=queue.wrap_up)
        if agent.status is AgentStatus.WRAP_UP:
            self._push(agent.wrap_up_until, Ev.WRAP_END, self._agent_no[agent.id])
        self._available_again(agent)

    def _talk_end(self, agent_no: int, i: int) -> None:
        agent = self.board.get(self.agents[agent_no].id)
        self._release(agent, talked=True, queue=self.queues[self.arrivals[i].queue])

    # ------------------------------------------------------------------ dispatch

    def _wake(self, _a: int, _b: int) -> None:
        self._dirty = True
        # Production's dispatcher runs a pass every second; a tick here does the same.

    def _dispatch(self) -> None:
        self._dirty = False
        engine = self.engine
        for item in engine.expire_due():
            i = self._index.get(item.id)
            if i is not None:
                self._closed(i, End.CALLBACK_EXPIRED)
                self.result.callbacks_expired += 1
        if not self._free:
            engine.drain_changes()
            return
        # Each agent takes at most one item: per queue, only as many free agents (longest
        # idle first) as there are open items anywhere can take one. Passing the rest
        # changes nothing but the cost (there are no declines in the simulation).
        limit = sum(engine.waiting_count(name) for name in self.queues)
        if limit == 0:
            return
        now = self.clock.now()
        free: dict[str, tuple[str, ...]] = {}
        left = dict.fromkeys(self.queues, limit)
        for agent in self._free.values():
            if any(left.get(name, 0) > 0 for name in agent.queues):
                free[agent.id] = agent.queues
                for name in agent.queues:
                    if name in left:
                        left[name] -= 1
                if not any(left.values()):
                    break
        open_for_callbacks = [name for name, q in self.queues.items()
                              if q.hours is None or q.hours.is_open(now)]
        offers = engine.dispatch(free, callback_queues=open_for_callbacks)
        for agent_id, item in offers:
            self._take(self.board.get(agent_id), item)
        engine.drain_changes()
        engine.drain_side_closes()

    def _take(self, agent: Agent, item: WorkItem) -> None:
        i = self._index[item.id]
        now = self.clock.now()
        arrival = self.arrivals[i]
        self._on_call[agent.id] = i
        agent_no = self._agent_no[agent.id]
        if item.kind is Kind.INBOUND:
            self.board.set_status(agent, AgentStatus.RINGING, item.id)
            self.engine.connected(item.id, agent.id)
            self.board.set_status(agent, AgentStatus.BUSY, item.id)
            wait = now - item.arrived_at
            self._record_dequeue(item, wait)
            self.result.live_waits.append(wait)
            self.result.live_answered += 1
            if wait <= self.params.service_level:
                self.result.answered_within_sl += 1
            self._closed(i, End.CONNECTED)
            self._push(now + self._handle(arrival), Ev.TALK_END, agent_no, i)
            return
        self.board.set_status(agent, AgentStatus.PREVIEWING, item.id)
        self.engine.dial_started(item.id, agent.id)
        self.board.set_status(agent, AgentStatus.BUSY, item.id)
        self.result.dial_attempts += 1
        answers = customer_answers(self.seed, i, item.attempts, self.params.answer_rate)
        if answers:
            self._push(now + self.params.answer_delay, Ev.DIAL_END, agent_no, i)
        else:
            self._push(now + self.cfg.outbound.dial_timeout, Ev.DIAL_END, agent_no, -1 - i)

    def _dial_end(self, agent_no: int, code: int) -> None:
        answered = code >= 0
        i = code if answered else -1 - code
        item = self.items[i]
        agent = self.board.get(self.agents[agent_no].id)
        q = self.queues[self.arrivals[i].queue]
        assert item is not None and item.state is State.DIALLING
        now = self.clock.now()
        if answered:
            self.engine.callback_connected(item.id)
            wait = now - item.arrived_at
            self._record_dequeue(item, wait)
            self.result.callback_waits.append(wait)
            self.result.callbacks_done += 1
            self._closed(i, End.CALLBACK_DONE)
            self._push(now + self._handle(self.arrivals[i]), Ev.TALK_END, agent_no, i)
            self.engine.drain_changes()
            return
        failed = self.engine.dial_failed(item.id, "no_answer")
        if failed.state is State.FAILED:
            self._closed(i, End.CALLBACK_FAILED)
            self.result.callbacks_failed += 1
        else:
            self._push(item.next_eligible_at, Ev.WAKE)
        self.engine.drain_changes()
        self._release(agent, talked=False, queue=q)

    def _handle(self, arrival: Arrival) -> float:
        if arrival.handle_time is None:
            return self.params.handle_time
        return arrival.handle_time

    def _record_dequeue(self, item: WorkItem, actual: float) -> None:
        predicted = item.predicted_wait
        if predicted is not None and math.isfinite(predicted):
            self.result.ewt_errors.append(abs(predicted - actual))

    # ------------------------------------------------------------------ end

    def _finish(self) -> None:
        now = self.clock.now()
        for agent in self.board:
            spent = now - self._last_change[agent.id]
            if agent.status not in OFF_DUTY:
                self.result.on_duty += spent
                if agent.status in OCCUPIED:
                    self.result.occupied += spent
            self._last_change[agent.id] = now
        self.result.open_at_end = sum(
            1 for end in self.ends if end in (End.WAITING, End.CALLBACK))


def simulate(scenario: Scenario, arrivals: Sequence[Arrival], accepts: Sequence[bool], *,
             seed: int = 0, progress: Callable[[float], None] | None = None) -> Result:
    return Simulation(scenario, arrivals, accepts, seed=seed, progress=progress).run()
