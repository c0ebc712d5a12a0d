"""The documented API (fast tier: the whole service on the fake ARI; the web layer never
talks to Asterisk). Auth and roles, CSRF, login limits, callbacks booked / listed /
cancelled from outside, the OpenAPI document, metrics, live events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from ivr import passwords
from ivr.domain.items import State
from tests.fakeari import FakeAri, service_on
from tests.support.waiting import until, until_async

TOKEN = "t0ken-for-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
ALICE_PW, BOB_PW, SUP_PW = "alice-secret-1", "bob-secret-22", "sup-secret-333"
_HASHES = {name: passwords.hash_password(pw)
           for name, pw in (("alice", ALICE_PW), ("bob", BOB_PW), ("sup", SUP_PW))}
AGENTS = {
    "alice": {"endpoint": "PJSIP/alice", "queues": ["support"],
              "password_hash": _HASHES["alice"]},
    "bob": {"endpoint": "PJSIP/bob", "queues": ["support"], "password_hash": _HASHES["bob"]},
    "carol": {"endpoint": "PJSIP/carol", "queues": ["support"]},  # softphone only
}
SUPERVISORS = {"sup": {"name": "Sam Supervisor", "password_hash": _HASHES["sup"]}}


@pytest.fixture
async def fake() -> AsyncIterator[FakeAri]:
    async with FakeAri() as f:
        # The softphones are not registered (agents offline): nothing is offered unless
        # a test says so with ``online``.
        for name in ("alice", "bob", "carol"):
            f.endpoints[f"PJSIP/{name}"] = "offline"
        yield f


def online(fake: FakeAri) -> None:
    for name in ("alice", "bob", "carol"):
        fake.endpoints[f"PJSIP/{name}"] = "online"


def jar() -> aiohttp.CookieJar:
    return aiohttp.CookieJar(unsafe=True)  # the service is on an IP address


class Console:
    """A browser-like client: cookie jar, CSRF token from the login answer."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(cookie_jar=jar())
        self.csrf = ""
        self.set_cookie = ""

    async def login(self, login: str, password: str) -> int:
        async with self.http.post(f"{self.base}/api/login",
                                  json={"login": login, "password": password}) as r:
            if r.status == 200:
                self.csrf = (await r.json())["csrf"]
                self.set_cookie = r.headers["Set-Cookie"]
            return r.status

    async def call(self, method: str, path: str, body: Any = None, *,
                   csrf: bool = True) -> tuple[int, Any]:
        headers = {"X-CSRF-Token": self.csrf} if csrf and method != "GET" else {}
        async with self.http.request(method, self.base + path, json=body,
                                     headers=headers, allow_redirects=False) as r:
            text = await r.text()
            ctype = r.content_type
            return r.status, json.loads(text) if ctype == "application/json" else text

    async def close(self) -> None:
        await self.http.close()


async def bearer(base: str, method: str, path: str, body: Any = None,
                 headers: Mapping[str, str] = BEARER) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(
            method, base + path, json=body, headers=headers, allow_redirects=False) as r:
        text = await r.text()
        return r.status, json.loads(text) if r.content_type == "application/json" else text


def service(fake: FakeAri, tmp_path: Path, **kw: Any) -> Any:
    return service_on(fake, tmp_path, token=TOKEN, agents=AGENTS, supervisors=SUPERVISORS,
                      **kw)


# ------------------------------------------------------------------ the document


async def test_openapi_document_is_valid_and_lists_every_route(fake: FakeAri,
                                                               tmp_path: Path) -> None:
    async with service(fake, tmp_path) as (svc, base):
        status, doc = await bearer(base, "GET", "/api/openapi.json")
        assert status == 200
        validate(doc)  # OpenAPI 3.1 rules, raises on any violation
        documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
        assert ("POST", "/api/callbacks") in documented
        assert ("POST", "/api/offers/{item}/accept") in documented
        assert ("GET", "/healthz") in documented and ("GET", "/metrics") in documented
        served = {(r.method, r.resource.canonical) for r in svc._runner.app.router.routes()
                  if r.resource is not None and r.method != "HEAD"}
        pages = {("GET", p) for p in ("/", "/login", "/agent", "/supervisor",
                                      "/static/{name}")}
        assert served - pages == documented
        # Every operation says who may call it; the public ones say so too.
        for path, ops in doc["paths"].items():
            for op in ops.values():
                assert op.get("security") == [] or "Access:" in op["description"], path
        schema = doc["components"]["schemas"]["CallbackIn"]
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) == {"queue", "number"}


