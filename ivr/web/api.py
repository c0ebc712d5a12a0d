"""HTTP: the documented API, the consoles' pages, health and metrics (SPEC R17-R19, R23).

Reads the domain through ``ivr.web.views``; changes go through the flows (the
dispatcher's offers, the desk's callbacks, the board's ready/not-ready); never talks to
Asterisk. Every route is in ``routes()`` (the OpenAPI document at ``/api/openapi.json``
is generated from it) with who may call it; ``ivr.web.auth`` says who is calling.

Safe by default: every malformed request is a 4xx with a JSON reason (``{"error": ...,
"status": ...}``) and changes nothing; a bug in a handler is logged and answered with a
generic 500 that leaks no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler
from pydantic import BaseModel, ValidationError

from ivr import __version__
from ivr.domain.agents import AgentBoard
from ivr.domain.queues import QueueError
from ivr.flows.agent_leg import NotNow
from ivr.flows.context import FlowContext
from ivr.flows.desk import Desk, Refused
from ivr.flows.dispatcher import Dispatcher
from ivr.web import auth, models, openapi, views
from ivr.web.auth import AGENT, SUPERVISOR, Principal
from ivr.web.live import LiveFeed
from ivr.web.metrics import Metrics
from ivr.web.openapi import Param, Route

log = logging.getLogger("ivr.web")

HealthProbe = Callable[[], Mapping[str, object]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)

CTX = web.AppKey("ctx", FlowContext)
AGENTS = web.AppKey("agents", AgentBoard)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
DESK = web.AppKey("desk", Desk)
TOKEN = web.AppKey("token", str)
SCOPES: web.AppKey[tuple[str, ...]] = web.AppKey("scopes")
HEALTH: web.AppKey[HealthProbe] = web.AppKey("health")
SESSIONS = web.AppKey("sessions", auth.Sessions)
LIMITER = web.AppKey("limiter", auth.LoginLimiter)
LOGINS: web.AppKey[dict[str, auth.Login]] = web.AppKey("logins")
FEED = web.AppKey("feed", LiveFeed)
METRICS = web.AppKey("metrics", Metrics)
SPEC: web.AppKey[dict[str, Any]] = web.AppKey("spec")
PRINCIPAL: web.RequestKey[Principal | None] = web.RequestKey("principal")

#: the largest JSON body any route accepts
MAX_JSON_BODY = 64 * 1024
#: the most closed callbacks one listing returns
MAX_LIST = 1000

# Why /healthz is 503, per failing check.
_HEALTH_REASONS = {
    "ari_connected": "ARI websocket not connected",
    "events_task_alive": "ARI events task not running (being restarted)",
}
# Headers of an HTTP error worth keeping when it is turned into JSON.
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After", "Location")
# The pages load only their own script and style (no inline code, nothing foreign).
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _error(status: int, reason: str, headers: Mapping[str, str] | None = None,
           extra: Mapping[str, Any] | None = None) -> web.Response:
    return web.json_response({"error": reason, "status": status, **(extra or {})},
                             status=status, headers=headers)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: HTTP errors become JSON with their reason; anything unexpected is
    logged here and answered with a generic 500 (no traceback leaves the process)."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {k: v for k in _KEPT_HEADERS if (v := exc.headers.get(k)) is not None}
        return _error(exc.status, exc.reason, kept)
    except Refused as exc:
        extra = {"existing": exc.existing} if exc.existing else {}
        return _error(exc.status, exc.reason, extra=extra)
    except asyncio.CancelledError:
        raise
    except Exception:
        route = request.match_info.route.resource
        where = route.canonical if route is not None else "?"
        log.exception("HTTP %s %s failed", request.method, where)
        return _error(500, "internal error (logged)")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


@web.middleware
async def identify(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who is calling: the bearer token (integration), else a console session cookie.
    Authorisation is per route (``_guard``); an unknown route is a 401 to strangers, so
    it says nothing about what exists."""
    app = request.app
    principal: Principal | None = None
    header = request.headers.get("Authorization")
    if header is not None:
        scopes: tuple[str, ...] = app[SCOPES]
        principal = auth.integration(app[TOKEN], header, scopes)
        if principal is None:
            raise web.HTTPUnauthorized(reason="bearer token required",
                                       headers={"WWW-Authenticate": "Bearer"})
    else:
        sid = request.cookies.get(auth.COOKIE)
        if sid:
            principal = app[SESSIONS].get(sid)
    request[PRINCIPAL] = principal
    if principal is None and request.match_info.http_exception is not None:
        raise web.HTTPUnauthorized(reason="log in or send the bearer token",
                                   headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


def _guard(route: Route) -> Handler:
    """The route's handler behind its access rule (and CSRF for cookie state changes)."""
    handler = route.handler
    if route.access == "public":
        return handler

    async def guarded(request: web.Request) -> web.StreamResponse:
        who: Principal | None = request[PRINCIPAL]
        if who is None:
            if route.media == "text/html":
                raise web.HTTPSeeOther(location="/login")
            raise web.HTTPUnauthorized(reason="log in or send the bearer token",
                                       headers={"WWW-Authenticate": "Bearer"})
        if not _allowed(who, route.access):
            raise web.HTTPForbidden(reason=f"not allowed for a {who.role} "
                                           f"(needs {route.access})")
        if request.method not in ("GET", "HEAD") and not auth.csrf_ok(who, request):
            raise web.HTTPForbidden(reason=f"missing or wrong {auth.CSRF_HEADER} header")
        return await handler(request)

    guarded.__name__ = handler.__name__
    guarded.__doc__ = handler.__doc__
    return guarded


def _allowed(who: Principal, access: str) -> bool:
    if access == "any":
        return True
    if access == "supervisor":
        return who.role == SUPERVISOR
    if access == "agent":
        return who.role == AGENT
    if access == "agents" and who.role == AGENT:
        return True  # for itself only: the handler checks which agent
    return who.may(access)


def principal(request: web.Request) -> Principal:
    who: Principal | None = request[PRINCIPAL]
    assert who is not None  # _guard let it through
    return who


def reply(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=model.model_dump_json(), status=status,
                        content_type="application/json")


# --------------------------------------------------------------------------- bodies


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


async def read_body(request: web.Request, model: type[M]) -> M:
    """The body validated by ``model`` in strict mode (``"yes"`` is not a boolean, ``1``
    is not a string); 400 naming the fields otherwise, never echoing the values: they
    may be phone numbers or passwords."""
    data = await read_json(request)
    try:
        return model.model_validate_json(json.dumps(data), strict=True)
    except ValidationError as exc:
        where = "; ".join(
            f"{_printable('.'.join(str(p) for p in e['loc'])) or 'body'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)[:5])
        fields = ", ".join(model.model_fields)
        raise web.HTTPBadRequest(reason=f"invalid body: {where} (fields: {fields})") from None


def _printable(text: str, limit: int = 40) -> str:
    """A client's own key names, safe to quote back (printable ASCII, bounded)."""
    out = "".join(c if c.isascii() and c.isprintable() else "?" for c in text)
    return out if len(out) <= limit else out[:limit] + "…"


def _query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not lo <= int(raw) <= hi:
        raise web.HTTPBadRequest(reason=f"{name} must be a whole number {lo}..{hi}")
    return int(raw)


# --------------------------------------------------------------------------- public


async def healthz(request: web.Request) -> web.Response:
    """200 only when every check holds; 503 with the reason(s) otherwise. No login."""
    checks = dict(request.app[HEALTH]())
    # True/false values are the checks; anything else (role, nodes down) is told.
    failing = [name for name, ok in checks.items() if isinstance(ok, bool) and not ok]
    body: dict[str, Any] = {"ok": not failing, **checks}
    if failing:
        body["reason"] = "; ".join(_HEALTH_REASONS.get(n, f"{n} is false") for n in failing)
    return web.json_response(body, status=503 if failing else 200)


async def login(request: web.Request) -> web.Response:
    """Console login. Answers the session (cookie ``ivr_session``: HttpOnly,
    SameSite=Strict) and the CSRF token to send as X-CSRF-Token. Failed attempts are
    limited per login and per address (429 with Retry-After)."""
    app = request.app
    creds = await read_body(request, models.LoginIn)
    keys = (f"login:{creds.login}", f"addr:{request.remote or '?'}")
    limiter = app[LIMITER]
    wait = limiter.retry_after(keys)
    if wait > 0:
        raise web.HTTPTooManyRequests(reason="too many failed logins; wait and try again",
                                      headers={"Retry-After": str(int(wait) + 1)})
    who = app[LOGINS].get(creds.login)
    # scrypt costs ~50 ms of CPU: off the event loop, so calls are not held up.
    ok = await asyncio.to_thread(auth.check_password, who, creds.password)
    if not ok or who is None:
        limiter.failed(keys)
        log.warning("console login failed for %r from %s", creds.login, request.remote)
        raise web.HTTPUnauthorized(reason="wrong login or password",
                                   headers={"WWW-Authenticate": "Bearer"})
    sid, p = app[SESSIONS].create(who)
    log.info("console login: %s (%s)", p.login, p.role)
    resp = reply(_me(p))
    resp.set_cookie(auth.COOKIE, sid, httponly=True, samesite="Strict", path="/",
                    secure=_tls(request), max_age=int(auth.MAX_AGE))
    return resp


def _tls(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"


def _me(p: Principal) -> models.Me:
    return models.Me(login=p.login, name=p.name, role=p.role,  # type: ignore[arg-type]
                     agent=p.agent_id, scopes=sorted(p.scopes), csrf=p.csrf or None)


async def logout(request: web.Request) -> web.Response:
    """End this console session (the cookie is cleared)."""
    sid = request.cookies.get(auth.COOKIE)
    if sid:
        request.app[SESSIONS].drop(sid)
    resp = web.json_response({"ok": True})
    resp.del_cookie(auth.COOKIE, path="/")
    return resp


async def me(request: web.Request) -> web.Response:
    """Who is logged in (role, agent id, scopes, CSRF token)."""
    return reply(_me(principal(request)))


async def spec(request: web.Request) -> web.Response:
    """This document."""
    return web.json_response(request.app[SPEC])


# --------------------------------------------------------------------------- reading


async def list_queues(request: web.Request) -> web.Response:
    """Every queue: the line in order (live callers and callbacks, position, wait,
    attempts), callbacks booked for later, EWT and its measured error."""
    request.app[CTX].engine.activate_scheduled()
    return reply(views.queues(request.app[CTX]))


async def list_agents(request: web.Request) -> web.Response:
    """Every agent and its state."""
    return reply(views.agents(request.app[AGENTS]))


async def list_offers(request: web.Request) -> web.Response:
    """Offers being delivered now (ringing, preview, dialling, connected)."""
    return reply(views.offers(request.app[CTX], request.app[DISPATCHER]))


async def my_desk(request: web.Request) -> web.Response:
    """An agent's console: its state, the offer it holds, how its last offer ended."""
    p = principal(request)
    assert p.agent_id is not None
    app = request.app
    return reply(views.desk(app[CTX], app[AGENTS], app[DISPATCHER], p.agent_id))


async def list_callbacks(request: web.Request) -> web.Response:
    """Callbacks with their full history: ``status=open`` (default; in queue order),
    ``closed`` (most recently closed first, up to ``limit``) or ``all``."""
    ctx = request.app[CTX]
    status = request.query.get("status", "open")
    if status not in ("open", "closed", "all"):
        raise web.HTTPBadRequest(reason="status must be open, closed or all")
    limit = _query_int(request, "limit", 100, 1, MAX_LIST)
    out: list[models.Callback] = []
    if status in ("open", "all"):
        ctx.engine.activate_scheduled()
        for name in ctx.cfg.queues:
            out.extend(views.callback_at(ctx, i, pos)
                       for pos, i in enumerate(ctx.engine.items(name), 1)
                       if i.kind == "callback")
            out.extend(views.callback_at(ctx, i, None) for i in ctx.engine.scheduled(name))
    if status in ("closed", "all"):
        out.extend(views.callback_at(ctx, i, None)
                   for i in await ctx.store.recent_callbacks(limit))
    return reply(models.Callbacks(callbacks=out))


async def get_callback(request: web.Request) -> web.Response:
    """One callback (open or closed) with its full history."""
    ctx = request.app[CTX]
    item_id = request.match_info["item"]
    try:
        item = ctx.engine.get(item_id)
    except QueueError:
        loaded = await ctx.store.load(item_id) if _item_id_ok(item_id) else None
        if loaded is None:
            raise web.HTTPNotFound(reason="no such callback") from None
        item = loaded
    if item.kind != "callback":
        raise web.HTTPNotFound(reason="no such callback")
    return reply(views.callback(ctx, item))


def _item_id_ok(item_id: str) -> bool:
    return 0 < len(item_id) <= 64 and item_id.isascii() and item_id.isalnum()


async def stats(request: web.Request) -> web.Response:
    """Today's outcome funnel per queue and the last hour of depth / longest wait."""
    return reply(await request.app[FEED].stats())


async def wallboard(request: web.Request) -> web.Response:
    """The supervisor wallboard in one body: queues, agents, stats."""
    return reply(await _wallboard(request.app))


async def _wallboard(app: web.Application) -> models.Wallboard:
    ctx = app[CTX]
    ctx.engine.activate_scheduled()
    return models.Wallboard(queues=views.queues(ctx).queues,
                            agents=views.agents(app[AGENTS]).agents,
                            stats=await app[FEED].stats())


async def live_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``desk`` (an agent's console body) or ``wallboard``
    (supervisors and the token with scope read), at each change and every few
    seconds."""
    p = principal(request)
    app = request.app
    if p.role != AGENT and not p.may("read"):
        raise web.HTTPForbidden(reason="needs scope read")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)

    async def send() -> None:
        if p.agent_id is not None:
            body = views.desk(app[CTX], app[AGENTS], app[DISPATCHER], p.agent_id)
            kind = "desk"
        else:
            body = await _wallboard(app)  # type: ignore[assignment]
            kind = "wallboard"
        await resp.write(f"event: {kind}\ndata: {body.model_dump_json()}\n\n".encode())

    with contextlib.suppress(ConnectionError):  # the page went away
        await app[FEED].stream(send)
    return resp


# --------------------------------------------------------------------------- changes


async def agent_state(request: web.Request) -> web.Response:
    """An agent goes available / not ready (R15): ``{"state": "available"}`` or
    ``{"state": "not_ready"}``. Ringing, busy and wrap-up agents are left as they are;
    the state now is answered. An agent may set only its own state."""
    board = request.app[AGENTS]
    p = principal(request)
    agent_id = request.match_info["agent"]
    if p.role == AGENT and p.agent_id != agent_id:
        raise web.HTTPForbidden(reason="an agent sets only its own state")
    if agent_id not in board:
        raise web.HTTPNotFound(reason=f"no agent {agent_id!r}")
    body = await read_body(request, models.AgentStateIn)
    status = board.set_ready(agent_id, body.wants_ready)
    return reply(models.AgentStateOut(agent=agent_id, status=status.value))


async def accept_offer(request: web.Request) -> web.Response:
    """Accept the offer (the softphone's 1): the customer is dialled once the phone is
    answered. The first of key and button wins; 409 when it no longer applies."""
    return await _decide(request, accept=True)


async def decline_offer(request: web.Request) -> web.Response:
    """Decline the offer (the softphone's 2): it goes back to its place for another
    agent. 409 when it no longer applies."""
    return await _decide(request, accept=False)


async def _decide(request: web.Request, *, accept: bool) -> web.Response:
    p = principal(request)
    assert p.agent_id is not None
    item_id = request.match_info["item"]
    try:
        leg = request.app[DISPATCHER].decide(p.agent_id, item_id, accept)
    except KeyError:
        raise web.HTTPNotFound(reason="you hold no such offer") from None
    except NotNow as exc:
        raise web.HTTPConflict(reason=str(exc)) from None
    log.info("[item=%s] agent %s %s on the console", item_id[:12], p.agent_id,
             "accepted" if accept else "declined")
    return reply(models.Decision(item_id=item_id, decision="accept" if accept else "decline",
                                 phase=leg.phase.value))


async def create_callback(request: web.Request) -> web.Response:
    """Book a callback from outside (a website's "call me back"): the queue's number
    guard and dedupe apply as for a caller's press 1; committed to disk before the 201.
    ``not_before`` books it for later, inside business hours: it joins the line at that
    time, behind everyone who came earlier. 409 (with ``existing``) when this number
    already has an open callback in the queue; 422 when the number or time is refused."""
    body = await read_body(request, models.CallbackIn)
    not_before = body.not_before.timestamp() if body.not_before is not None else None
    item = await request.app[DESK].create_callback(body.queue, body.number, not_before)
    return reply(views.callback(request.app[CTX], item), status=201)


async def cancel_callback(request: web.Request) -> web.Response:
    """Cancel an open callback. An agent ringing, previewing or dialling it stops at
    once; nobody is dialled after it."""
    item_id = request.match_info["item"]
    p = principal(request)
    item = await request.app[DESK].cancel_callback(item_id, by=p.login)
    return reply(views.callback(request.app[CTX], item))


# --------------------------------------------------------------------------- pages


def _page(name: str) -> Handler:
    text = resources.files("ivr.web").joinpath("static", name).read_text("utf-8")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/html", headers=_PAGE_HEADERS)

    page.__name__ = "page_" + name.removesuffix(".html")
    return page


async def home(request: web.Request) -> web.Response:
    """The console for whoever is logged in."""
    who: Principal | None = request[PRINCIPAL]
    if who is None:
        raise web.HTTPSeeOther(location="/login")
    raise web.HTTPSeeOther(location="/agent" if who.role == AGENT else "/supervisor")


_STATIC = {"console.js": "text/javascript", "console.css": "text/css"}


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound(reason="no such file")
    data = resources.files("ivr.web").joinpath("static", name).read_bytes()
    return web.Response(body=data, content_type=_STATIC[name],
                        headers={"Cache-Control": "no-cache",
                                 "X-Content-Type-Options": "nosniff"})


# --------------------------------------------------------------------------- routes


_ITEM = Param("item", "path", {"type": "string", "pattern": "^[0-9a-f]{32}$"},
              "work item id")
_AGENT = Param("agent", "path", {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,64}$"},
               "agent id")


def routes(metrics_handler: Handler) -> list[Route]:
    return [
        Route("GET", "/healthz", healthz, "Health probe", "public", response=models.Health,
              also=(503,), tag="operations"),
        Route("GET", "/metrics", metrics_handler, "Prometheus metrics", "read",
              media="text/plain", tag="operations"),
        Route("GET", "/api/openapi.json", spec, "This OpenAPI document", "any"),
        Route("POST", "/api/login", login, "Console login", "public", body=models.LoginIn,
              response=models.Me, tag="session"),
        Route("POST", "/api/logout", logout, "Console logout", "any", tag="session"),
        Route("GET", "/api/me", me, "Who is logged in", "any", response=models.Me,
              tag="session"),
        Route("GET", "/api/queues", list_queues, "Queues and their lines", "read",
              response=models.Queues, tag="queues"),
        Route("GET", "/api/agents", list_agents, "Agents and their states", "read",
              response=models.Agents, tag="agents"),
        Route("POST", "/api/agents/{agent}/state", agent_state, "Set available / not ready",
              "agents", body=models.AgentStateIn, response=models.AgentStateOut,
              params=(_AGENT,), tag="agents"),
        Route("GET", "/api/desk", my_desk, "The agent's console", "agent",
              response=models.Desk, tag="offers"),
        Route("GET", "/api/offers", list_offers, "Offers in delivery", "read",
              response=models.Offers, tag="offers"),
        Route("POST", "/api/offers/{item}/accept", accept_offer, "Accept an offer", "agent",
              response=models.Decision, params=(_ITEM,), tag="offers"),
        Route("POST", "/api/offers/{item}/decline", decline_offer, "Decline an offer",
              "agent", response=models.Decision, params=(_ITEM,), tag="offers"),
        Route("GET", "/api/callbacks", list_callbacks, "Callbacks with history", "read",
              response=models.Callbacks, tag="callbacks", params=(
                  Param("status", "query", {"enum": ["open", "closed", "all"]},
                        required=False),
                  Param("limit", "query", {"type": "integer", "minimum": 1,
                                           "maximum": MAX_LIST}, required=False))),
        Route("POST", "/api/callbacks", create_callback, "Book a callback", "callbacks",
              body=models.CallbackIn, response=models.Callback, status=201,
              tag="callbacks"),
        Route("GET", "/api/callbacks/{item}", get_callback, "One callback", "read",
              response=models.Callback, params=(_ITEM,), tag="callbacks"),
        Route("POST", "/api/callbacks/{item}/cancel", cancel_callback, "Cancel a callback",
              "callbacks", response=models.Callback, params=(_ITEM,), tag="callbacks"),
        Route("GET", "/api/stats", stats, "Today's funnel and the last hour", "read",
              response=models.Stats, tag="supervisor"),
        Route("GET", "/api/wallboard", wallboard, "The wallboard in one body", "read",
              response=models.Wallboard, tag="supervisor"),
        Route("GET", "/api/events", live_events, "Live updates (server-sent events)", "any",
              media="text/event-stream", tag="supervisor"),
        # Pages: the login page is public; the consoles need a login (else -> /login).
        Route("GET", "/", home, "Home", "public", media="text/html", documented=False),
        Route("GET", "/login", _page("login.html"), "Login page", "public",
              media="text/html", documented=False),
        Route("GET", "/agent", _page("agent.html"), "Agent console", "agent",
              media="text/html", documented=False),
        Route("GET", "/supervisor", _page("supervisor.html"), "Supervisor wallboard",
              "supervisor", media="text/html", documented=False),
        Route("GET", "/static/{name}", static, "Page assets", "public", documented=False),
    ]


def default_health(ctx: FlowContext) -> HealthProbe:
    return lambda: {"ari_connected": ctx.ari.connected.is_set()}


def make_web_app(
    ctx: FlowContext,
    agents: AgentBoard,
    dispatcher: Dispatcher,
    *,
    token: str | None = None,
    health: HealthProbe | None = None,
    feed: LiveFeed | None = None,
) -> web.Application:
    """``token``: the integration bearer token (default: ``http.api_token``, else a
    random one for this app only; the service passes the one it keeps on disk).
    ``health``: the checks ``/healthz`` reports (default: the ARI websocket is up).
    ``feed``: the live feed (default: one with the standard timings)."""
    app = web.Application(middlewares=[errors, identify], client_max_size=MAX_JSON_BODY)
    app[CTX] = ctx
    app[AGENTS] = agents
    app[DISPATCHER] = dispatcher
    app[DESK] = Desk(ctx)
    app[TOKEN] = token or ctx.cfg.http.api_token or secrets.token_urlsafe(24)
    app[SCOPES] = ctx.cfg.http.api_scopes
    app[HEALTH] = health or default_health(ctx)
    app[SESSIONS] = auth.Sessions()
    app[LIMITER] = auth.LoginLimiter()
    app[LOGINS] = auth.logins(ctx.cfg)
    app[FEED] = feed or LiveFeed(ctx)
    app[METRICS] = Metrics(ctx, agents)
    table = routes(make_aiohttp_handler(app[METRICS].registry, disable_compression=True))
    app[SPEC] = openapi.build(table, __version__)
    for r in table:
        app.router.add_route(r.method, r.path, _guard(r), name=None)

    async def started(app: web.Application) -> None:
        app[FEED].start()

    async def stopping(app: web.Application) -> None:
        await app[FEED].close()  # open event streams end now, not at a timeout

    app.on_startup.append(started)
    app.on_shutdown.append(stopping)
    return app
