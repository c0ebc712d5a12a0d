"""The HTTP API of the running service: every route but the health probe needs the token;
bad requests are 4xx with a JSON reason and change nothing. The first test runs against
the real Asterisk; the malformed-request tests use the fake ARI (fast tier)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from ivr.app import running
from ivr.domain.agents import AgentStatus
from rig.sandbox import AsteriskInstance, free_port
from tests.fakeari import FakeAri, service_on
from tests.support import api
from tests.support.config import write_config


async def test_api_auth_agent_state_and_bad_requests(
    asterisk: AsteriskInstance, tmp_path: Path
) -> None:
    port = free_port(udp=False)
    cfg = write_config(asterisk, tmp_path, {"q7401": {"max_waiting": 5}},
                       {"agent5": {"endpoint": "PJSIP/agent5", "queues": ["q7401"]}},
                       http={"bind": "127.0.0.1", "port": port, "api_token": "t0ken-for-tests"})
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer t0ken-for-tests"}
    async with running(cfg, http=True) as svc, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200 and (await r.json())["ari_connected"] is True
        for path in ("/api/queues", "/api/agents", "/metrics"):
            async with http.get(base + path) as r:
                assert r.status == 401, path
            async with http.get(base + path, headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 401, path
        async with http.get(f"{base}/api/queues", headers=auth) as r:
            body = await r.json()
            assert api.queue(body, "q7401")["waiting"] == 0
        url = f"{base}/api/agents/agent5/state"
        async with http.post(url, headers=auth, json={"ready": False}) as r:
            assert r.status == 200 and (await r.json())["status"] == "not_ready"
        assert svc.board.get("agent5").status == AgentStatus.NOT_READY
        bads: list[object] = [{"ready": "yes"}, [], {"nope": 1}]
        for bad in bads:
            async with http.post(url, headers=auth, json=bad) as r:
                assert r.status == 400
        async with http.post(url, headers={**auth, "Content-Type": "application/json"},
                             data=b"{not json") as r:
            assert r.status == 400
        async with http.post(url, headers=auth, data=b"{not json") as r:
            assert r.status == 415  # application/octet-stream
        assert svc.board.get("agent5").status == AgentStatus.NOT_READY  # unchanged
        async with http.post(f"{base}/api/agents/ghost/state", headers=auth,
                             json={"ready": True}) as r:
            assert r.status == 404
        async with http.post(url, headers=auth, json={"ready": True}) as r:
            assert (await r.json())["status"] == "available"
        async with http.get(f"{base}/metrics", headers=auth) as r:
            text = await r.text()
            assert api.metric(text, "ivr_queue_waiting", queue="q7401") == 0


# ------------------------------------------------------------------ malformed requests
# Fast tier (the fake ARI; the web layer never talks to Asterisk): every malformed
# request is a 4xx with a JSON reason, never a 500, and changes nothing.

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AGENT = {"agent5": {"endpoint": "PJSIP/agent5", "queues": ["support"]}}


async def raw_request(base: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes no HTTP client library would (a header that is not latin-1, raw
    UTF-8, 0xff); returns the status and the response body."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + b"\r\nHost: x\r\nConnection: close\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def error_of(body: bytes) -> str:
    doc = json.loads(body)
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], doc
    return str(doc["error"])


@pytest.fixture
async def fake() -> AsyncIterator[FakeAri]:
    async with FakeAri() as f:
        f.endpoints["PJSIP/agent5"] = "online"
        yield f


async def test_malformed_authorization_is_401(fake: FakeAri, tmp_path: Path) -> None:
    async with service_on(fake, tmp_path, token=TOKEN, agents=AGENT) as (_, base):
        for value in (b"Bearer \xff", "Bearer \u2603".encode(), b"Bearer " + TOKEN.encode()
                      + b"\xff", "Bearer \u00e9t\u00e9".encode("latin-1"), b"\xff\xfe",
                      b"Basic " + TOKEN.encode(), b"Bearer", b"Bearer  " + TOKEN.encode()):
            status, body = await raw_request(
                base, b"GET /api/queues HTTP/1.1\r\nAuthorization: " + value)
            assert status == 401, value
            assert "token" in error_of(body)
        status, _ = await raw_request(
            base, b"GET /api/queues HTTP/1.1\r\nAuthorization: Bearer " + TOKEN.encode())
        assert status == 200
        latin1 = {"Authorization": "Bearer \xff"}
        async with aiohttp.ClientSession() as http, \
                http.get(f"{base}/metrics", headers=latin1) as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
            assert "token" in error_of(await r.read())


async def test_malformed_json_bodies_are_4xx(fake: FakeAri, tmp_path: Path) -> None:
    async with service_on(fake, tmp_path, token=TOKEN, agents=AGENT) as (svc, base), \
            aiohttp.ClientSession() as http:
        url = f"{base}/api/agents/agent5/state"
        before = svc.board.get("agent5").status
        js = {**AUTH, "Content-Type": "application/json"}
        cases: list[tuple[dict[str, str], bytes, int, str]] = [
            (js, b"{not json", 400, "JSON"),
            (js, b"", 400, "empty"),
            (js, b"   ", 400, "empty"),
            (js, b'{"ready": NaN}', 400, "JSON"),
            (js, b'{"ready": true} trailing', 400, "JSON"),
            (js, b'{"ready": \xff}', 400, "JSON"),
            (js, b"\xff\xfe\x00", 400, "JSON"),
            (js, b"[" * 100_000 + b"]" * 100_000, 413, "bytes"),
            (js, b'{"a":' * 20_000 + b"1" + b"}" * 20_000, 413, "bytes"),
            (js, b"[" * 30_000 + b"]" * 30_000, 400, "nested"),
            (js, b'{"a":' * 9_000 + b"1" + b"}" * 9_000, 400, "nested"),
            (js, b'{"ready": true, "pad": "' + b"x" * 70_000 + b'"}', 413, "bytes"),
            (js, b'{"ready": "yes"}', 400, "ready"),
            (js, b"[]", 400, "ready"),
            (js, b'{"ready": 1}', 400, "ready"),
            (js, b"1" * 5_000, 400, "JSON"),
            ({**AUTH, "Content-Type": "text/plain"}, b'{"ready": true}', 415, "application/json"),
            ({**AUTH, "Content-Type": "application/x-www-form-urlencoded"}, b"ready=true",
             415, "application/json"),
            ({**AUTH, "Content-Type": "application/octet-stream"}, b'{"ready": true}', 415,
             "application/json"),
        ]
        for headers, data, status, reason in cases:
            async with http.post(url, headers=headers, data=data) as r:
                body = await r.read()
                assert r.status == status, (data[:40], r.status, body[:200])
                assert reason in error_of(body), (data[:40], body)
        # Chunked (no Content-Length): the cap holds while reading.
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b" " * 1024

        async with http.post(url, headers=js, data=chunks()) as r:
            assert r.status == 413
        assert svc.board.get("agent5").status == before  # nothing changed
        # A charset parameter and a +json type are fine; so is no Content-Type at all.
        async with http.post(url, headers={**AUTH, "Content-Type":
                                           "application/json; charset=utf-8"},
                             data=b'{"ready": false}') as r:
            assert r.status == 200 and (await r.json())["status"] == "not_ready"
        async with http.post(url, headers={**AUTH, "Content-Type": "application/merge+json"},
                             data=b'{"ready": true}') as r:
            assert r.status == 200 and (await r.json())["status"] == "available"
        status, body = await raw_request(
            base, b"POST /api/agents/agent5/state HTTP/1.1\r\nAuthorization: Bearer "
            + TOKEN.encode(), b'{"ready": false}')
        assert status == 200 and json.loads(body)["status"] == "not_ready"


async def test_unknown_routes_and_methods(fake: FakeAri, tmp_path: Path) -> None:
    async with service_on(fake, tmp_path, token=TOKEN, agents=AGENT) as (_, base), \
            aiohttp.ClientSession() as http:
        for method, path, status in [
            ("GET", "/nope", 404),
            ("GET", "/api/queues/extra", 404),
            ("POST", "/api/agents/ghost/state", 404),
            ("POST", "/api/agents/%E2%98%83%0D%0A/state", 404),
            ("GET", "/api/agents/agent5/state", 405),
            ("POST", "/api/queues", 405),
            ("DELETE", "/metrics", 405),
            ("POST", "/healthz", 405),
        ]:
            headers = {**AUTH, "Content-Type": "application/json"}
            async with http.request(method, base + path, headers=headers,
                                    data=b'{"ready": true}') as r:
                body = await r.read()
                assert r.status == status, (method, path, r.status, body)
                error_of(body)
                if status == 405:
                    assert r.headers.get("Allow"), (method, path)
        # Without the token an unknown route says nothing about what exists.
        async with http.get(f"{base}/nope") as r:
            assert r.status == 401


async def test_a_handler_bug_is_a_generic_500(
    fake: FakeAri, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    async with service_on(fake, tmp_path, token=TOKEN, agents=AGENT) as (svc, base), \
            aiohttp.ClientSession() as http:

        def broken(agent_id: str, ready: bool) -> None:
            raise KeyError("secret detail 5551234")

        monkeypatch.setattr(svc.board, "set_ready", broken)
        async with http.post(f"{base}/api/agents/agent5/state", headers=AUTH,
                             json={"ready": True}) as r:
            text = await r.text()
            assert r.status == 500
            assert json.loads(text) == {"error": "internal error (logged)", "status": 500}
            assert "secret" not in text and "Traceback" not in text
        logged = [r for r in caplog.records if r.name == "ivr.web" and r.exc_info]
        assert logged and "/api/agents/{agent}/state" in logged[0].getMessage()
        # The service goes on.
        async with http.get(f"{base}/api/queues", headers=AUTH) as r:
            assert r.status == 200
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200
