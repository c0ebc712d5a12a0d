"""HTTP: health, metrics and a first read-only API. Reads the domain (queues, the agent board);
never talks to Asterisk. (The consoles and the full API come with their own issue.)

Safe by default: every malformed request is a 4xx with a JSON reason (``{"error": ...,
"status": ...}``), never a 500; a bug in a handler is logged and answered with a generic
500 that leaks no traceback."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from ivr.domain.agents import AgentBoard
from ivr.flows.context import FlowContext

log = logging.getLogger("ivr.web")

HealthProbe = Callable[[], Mapping[str, bool]]

CTX = web.AppKey("ctx", FlowContext)
AGENTS = web.AppKey("agents", AgentBoard)
TOKEN = web.AppKey("token", str)
HEALTH: web.AppKey[HealthProbe] = web.AppKey("health")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: the largest JSON body any route accepts
MAX_JSON_BODY = 64 * 1024

# Why /healthz is 503, per failing check.
_HEALTH_REASONS = {
    "ari_connected": "ARI websocket not connected",
    "events_task_alive": "ARI events task not running (being restarted)",
}
# Headers of an HTTP error worth keeping when it is turned into JSON.
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


def _error(status: int, reason: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": reason, "status": status}, status=status,
                             headers=headers)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: HTTP errors become JSON with their reason; anything unexpected is
    logged here and answered with a generic 500 (no traceback leaves the process)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {k: v for k in _KEPT_HEADERS if (v := exc.headers.get(k)) is not None}
        return _error(exc.status, exc.reason, kept)
    except asyncio.CancelledError:
        raise
    except Exception:
        route = request.match_info.route.resource
        where = route.canonical if route is not None else "?"
        log.exception("HTTP %s %s failed", request.method, where)
        return _error(500, "internal error (logged)")


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """R23: every route but the bare health probe needs the bearer token. A header that
    is not plain ASCII cannot hold it: 401 as for any wrong token."""
    if request.path == "/healthz":
        return await handler(request)
    given = request.headers.get("Authorization", "")
    expected = "Bearer " + request.app[TOKEN]
    try:
        given_bytes = given.encode("ascii")
    except UnicodeError:
        given_bytes = b""
    if not given_bytes or not hmac.compare_digest(given_bytes, expected.encode()):
        raise web.HTTPUnauthorized(reason="bearer token required",
                                   headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_json(request: web.Request, max_size: int = MAX_JSON_BODY) -> Any:
    """The request body as JSON, or an HTTP error with a reason: 415 for a body that is
    not ``application/json``, 413 above ``max_size`` bytes, 400 for anything that is not
    one valid JSON document (bad UTF-8, NaN, nested too deeply, empty)."""
    if "Content-Type" in request.headers:
        ctype = request.content_type
        if ctype != "application/json" and not (
            ctype.startswith("application/") and ctype.endswith("+json")
        ):
            raise web.HTTPUnsupportedMediaType(reason="send Content-Type: application/json")
    if request.content_length is not None and request.content_length > max_size:
        raise web.HTTPRequestEntityTooLarge(max_size, request.content_length,
                                            reason=f"body over {max_size} bytes")
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > max_size:
            raise web.HTTPRequestEntityTooLarge(max_size, len(body),
                                                reason=f"body over {max_size} bytes")
    if not body.strip():
        raise web.HTTPBadRequest(reason="body must be JSON (it is empty)")
    try:
        return json.loads(bytes(body), parse_constant=_no_constant)
    except RecursionError:
        raise web.HTTPBadRequest(reason="body is nested too deeply") from None
    except ValueError:
        raise web.HTTPBadRequest(reason="body must be JSON") from None


def default_health(ctx: FlowContext) -> HealthProbe:
    return lambda: {"ari_connected": ctx.ari.connected.is_set()}


async def healthz(request: web.Request) -> web.Response:
    """200 only when every check holds; 503 with the reason(s) otherwise."""
    checks = dict(request.app[HEALTH]())
    failing = [name for name, ok in checks.items() if not ok]
    body: dict[str, Any] = {"ok": not failing, **checks}
    if failing:
        body["reason"] = "; ".join(_HEALTH_REASONS.get(n, f"{n} is false") for n in failing)
    return web.json_response(body, status=503 if failing else 200)


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


async def list_agents(request: web.Request) -> web.Response:
    board = request.app[AGENTS]
    return web.json_response({
        a.id: {"status": a.status, "reachable": a.reachable, "queues": list(a.queues)}
        for a in board
    })


async def agent_state(request: web.Request) -> web.Response:
    """POST {"ready": true|false}: an agent goes ready / not-ready (R15). Busy, ringing
    and wrap-up agents are left alone; their state is reported back."""
    board = request.app[AGENTS]
    agent_id = request.match_info["agent"]
    if agent_id not in board:
        raise web.HTTPNotFound(reason=f"no agent {agent_id!r}")
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("ready"), bool):
        raise web.HTTPBadRequest(reason='body must be {"ready": true} or {"ready": false}')
    status = board.set_ready(agent_id, body["ready"])
    return web.json_response({"agent": agent_id, "status": status})


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


def make_web_app(
    ctx: FlowContext,
    agents: AgentBoard,
    *,
    token: str | None = None,
    health: HealthProbe | None = None,
) -> web.Application:
    """``token``: the bearer token (default: ``http.api_token``, else a random one for
    this app only; the service passes the one it keeps on disk). ``health``: the checks
    ``/healthz`` reports (default: the ARI websocket is connected)."""
    app = web.Application(middlewares=[errors, require_token], client_max_size=MAX_JSON_BODY)
    app[CTX] = ctx
    app[AGENTS] = agents
    app[TOKEN] = token or ctx.cfg.http.api_token or secrets.token_urlsafe(24)
    app[HEALTH] = health or default_health(ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/queues", queues)
    app.router.add_get("/api/agents", list_agents)
    app.router.add_post("/api/agents/{agent}/state", agent_state)
    return app
