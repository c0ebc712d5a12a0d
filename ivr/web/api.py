"""HTTP: health, metrics and a first read-only API. Reads the domain and the dispatcher;
never talks to Asterisk. (The consoles and the full API come with their own issue.)"""

from __future__ import annotations

import hmac
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ivr.flows.agents import Dispatcher
from ivr.flows.context import FlowContext

CTX = web.AppKey("ctx", FlowContext)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
TOKEN = web.AppKey("token", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """R23: every route but the bare health probe needs the bearer token."""
    if request.path == "/healthz":
        return await handler(request)
    given = request.headers.get("Authorization", "")
    expected = "Bearer " + request.app[TOKEN]
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise web.HTTPUnauthorized(reason="bearer token required")
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    ok = ctx.ari.connected.is_set()
    return web.json_response({"ari_connected": ok}, status=200 if ok else 503)


async def queues(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    out: dict[str, Any] = {}
    for name in ctx.cfg.queues:
        items = ctx.engine.items(name)
        out[name] = {
            "waiting": len(items),
            "ewt": _finite(ctx.engine.ewt(name)),
            "overflow": ctx.engine.in_overflow(name),
            "items": [
                {"id": i.id, "kind": i.kind, "state": i.state, "position": pos,
                 "arrived_at": i.arrived_at, "attempts": i.attempts}
                for pos, i in enumerate(items, start=1)
            ],
        }
    return web.json_response(out)


async def agents(request: web.Request) -> web.Response:
    d = request.app[DISPATCHER]
    return web.json_response({
        a.cfg.id: {"status": a.status, "reachable": a.reachable, "queues": list(a.cfg.queues)}
        for a in d.agents.values()
    })


async def agent_state(request: web.Request) -> web.Response:
    """POST {"ready": true|false}: an agent goes ready / not-ready (R15). Busy, ringing
    and wrap-up agents are left alone; their state is reported back."""
    d = request.app[DISPATCHER]
    agent_id = request.match_info["agent"]
    if agent_id not in d.agents:
        raise web.HTTPNotFound(reason=f"no agent {agent_id!r}")
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(reason="body must be JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("ready"), bool):
        raise web.HTTPBadRequest(reason='body must be {"ready": true} or {"ready": false}')
    d.set_ready(agent_id, body["ready"])
    return web.json_response({"agent": agent_id, "status": d.agents[agent_id].status})


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    lines = ["# TYPE ivr_events_total counter"]
    for name, value in sorted(ctx.counters.values.items()):
        lines.append(f'ivr_events_total{{event="{name}"}} {value}')
    lines.append("# TYPE ivr_ari_reconnects_total counter")
    lines.append(f"ivr_ari_reconnects_total {ctx.ari.reconnects}")
    lines.append("# TYPE ivr_queue_waiting gauge")
    for name in ctx.cfg.queues:
        lines.append(f'ivr_queue_waiting{{queue="{name}"}} {ctx.engine.waiting_count(name)}')
    lines.append("# TYPE ivr_queue_ewt_seconds gauge")
    for name in ctx.cfg.queues:
        ewt = _finite(ctx.engine.ewt(name))
        if ewt is not None:
            lines.append(f'ivr_queue_ewt_seconds{{queue="{name}"}} {ewt:.1f}')
    # R16: how far the predicted wait (EWT at arrival) was from the wait measured.
    lines.append("# TYPE ivr_ewt_abs_error_seconds gauge")
    for name in ctx.cfg.queues:
        errors = [abs(p - a) for p, a in ctx.engine.ewt_errors(name) if math.isfinite(p)]
        if errors:
            mean = sum(errors) / len(errors)
            lines.append(f'ivr_ewt_abs_error_seconds{{queue="{name}"}} {mean:.1f}')
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def _finite(x: float) -> float | None:
    """JSON has no Infinity: an EWT with no serving agent is reported as null."""
    return x if math.isfinite(x) else None


def make_web_app(ctx: FlowContext, dispatcher: Dispatcher) -> web.Application:
    app = web.Application(middlewares=[require_token])
    app[CTX] = ctx
    app[DISPATCHER] = dispatcher
    # No token configured: one is generated per start (never a default that reaches a
    # network); operators set http.api_token or IVR_API_TOKEN to keep one.
    app[TOKEN] = ctx.cfg.http.api_token or secrets.token_urlsafe(24)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/queues", queues)
    app.router.add_get("/api/agents", agents)
    app.router.add_post("/api/agents/{agent}/state", agent_state)
    return app