# ------------------------------------------------------------------ auth and roles


async def test_every_route_but_health_and_login_needs_auth(fake: FakeAri,
                                                           tmp_path: Path) -> None:
    async with service(fake, tmp_path) as (_, base):
        _, doc = await bearer(base, "GET", "/api/openapi.json")
        for path, ops in doc["paths"].items():
            concrete = path.replace("{item}", "0" * 32).replace("{agent}", "alice")
            for method, op in ops.items():
                status, _ = await bearer(base, method.upper(), concrete, headers={})
                if op.get("security") == []:
                    assert status != 401, (method, path)
                else:
                    assert status == 401, (method, path, status)
                status, _ = await bearer(base, method.upper(), concrete,
                                         headers={"Authorization": "Bearer wrong"})
                assert status == 401 or op.get("security") == [], (method, path)
        # Pages send strangers to the login page; the login page itself is public.
        for page in ("/", "/agent", "/supervisor"):
            status, _ = await bearer(base, "GET", page, headers={})
            assert status == 303, page
        status, html = await bearer(base, "GET", "/login", headers={})
        assert status == 200 and "login-form" in html


async def test_roles_agent_supervisor_and_scoped_token(fake: FakeAri, tmp_path: Path) -> None:
    online(fake)
    async with service(fake, tmp_path) as (svc, base):
        alice, sup = Console(base), Console(base)
        try:
            assert await alice.login("alice", ALICE_PW) == 200
            assert await sup.login("sup", SUP_PW) == 200
            # The cookie: HttpOnly, SameSite=Strict, whole site.
            cookie = alice.set_cookie
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
            status, me = await alice.call("GET", "/api/me")
            assert (status, me["role"], me["agent"]) == (200, "agent", "alice")
            # An agent sees its own desk, not the queues, other agents or callbacks.
            for path in ("/api/queues", "/api/agents", "/api/callbacks", "/api/wallboard",
                         "/metrics", "/api/offers"):
                assert (await alice.call("GET", path))[0] == 403, path
            status, desk = await alice.call("GET", "/api/desk")
            assert status == 200 and desk["agent"]["id"] == "alice" and desk["offer"] is None
            # Own state only, and only with the CSRF token.
            assert (await alice.call("POST", "/api/agents/alice/state",
                                     {"state": "not_ready"}, csrf=False))[0] == 403
            assert svc.board.get("alice").status != "not_ready"
            status, body = await alice.call("POST", "/api/agents/alice/state",
                                            {"state": "not_ready"})
            assert (status, body["status"]) == (200, "not_ready")
            assert (await alice.call("POST", "/api/agents/bob/state",
                                     {"state": "not_ready"}))[0] == 403
            assert (await alice.call("POST", "/api/callbacks",
                                     {"queue": "support", "number": "2015550123"}))[0] == 403
            # An agent acts only on offers it holds.
            assert (await alice.call("POST", f"/api/offers/{'a' * 32}/accept"))[0] == 404
            # A supervisor sees everything, sets anyone's state, but takes no offers.
            assert (await sup.call("GET", "/api/queues"))[0] == 200
            status, agents = await sup.call("GET", "/api/agents")
            assert [a["id"] for a in agents["agents"]] == ["alice", "bob", "carol"]
            assert (await sup.call("POST", "/api/agents/bob/state",
                                   {"state": "not_ready"}))[0] == 200
            assert (await sup.call("GET", "/api/desk"))[0] == 403
            assert (await sup.call("POST", f"/api/offers/{'a' * 32}/accept"))[0] == 403
            # Logging out ends the session.
            assert (await alice.call("POST", "/api/logout"))[0] == 200
            assert (await alice.call("GET", "/api/me"))[0] == 401
            # carol has no password: no console login.
            carol = Console(base)
            assert await carol.login("carol", "any-password") == 401
            await carol.close()
        finally:
            await alice.close()
            await sup.close()


