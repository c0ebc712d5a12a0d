"""The HTTP API of the running service (against the real Asterisk): every route but the
health probe needs the token; bad requests are 4xx and change nothing."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from ivr.app import running
from ivr.flows.agents import AgentStatus
from ivr.sandbox import AsteriskInstance, free_port
from tests.appcfg import write_config


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
        assert svc.dispatcher is not None
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200 and (await r.json())["ari_connected"] is True
        for path in ("/api/queues", "/api/agents", "/metrics"):
            async with http.get(base + path) as r:
                assert r.status == 401, path
            async with http.get(base + path, headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 401, path
        async with http.get(f"{base}/api/queues", headers=auth) as r:
            body = await r.json()
            assert body["q7401"]["waiting"] == 0
        url = f"{base}/api/agents/agent5/state"
        async with http.post(url, headers=auth, json={"ready": False}) as r:
            assert r.status == 200 and (await r.json())["status"] == "not_ready"
        assert svc.dispatcher.agents["agent5"].status == AgentStatus.NOT_READY
        bads: list[object] = [{"ready": "yes"}, [], {"nope": 1}]
        for bad in bads:
            async with http.post(url, headers=auth, json=bad) as r:
                assert r.status == 400
        async with http.post(url, headers=auth, data=b"{not json") as r:
            assert r.status == 400
        assert svc.dispatcher.agents["agent5"].status == AgentStatus.NOT_READY  # unchanged
        async with http.post(f"{base}/api/agents/ghost/state", headers=auth,
                             json={"ready": True}) as r:
            assert r.status == 404
        async with http.post(url, headers=auth, json={"ready": True}) as r:
            assert (await r.json())["status"] == "available"
        async with http.get(f"{base}/metrics", headers=auth) as r:
            text = await r.text()
            assert 'ivr_queue_waiting{queue="q7401"} 0' in text
