"""Agents (SPEC R11, R15): who is free, and the rules that change an agent's status.

Pure: the clock comes in, each change goes out through ``on_change`` (the dispatcher
logs it and runs a dispatch pass; the consoles will follow it). Flows change statuses
only through these methods; the web layer reads the board, never a flow.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from ivr.domain.items import Clock


class AgentStatus(StrEnum):
    OFFLINE = "offline"  # endpoint unreachable (R15)
    AVAILABLE = "available"
    RINGING = "ringing"  # an offer is ringing the softphone
    PREVIEWING = "previewing"  # answered a callback offer, hearing the preview (R7)
    BUSY = "busy"  # dialling the customer, or in conversation
    WRAP_UP = "wrap_up"  # after a conversation, for the queue's wrap_up seconds
    NOT_READY = "not_ready"  # by choice, or after letting an offer go unanswered


# Holding an offer or a call: "could take it" for R7's decline rule, but not free.
ON_DUTY = frozenset(
    {AgentStatus.RINGING, AgentStatus.PREVIEWING, AgentStatus.BUSY, AgentStatus.WRAP_UP}
)


class AgentSpec(Protocol):
    """What the board needs of an agent's configuration."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def queues(self) -> tuple[str, ...]: ...


@dataclass
class Agent:
    id: str
    name: str
    endpoint: str
    queues: tuple[str, ...]
    status: AgentStatus = AgentStatus.AVAILABLE
    #: the Asterisk node the softphone is on ("" with one node)
    node: str = ""
    since: float = 0.0
    reachable: bool = False
    wrap_up_until: float = 0.0
    item_id: str | None = None

    @property
    def free(self) -> bool:
        return self.reachable and self.status == AgentStatus.AVAILABLE


Change = Callable[[Agent, AgentStatus], None]


class AgentBoard:
    def __init__(self, agents: Iterable[AgentSpec], clock: Clock,
                 on_change: Change | None = None) -> None:
        now = clock.now()
        self._clock = clock
        # ``node``: optional in the spec (the simulator's agents have none).
        self._agents = {a.id: Agent(a.id, a.name, a.endpoint, tuple(a.queues), since=now,
                                    node=getattr(a, "node", ""))
                        for a in agents}
        self._by_endpoint = {(a.node, a.endpoint): a.id for a in self._agents.values()}
        #: called after every status change with the agent and its previous status
        self.on_change: Change = on_change or (lambda agent, old: None)

    # ---- reading

    def __iter__(self) -> Iterator[Agent]:
        return iter(self._agents.values())

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._agents

    def get(self, agent_id: str) -> Agent:
        return self._agents[agent_id]

    def by_endpoint(self, endpoint: str, node: str = "") -> Agent | None:
        """The agent whose softphone is ``endpoint`` on ``node`` (endpoint names are
        per Asterisk node)."""
        agent_id = self._by_endpoint.get((node, endpoint))
        return self._agents[agent_id] if agent_id is not None else None

    def free(self) -> list[Agent]:
        """Free agents, longest idle first (R11: one offer each)."""
        return sorted((a for a in self._agents.values() if a.free), key=lambda a: a.since)

    def on_duty(self) -> list[Agent]:
        return [a for a in self._agents.values() if a.reachable and a.status in ON_DUTY]

    def serving(self, queue: str) -> int:
        """Agents who count for the queue's EWT (R16): reachable and not not-ready."""
        return sum(1 for a in self._agents.values()
                   if queue in a.queues and a.reachable and a.status != AgentStatus.NOT_READY)

    # ---- rules

    def set_status(self, agent: Agent, status: AgentStatus, item_id: str | None = None) -> None:
        old = agent.status
        agent.status = status
        agent.since = self._clock.now()
        agent.item_id = item_id
        self.on_change(agent, old)

    def set_ready(self, agent_id: str, ready: bool) -> AgentStatus:
        """The agent's own choice (console/API): not-ready <-> available. An agent on a
        call, ringing or in wrap-up is left as it is. Returns the status now."""
        agent = self._agents[agent_id]
        if ready and agent.status == AgentStatus.NOT_READY:
            self.set_status(agent, AgentStatus.AVAILABLE)
        elif not ready and agent.status == AgentStatus.AVAILABLE:
            self.set_status(agent, AgentStatus.NOT_READY)
        return agent.status

    def wrap_up(self, agent: Agent, seconds: float) -> None:
        """After a conversation: wrap-up for ``seconds``, then available."""
        if seconds > 0:
            agent.wrap_up_until = self._clock.now() + seconds
            self.set_status(agent, AgentStatus.WRAP_UP)
        else:
            self.set_status(agent, AgentStatus.AVAILABLE)

    def end_wrap_ups(self) -> None:
        now = self._clock.now()
        for agent in self._agents.values():
            if agent.status == AgentStatus.WRAP_UP and agent.wrap_up_until <= now:
                self.set_status(agent, AgentStatus.AVAILABLE)

    def reachability(self, agent: Agent, endpoint_state: str) -> bool:
        """R15: follow the endpoint's state. Returns True when reachability changed.
        "unknown" is a static contact that is not qualified: it may well answer."""
        reachable = endpoint_state in ("online", "unknown")
        changed = reachable != agent.reachable
        agent.reachable = reachable
        if not reachable and agent.status == AgentStatus.AVAILABLE:
            self.set_status(agent, AgentStatus.OFFLINE)
        elif reachable and agent.status == AgentStatus.OFFLINE:
            self.set_status(agent, AgentStatus.AVAILABLE)
        return changed

    def release(self, agent: Agent, *, unresponsive: bool, talked: bool,
                wrap_up: float, holding: Collection[AgentStatus] = ON_DUTY) -> None:
        """An offer to ``agent`` ended. R7/R9: an agent who let it go unanswered (or
        whose phone refused it) stops getting offers until they say they are ready —
        a phone on DND answering 486 would otherwise be offered the same caller again
        at once, in a loop. After a conversation: wrap-up. Otherwise available again."""
        if unresponsive:
            self.set_status(agent, AgentStatus.NOT_READY)
        elif talked:
            self.wrap_up(agent, wrap_up)
        elif agent.status in holding and agent.status != AgentStatus.WRAP_UP:
            self.set_status(agent, AgentStatus.AVAILABLE)