async def test_integration_token_is_limited_to_its_scopes(fake: FakeAri,
                                                          tmp_path: Path) -> None:
    http = {"api_scopes": ["callbacks"]}
    async with service(fake, tmp_path, http_extra=http) as (_, base):
        assert (await bearer(base, "GET", "/api/queues"))[0] == 403
        assert (await bearer(base, "POST", "/api/agents/alice/state",
                             {"state": "not_ready"}))[0] == 403
        status, cb = await bearer(base, "POST", "/api/callbacks",
                                  {"queue": "support", "number": "(201) 555-0123"})
        assert status == 201 and cb["e164"] == "+12015550123"
        assert (await bearer(base, "POST", f"/api/callbacks/{cb['id']}/cancel"))[0] == 200
        assert (await bearer(base, "GET", "/api/desk"))[0] == 403  # not an agent


async def test_login_failures_are_rate_limited(fake: FakeAri, tmp_path: Path) -> None:
    async with service(fake, tmp_path) as (_, base):
        c = Console(base)
        try:
            assert await c.login("nobody", "x" * 10) == 401  # same answer as a wrong pw
            for _ in range(4):
                assert await c.login("alice", "wrong-password") == 401
            # Five failures from this address: even the right password waits now.
            async with c.http.post(f"{base}/api/login",
                                   json={"login": "alice", "password": ALICE_PW}) as r:
                assert r.status == 429 and int(r.headers["Retry-After"]) > 0
            assert await c.login("bob", BOB_PW) == 429  # per address too
            assert await c.login("alice", "") == 400  # malformed: refused before counting
        finally:
            await c.close()


# ------------------------------------------------------------------ callbacks


REFUSED_NUMBERS = ["911", "+447700900123", "19005550123", "011442079460000", "5551234",
                   "not a number"]


async def test_callbacks_booked_from_outside(fake: FakeAri, tmp_path: Path) -> None:
    async with service(fake, tmp_path) as (svc, base):
        status, cb = await bearer(base, "POST", "/api/callbacks",
                                  {"queue": "support", "number": "+1 (201) 555-0123"})
        assert status == 201, cb
        assert (cb["kind"], cb["state"], cb["position"]) == ("callback", "callback_pending", 1)
        assert (cb["number"], cb["e164"]) == ("2015550123", "+12015550123")
        assert [h["event"] for h in cb["history"]] == ["callback_requested"]
        stored = await svc.store.load(cb["id"])
        assert stored is not None and stored.state == State.CALLBACK_PENDING  # durable
        # R12: one open callback per number and queue, in any form it is typed.
        status, dup = await bearer(base, "POST", "/api/callbacks",
                                   {"queue": "support", "number": "2015550123"})
        assert (status, dup["existing"]) == (409, cb["id"])
        # R13: the same guard as a caller's press 1.
        for number in REFUSED_NUMBERS:
            status, body = await bearer(base, "POST", "/api/callbacks",
                                        {"queue": "support", "number": number})
            assert status == 422 and "refused" in body["error"], number
            assert number not in body["error"]
        bad: list[Any] = [
            {"queue": "support"}, {"queue": "support", "number": 2015550124},
            {"queue": "support", "number": "2015550124", "extra": 1},
            {"queue": "support", "number": "2015550124", "not_before": "2030-01-01T10:00:00"},
            {"queue": "support", "number": "2015550124", "not_before": "tomorrow"},
            {"queue": "../etc", "number": "2015550124"}, [], "x",
        ]
        for body in bad:
            status, answer = await bearer(base, "POST", "/api/callbacks", body)
            assert status == 400, (body, answer)
        assert (await bearer(base, "POST", "/api/callbacks",
                             {"queue": "nope", "number": "2015550124"}))[0] == 404
        _, line = await bearer(base, "GET", "/api/queues")
        assert [i["id"] for i in line["queues"][0]["items"]] == [cb["id"]]  # nothing else
        # Cancel: closed, history says who; twice is a conflict; the number is free again.
        status, cancelled = await bearer(base, "POST", f"/api/callbacks/{cb['id']}/cancel")
        assert (status, cancelled["state"]) == (200, "cancelled")
        assert cancelled["history"][-1]["detail"]["reason"] == "cancelled by integration"
        assert (await bearer(base, "POST", f"/api/callbacks/{cb['id']}/cancel"))[0] == 409
        assert (await bearer(base, "POST", f"/api/callbacks/{'f' * 32}/cancel"))[0] == 404
        status, closed = await bearer(base, "GET", "/api/callbacks?status=closed")
        assert [c["id"] for c in closed["callbacks"]] == [cb["id"]]
        assert [h["event"] for h in closed["callbacks"][0]["history"]] == \
            ["callback_requested", "cancelled"]
        for query in ("status=bogus", "limit=0", "limit=abc", "limit=100000"):
            assert (await bearer(base, "GET", f"/api/callbacks?{query}"))[0] == 400, query
        status, again = await bearer(base, "POST", "/api/callbacks",
                                     {"queue": "support", "number": "201-555-0123"})
        assert status == 201 and again["id"] != cb["id"]


