"""The HTTP API's request and response bodies, as typed models (pydantic). The OpenAPI
document (``ivr.web.openapi``) is generated from these and the route table; requests
are validated by them and responses built through them, so the document cannot drift
from what the service does.

Times are ISO 8601 with a zone (UTC); durations are seconds. Phone numbers appear only
in bodies (never in URLs, metrics or logs above DEBUG), in the national form an agent
dials and in E.164.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
ItemKind = Literal["inbound", "callback"]
ItemState = Literal["waiting", "offered", "connected", "callback_pending", "dialling", "done",
                    "failed", "expired", "cancelled", "abandoned"]
AgentStatus = Literal["offline", "available", "ringing", "previewing", "busy", "wrap_up",
                      "not_ready"]
Role = Literal["agent", "supervisor", "integration"]


class Error(Model):
    error: str = Field(description="why, in words")
    status: int
    existing: str | None = Field(None, description="409 on a duplicate: the open callback")


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")
    ok: bool
    reason: str | None = None


# ---------------------------------------------------------------- login


class LoginIn(Model):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={
        "examples": [{"login": "alice", "password": "correct horse battery"}]})

    login: Name
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class Me(Model):
    login: str
    name: str
    role: Role
    agent: str | None = Field(description="the agent id of an agent login")
    scopes: list[str]
    csrf: str | None = Field(description="send as X-CSRF-Token on state changes (console)")


# ---------------------------------------------------------------- queues


class HistoryEntry(Model):
    at: datetime
    event: str
    detail: dict[str, str]


class Item(Model):
    id: str
    queue: str
    kind: ItemKind
    state: ItemState
    position: int | None = Field(description="1-based place in its queue; null if not in it")
    arrived_at: datetime = Field(description="original arrival: the place is kept by it")
    waited: float = Field(description="seconds since arrival (0 for a future booking)")
    attempts: int
    number: str | None = Field(description="as dialled inside its country (national form)")
    e164: str | None
    offered_to: str | None
    next_attempt_at: datetime | None = Field(description="callbacks: not dialled before")
    expires_at: datetime | None
    language: str = Field(description="the caller's language (the callback speaks it)")


class Callback(Item):
    history: list[HistoryEntry]


class Queue(Model):
    name: str
    waiting: int = Field(description="open items in the queue, live and callback")
    live: int
    callbacks: int
    overflow: bool
    ewt: float | None = Field(description="estimated wait of a new arrival; null: no agent")
    ewt_error: float | None = Field(description="mean |predicted - actual| wait, seconds")
    longest_wait: float
    serving_agents: int
    open_now: bool = Field(description="inside business hours (callbacks are dialled)")
    items: list[Item] = Field(description="the line, in order")
    scheduled: list[Item] = Field(description="callbacks booked for later, soonest first")


class Queues(Model):
    queues: list[Queue]


# ---------------------------------------------------------------- agents


class Agent(Model):
    id: str
    name: str
    status: AgentStatus
    since: datetime
    reachable: bool
    queues: list[str]
    item_id: str | None
    wrap_up_until: datetime | None


class Agents(Model):
    agents: list[Agent]


class AgentStateIn(Model):
    """Exactly one of ``state`` or ``ready`` (the older spelling, kept for scripts)."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={
        "examples": [{"state": "not_ready"}, {"state": "available"}]})

    state: Literal["available", "not_ready"] | None = None
    ready: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> AgentStateIn:
        if (self.state is None) == (self.ready is None):
            raise ValueError('give "state": "available" | "not_ready" (or "ready": bool)')
        return self

    @property
    def wants_ready(self) -> bool:
        return self.state == "available" if self.state is not None else bool(self.ready)


class AgentStateOut(Model):
    agent: str
    status: AgentStatus


class Offer(Model):
    item_id: str
    queue: str
    kind: ItemKind
    number: str | None
    e164: str | None
    waited: float
    attempts: int
    phase: Literal["ringing", "preview", "dialling", "connected", "ended"]
    decision: Literal["accept", "decline"] | None
    agent: str
    language: str = Field(description="the customer's language")


class LastOffer(Model):
    item_id: str
    kind: ItemKind
    outcome: str = Field(description="talked, declined, attempt_failed, withdrawn, ...")
    at: datetime
    item_state: ItemState
    attempts: int
    next_attempt_at: datetime | None


class Desk(Model):
    """What an agent's console shows."""

    agent: Agent
    offer: Offer | None
    last: LastOffer | None


class Offers(Model):
    offers: list[Offer]


class Decision(Model):
    item_id: str
    decision: Literal["accept", "decline"]
    phase: str


# ---------------------------------------------------------------- callbacks


class CallbackIn(Model):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [
        {"queue": "support", "number": "(201) 555-0123"},
        {"queue": "support", "number": "+1 212 555 0147",
         "not_before": "2030-01-07T15:00:00Z"},
    ]})

    queue: Name
    number: Annotated[str, StringConstraints(min_length=1, max_length=40)] = Field(
        description="as a customer types it: +1 201 555 0123, (201) 555-0123")
    not_before: AwareDatetime | None = Field(
        None, description="book for later (inside business hours); FIFO from then on")


class Callbacks(Model):
    callbacks: list[Callback]


# ---------------------------------------------------------------- supervisor


class Funnel(Model):
    queue: str
    offered: int = Field(description="callers who heard the callback offer")
    requested: int = Field(description="callbacks requested (press 1, API)")
    scheduled: int
    accepted: int = Field(description="callbacks an agent accepted (first attempt or retry)")
    connected: int
    failed: int
    expired: int
    cancelled: int


class Sample(Model):
    at: datetime
    depth: int
    longest_wait: float


class Series(Model):
    queue: str
    points: list[Sample]


class Stats(Model):
    since: datetime = Field(description="start of today, in the service's local time")
    funnel: list[Funnel]
    series: list[Series] = Field(description="queue depth and longest wait, last hour")


class Wallboard(Model):
    queues: list[Queue]
    agents: list[Agent]
    stats: Stats
