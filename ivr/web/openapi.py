"""The route table and the OpenAPI 3.1 document generated from it.

Each route names its request model, its response model and who may call it; the
aiohttp router is built from the same table, so the document at
``/api/openapi.json`` lists exactly the routes that exist, with the schemas the
handlers validate and answer with (pydantic's JSON Schema is draft 2020-12, the
dialect of OpenAPI 3.1).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ivr.web import models

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: who may call a route: nobody needs to be logged in; anyone logged in (or the token);
#: a scope (integration token scope, or a supervisor); supervisors only; agents only
Access = Literal["public", "any", "read", "callbacks", "agents", "supervisor", "agent"]


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query"]
    schema: dict[str, Any]
    description: str = ""
    required: bool = True


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    access: Access
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    #: other statuses answered with the success model (e.g. 503 of /healthz)
    also: tuple[int, ...] = ()
    #: the success body is not JSON (``text/plain``, ``text/event-stream``, HTML)
    media: str = "application/json"
    params: Sequence[Param] = field(default_factory=tuple)
    tag: str = "api"
    #: in the document (the HTML pages are not an API)
    documented: bool = True


def _schema_ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def build(routes: Sequence[Route], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``routes``."""
    used: set[type[BaseModel]] = {models.Error}
    for r in routes:
        if r.documented:
            used.update(m for m in (r.body, r.response) if m is not None)
    mode: Literal["validation"] = "validation"
    pairs = [(m, mode) for m in sorted(used, key=lambda m: m.__name__)]
    _, top = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = top.get("$defs", {})
    paths: dict[str, Any] = {}
    for r in routes:
        if not r.documented:
            continue
        op: dict[str, Any] = {
            "operationId": f"{r.method.lower()}_{r.handler.__name__}",
            "summary": r.summary,
            "tags": [r.tag],
            "responses": _responses(r),
        }
        if r.handler.__doc__:
            op["description"] = " ".join(r.handler.__doc__.split())
        if r.access == "public":
            op["security"] = []
        else:
            op["description"] = (op.get("description", "") + f" Access: {_ACCESS[r.access]}.")\
                .strip()
        if r.params:
            op["parameters"] = [
                {"name": p.name, "in": p.where, "required": p.required or p.where == "path",
                 "schema": p.schema, **({"description": p.description} if p.description else {})}
                for p in r.params
            ]
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": _schema_ref(r.body)}}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ivr — direct callback for Asterisk",
            "version": version,
            "description": (
                "Queues, agents, offers and callbacks of the callback IVR. Authenticate "
                "with the integration bearer token (scoped by http.api_scopes) or a console "
                "session cookie from POST /api/login (state changes then need the "
                "X-CSRF-Token header from the login answer). Errors are JSON "
                "{error, status}."),
        },
        "servers": [{"url": "/"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "http.api_token / IVR_API_TOKEN"},
                "session": {"type": "apiKey", "in": "cookie", "name": "ivr_session"},
            },
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
    }


_ACCESS = {
    "any": "any login or the token",
    "read": "supervisors, or the token with scope read",
    "callbacks": "supervisors, or the token with scope callbacks",
    "agents": "supervisors, or the token with scope agents (an agent for itself)",
    "supervisor": "supervisors",
    "agent": "the agent who holds the offer (console login)",
}


def _responses(r: Route) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if r.response is not None:
        ok["content"] = {r.media: {"schema": _schema_ref(r.response)}}
    elif r.media == "application/json":
        ok["content"] = {"application/json": {"schema": {}}}
    else:
        ok["content"] = {r.media: {"schema": {"type": "string"}}}
    error = {"description": "an error, with the reason",
             "content": {"application/json": {"schema": _schema_ref(models.Error)}}}
    out = {str(r.status): ok}
    for status in r.also:
        out[str(status)] = {**ok, "description": "see the body"}
    out["default"] = error
    return out