async def test_cancel_refuses_a_live_caller(fake: FakeAri, tmp_path: Path) -> None:
    async with service(fake, tmp_path) as (svc, base):
        chan = await fake.caller_enters("support", number="2015550199")
        await until(lambda: bool(svc.engine.items("support")), 5, "caller queued")
        item = svc.engine.items("support")[0]
        status, body = await bearer(base, "POST", f"/api/callbacks/{item.id}/cancel")
        assert status == 409 and "live caller" in body["error"]
        assert svc.engine.get(item.id).state == State.WAITING
        await fake.caller_hangs_up(chan)


async def test_scheduled_callback_joins_the_line_at_its_time(fake: FakeAri,
                                                             tmp_path: Path) -> None:
    async with service(fake, tmp_path) as (svc, base):
        soon = datetime.now(UTC) + timedelta(seconds=1.5)
        status, cb = await bearer(base, "POST", "/api/callbacks", {
            "queue": "support", "number": "2015550123", "not_before": soon.isoformat()})
        assert status == 201 and cb["position"] is None
        assert cb["history"][0]["event"] == "callback_scheduled"
        _, q = await bearer(base, "GET", "/api/queues")
        assert q["queues"][0]["waiting"] == 0
        assert [i["id"] for i in q["queues"][0]["scheduled"]] == [cb["id"]]

        async def joined() -> bool:
            _, q = await bearer(base, "GET", "/api/queues")
            return [i["id"] for i in q["queues"][0]["items"]] == [cb["id"]]

        await until_async(joined, 10, "the booked callback joins its queue")
        item = svc.engine.get(cb["id"])
        assert item.arrived_at == pytest.approx(soon.timestamp(), abs=0.01)


async def test_not_before_outside_business_hours_is_refused(fake: FakeAri,
                                                            tmp_path: Path) -> None:
    hours = {"timezone": "UTC", "mon-fri": ["08:00-18:00"]}
    queues = {"support": {"hours": hours}}
    async with service(fake, tmp_path, queues=queues) as (svc, base):
        now = datetime.now(UTC)
        days = [(now + timedelta(days=d)).replace(hour=h, minute=0, second=0, microsecond=0)
                for d in range(8) for h in (10, 12)]
        # The next Sunday noon (closed) and the next Monday 10:00 (open), both ahead.
        sunday = next(t for t in days if t.weekday() == 6 and t.hour == 12 and t > now)
        monday = next(t for t in days if t.weekday() == 0 and t.hour == 10 and t > now)
        status, body = await bearer(base, "POST", "/api/callbacks", {
            "queue": "support", "number": "2015550123", "not_before": sunday.isoformat()})
        assert status == 422 and "business hours" in body["error"]
        status, cb = await bearer(base, "POST", "/api/callbacks", {
            "queue": "support", "number": "2015550123", "not_before": monday.isoformat()})
        assert status == 201 and cb["arrived_at"].startswith(monday.strftime("%Y-%m-%dT10:00"))
        far = monday + timedelta(days=7)
        status, body = await bearer(base, "POST", "/api/callbacks", {
            "queue": "support", "number": "2015550124", "not_before": far.isoformat()})
        assert status == 422 and "expire_after" in body["error"]
        assert len(svc.engine.open_items()) == 1


# ------------------------------------------------------------------ metrics, events


