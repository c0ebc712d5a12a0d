"""Read models: the domain's state as the API's typed bodies (``ivr.web.models``).

Only reads (the engine, the agent board, the dispatcher's legs); every change goes
through the flows. Numbers are shown to whoever may see the item (``numbers=False``
hides them).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from ivr.domain.agents import Agent as BoardAgent
from ivr.domain.agents import AgentBoard
from ivr.domain.items import WorkItem
from ivr.domain.numbers import parse_e164
from ivr.flows.context import FlowContext
from ivr.flows.dispatcher import Dispatcher
from ivr.web import models


def ts(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


def _national(number: str | None) -> str | None:
    parsed = parse_e164(number or "")
    return parsed.national if parsed is not None else None


def finite(x: float) -> float | None:
    """JSON has no Infinity: an EWT with no serving agent is null."""
    return round(x, 1) if math.isfinite(x) else None


def item(ctx: FlowContext, it: WorkItem, position: int | None, *,
         numbers: bool = True) -> models.Item:
    now = ctx.now()
    return models.Item(
        id=it.id, queue=it.queue, kind=it.kind.value, state=it.state.value, position=position,
        arrived_at=ts(it.arrived_at), waited=round(max(0.0, now - it.arrived_at), 1),
        attempts=it.attempts,
        number=_national(it.number) if numbers else None,
        e164=it.number if numbers else None,
        offered_to=it.offered_to,
        next_attempt_at=ts(it.next_eligible_at)
        if it.kind == "callback" and it.next_eligible_at > now else None,
        expires_at=ts(it.expires_at) if it.expires_at is not None else None,
        language=_language(ctx, it),
    )


def _language(ctx: FlowContext, it: WorkItem) -> str:
    q = ctx.queue(it.queue)
    return it.language or (q.language if q is not None else ctx.cfg.prompts.language)


def callback(ctx: FlowContext, it: WorkItem) -> models.Callback:
    """One callback, its position looked up in its line (None: booked for later, or
    closed). A listing that walks the line passes positions to ``callback_at``."""
    position = None
    if it.is_open:
        position = next((n for n, i in enumerate(ctx.engine.items(it.queue), 1)
                         if i.id == it.id), None)
    return callback_at(ctx, it, position)


def callback_at(ctx: FlowContext, it: WorkItem, position: int | None) -> models.Callback:
    base = item(ctx, it, position)
    return models.Callback(
        **base.model_dump(),
        history=[models.HistoryEntry(at=ts(h.at), event=h.event, detail=dict(h.detail))
                 for h in it.history],
    )


def queue(ctx: FlowContext, name: str) -> models.Queue:
    engine = ctx.engine
    items = engine.items(name)
    now = ctx.now()
    errors = [abs(p - a) for p, a in engine.ewt_errors(name) if math.isfinite(p)]
    q = ctx.queue(name)
    return models.Queue(
        name=name,
        waiting=len(items),
        live=sum(1 for i in items if i.kind == "inbound"),
        callbacks=sum(1 for i in items if i.kind == "callback"),
        overflow=engine.in_overflow(name),
        ewt=finite(engine.ewt(name)),
        ewt_error=round(sum(errors) / len(errors), 1) if errors else None,
        longest_wait=round(max((now - i.arrived_at for i in items), default=0.0), 1),
        serving_agents=engine.serving_agents(name),
        open_now=q is None or q.hours is None or q.hours.is_open(now),
        items=[item(ctx, i, pos) for pos, i in enumerate(items, 1)],
        scheduled=[item(ctx, i, None) for i in engine.scheduled(name)],
    )


def queues(ctx: FlowContext) -> models.Queues:
    return models.Queues(queues=[queue(ctx, name) for name in ctx.cfg.queues])


def agent(a: BoardAgent) -> models.Agent:
    return models.Agent(
        id=a.id, name=a.name, status=a.status.value, since=ts(a.since), reachable=a.reachable,
        queues=list(a.queues), item_id=a.item_id,
        wrap_up_until=ts(a.wrap_up_until) if a.status == "wrap_up" else None,
    )


def agents(board: AgentBoard) -> models.Agents:
    return models.Agents(agents=[agent(a) for a in board])


def offer(ctx: FlowContext, dispatcher: Dispatcher, agent_id: str) -> models.Offer | None:
    leg = dispatcher.leg_of(agent_id)
    if leg is None:
        return None
    it = leg.item
    return models.Offer(
        item_id=it.id, queue=it.queue, kind=it.kind.value, number=_national(it.number),
        e164=it.number, waited=round(max(0.0, ctx.now() - it.arrived_at), 1),
        attempts=it.attempts, phase=leg.phase.value,
        decision=leg.decision,  # type: ignore[arg-type]  # ACCEPT / DECLINE / None
        agent=agent_id, language=_language(ctx, it),
    )


def offers(ctx: FlowContext, dispatcher: Dispatcher) -> models.Offers:
    out = [offer(ctx, dispatcher, leg.agent.id) for leg in dispatcher.legs.values()]
    return models.Offers(offers=[o for o in out if o is not None])


def desk(ctx: FlowContext, board: AgentBoard, dispatcher: Dispatcher,
         agent_id: str) -> models.Desk:
    last = dispatcher.last.get(agent_id)
    last_model = None
    if last is not None:
        try:
            it = ctx.engine.get(last.item_id)
        except KeyError:
            it = None
        if it is not None:
            now = ctx.now()
            last_model = models.LastOffer(
                item_id=it.id, kind=it.kind.value, outcome=last.outcome.value, at=ts(last.at),
                item_state=it.state.value, attempts=it.attempts,
                next_attempt_at=ts(it.next_eligible_at)
                if it.is_open and it.next_eligible_at > now else None,
            )
    return models.Desk(agent=agent(board.get(agent_id)),
                       offer=offer(ctx, dispatcher, agent_id), last=last_model)
