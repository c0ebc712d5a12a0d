"""The API fuzzed from its own OpenAPI document with schemathesis (fast tier, the fake
ARI): generated and mutated requests to every operation get no 5xx, and every answer
matches the document (status code listed, content type, body schema)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakeari import FakeAri, service_on

TOKEN = "t0ken-for-fuzzing"
#: a bound on the whole run (it stops early once every operation had its examples)
MAX_TIME = 60
EXAMPLES = 25


@pytest.fixture
async def fake() -> AsyncIterator[FakeAri]:
    async with FakeAri() as f:
        f.endpoints["PJSIP/alice"] = "online"
        yield f


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
        fake: FakeAri, tmp_path: Path) -> None:
    agents = {"alice": {"endpoint": "PJSIP/alice", "queues": ["support"]}}
    async with service_on(fake, tmp_path, token=TOKEN, agents=agents) as (svc, base):
        cli = Path(sys.executable).with_name("schemathesis")
        proc = await asyncio.create_subprocess_exec(
            str(cli), "run", f"{base}/api/openapi.json",
            "--header", f"Authorization: Bearer {TOKEN}",
            "--checks", "not_a_server_error,status_code_conformance,"
            "content_type_conformance,response_schema_conformance",
            # the event stream never ends; login is fuzzed by its own limit (429)
            "--exclude-path", "/api/events",
            "--max-examples", str(EXAMPLES), "--max-time", str(MAX_TIME),
            "--seed", "20261129", "--phases", "examples,coverage,fuzzing",
            "--request-timeout", "10", "--workers", "1", "--generation-database", "none",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
        )
        out, _ = await asyncio.wait_for(proc.communicate(), MAX_TIME + 60)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text[-6000:]
        assert "No issues found" in text or " passed" in text, text[-3000:]
        # The run exercised the service for real: it booked callbacks and logged in.
        assert svc.ctx is not None and svc.ctx.counters.values.get("callbacks_committed", 0) > 0