async def test_metrics_are_prometheus_with_histograms_and_no_numbers(
        fake: FakeAri, tmp_path: Path) -> None:
    async with service(fake, tmp_path) as (_, base):
        await bearer(base, "POST", "/api/callbacks", {"queue": "support",
                                                      "number": "2015550123"})
        status, text = await bearer(base, "GET", "/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in families.values() for s in f.samples}
        key = ("ivr_events_total", (("event", "callbacks_committed"), ("queue", "support")))
        assert samples[key] == 1
        assert samples[("ivr_events_total", (("event", "offers"), ("queue", "support")))] == 0
        assert samples[("ivr_queue_waiting", (("kind", "callback"), ("queue", "support")))] == 1
        assert samples[("ivr_store_commit_seconds_count", ())] >= 1
        for name in ("ivr_wait_seconds", "ivr_dtmf_to_confirmation_seconds",
                     "ivr_accept_to_dial_seconds", "ivr_ewt_error_seconds",
                     "ivr_ari_reconnects", "ivr_agents", "ivr_queue_ewt_seconds"):
            assert name in families, name
        # No phone number anywhere (the booked one, in any form). Not a digit pattern:
        # a latency sum such as 0.0015551234 would match one.
        for form in ("2015550123", "+12015550123", "201-555-0123", "(201) 555"):
            assert form not in text


async def read_event(resp: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    kind, data = "", ""
    while True:
        line = (await resp.content.readline()).decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and data:
            return kind, json.loads(data)


async def test_live_events_follow_changes(fake: FakeAri, tmp_path: Path) -> None:
    online(fake)
    async with service(fake, tmp_path) as (svc, base):
        svc.board.set_ready("bob", False)
        svc.board.set_ready("carol", False)
        sup, alice = Console(base), Console(base)
        try:
            await sup.login("sup", SUP_PW)
            await alice.login("alice", ALICE_PW)
            await alice.call("POST", "/api/agents/alice/state", {"state": "not_ready"})
            async with sup.http.get(f"{base}/api/events") as stream, \
                    alice.http.get(f"{base}/api/events") as desk_stream:
                assert stream.headers["Content-Type"].startswith("text/event-stream")
                kind, board = await asyncio.wait_for(read_event(stream), 5)
                assert kind == "wallboard" and board["queues"][0]["waiting"] == 0
                kind, desk = await asyncio.wait_for(read_event(desk_stream), 5)
                assert kind == "desk" and desk["agent"]["status"] == "not_ready"
                started = time.monotonic()
                await bearer(base, "POST", "/api/callbacks",
                             {"queue": "support", "number": "2015550123"})
                while True:  # the change arrives before the periodic refresh would
                    kind, board = await asyncio.wait_for(read_event(stream), 5)
                    if board["queues"][0]["waiting"] == 1:
                        break
                assert time.monotonic() - started < 4.5
                funnel = board["stats"]["funnel"][0]
                assert (funnel["queue"], funnel["requested"]) == ("support", 1)
                # alice goes available: the callback is offered to her, her desk shows it.
                await alice.call("POST", "/api/agents/alice/state", {"state": "available"})
                while True:
                    kind, desk = await asyncio.wait_for(read_event(desk_stream), 5)
                    if desk["offer"] is not None:
                        break
                offer = desk["offer"]
                assert (desk["agent"]["status"], offer["kind"], offer["phase"]) == \
                    ("ringing", "callback", "ringing")
                assert (offer["number"], offer["attempts"]) == ("2015550123", 0)
        finally:
            await sup.close()
            await alice.close()


async def test_pages_are_served_with_a_strict_policy(fake: FakeAri, tmp_path: Path) -> None:
    async with service(fake, tmp_path) as (_, base):
        sup = Console(base)
        try:
            await sup.login("sup", SUP_PW)
            async with sup.http.get(f"{base}/supervisor") as r:
                assert r.status == 200 and "Wallboard" in await r.text()
                assert "script-src" not in r.headers["Content-Security-Policy"]
                assert "default-src 'self'" in r.headers["Content-Security-Policy"]
            async with sup.http.get(f"{base}/agent", allow_redirects=False) as r:
                assert r.status == 403  # a supervisor has no agent console
            async with sup.http.get(f"{base}/", allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/supervisor"
            for name in ("console.js", "console.css"):
                async with sup.http.get(f"{base}/static/{name}") as r:
                    assert r.status == 200 and len(await r.read()) > 1000
            async with sup.http.get(f"{base}/static/..%2Fapi.py") as r:
                assert r.status == 404
        finally:
            await sup.close()
