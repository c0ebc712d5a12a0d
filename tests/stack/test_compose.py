"""docker-compose.yml as an operator runs it, proven with real SIP calls from this host.

The stack (Asterisk 22 and the service, built from this checkout) runs on a private Docker
engine, on free ports, with generated secrets (``tests/stack/harness.py``). Then:

1. The shape an operator relies on: ARI (8088) is published nowhere, SIP and RTP are, the
   console's ``/healthz`` answers without a token.
2. A customer calls the DID through the carrier trunk (sipp on the host's address, to the
   published SIP port): it is in the API's queue; the offer is played to it (Asterisk's
   own log names the offer file played on the caller's channel, and the service counts
   the offer); it presses 1 (RFC 4733 through the published RTP range); the confirmation
   plays and Asterisk hangs up; the callback is in the API and in the SQLite store on
   the volume, with the caller's number.
3. Two more customers wait. The service is stopped (SIGTERM: a graceful stop, exit 0),
   then its container is recreated (``up -d --force-recreate --no-deps ivr``, an upgrade):
   the new one re-adopts the waiting callers in their original order with the same ids,
   and their calls were never dropped (no BYE from Asterisk; our BYE later gets a 200).
4. The shipped ``.env.example`` is refused by both images (placeholders left).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from rig.stack import REPO, Project, StackError
from tests.peers.caller import CallerResult
from tests.stack.harness import IMAGE_TAG, Stack, StackCaller
from tests.support.waiting import until

#: seconds the waiting callers stay on the line: long enough for a stop and a recreate
HOLD = 25.0
OFFER_FILE = "/usr/share/ivr/prompts/en/offer"
CALLER_A, CALLER_B, CALLER_C = "2015550123", "2015550124", "2015550125"


def _line(stack: Stack) -> list[dict[str, Any]] | None:
    """The queue's items, or None while the service does not answer (restarting)."""
    try:
        return stack.line()
    except (OSError, StackError, ValueError):
        return None


def _ids(items: list[dict[str, Any]] | None) -> list[str]:
    return [i["id"] for i in items or []]


def _waiting_is(stack: Stack, n: int) -> Callable[[], bool]:
    return lambda: len(_ids(_line(stack))) == n


def _bye_answered(result: CallerResult) -> bool:
    """Our BYE got a 200 OK: the dialog was still alive in Asterisk."""
    return any(m.direction == "received" and m.method == "BYE" and m.status == 200
               for m in result.messages)


def _asterisk_sdp(caller: StackCaller) -> str:
    for m in caller.messages():
        if m.direction == "received" and m.method == "INVITE" and m.status == 200:
            return m.body
    return ""


def _still_in_call(caller: StackCaller) -> bool:
    bye_from_asterisk = any(m.direction == "received" and m.is_request and m.method == "BYE"
                            for m in caller.messages())
    return caller.running and not bye_from_asterisk


async def test_a_real_call_into_the_stack_and_an_upgrade_while_callers_wait(
    stack: Stack, stack_caller: Callable[..., StackCaller],
) -> None:
    # 1. What is published: SIP and RTP on the host, ARI nowhere; health without a token.
    asterisk_id = stack.project.container_id("asterisk")
    published = stack.engine.docker("port", asterisk_id).stdout
    assert f"5060/udp -> 0.0.0.0:{stack.sip_port}" in published, published
    assert f"{stack.rtp[0]}/udp -> 0.0.0.0:{stack.rtp[0]}" in published, published
    assert "8088" not in published, f"ARI must never be published:\n{published}"
    assert stack.get("/healthz", auth=False)[0] == 200
    assert stack.get("/api/queues", auth=False)[0] == 401
    # Asterisk's verbose messages (which file it plays on which channel) to a file.
    stack.asterisk_cli("core set verbose 3")
    stack.asterisk_cli("logger add channel stacktest.log verbose(3)")

    # 2. A customer calls, hears the offer, presses 1.
    a = stack_caller(caller=CALLER_A, digits=[(6.0, "1")], max_duration=60)
    a.start()
    await a.wait_answered(30)
    await until(lambda: len(_ids(_line(stack))) == 1, 15, "caller A in GET /api/queues")
    first = stack.line()[0]
    assert first["kind"] == "inbound", first
    sdp = _asterisk_sdp(a)
    # NAT done right: Asterisk announces the host's address and a published RTP port.
    m = re.search(r"^m=audio (\d+) ", sdp, re.M)
    assert f"c=IN IP4 {stack.host}" in sdp and m is not None, sdp
    assert stack.rtp[0] <= int(m[1]) <= stack.rtp[1], sdp
    await until(lambda: stack.event_count("offers") >= 1, 20, "the offer to caller A")
    result = await a.wait(60)
    assert result.answered and result.rejected_with is None, a.describe()
    assert result.hung_up_by == "them", f"Asterisk hangs up after the confirmation\n{a.describe()}"
    assert stack.event_count("callbacks_committed") == 1, stack.logs("ivr")
    played = stack.exec("asterisk", "cat", "/var/log/asterisk/stacktest.log")
    offer_lines = [ln for ln in played.splitlines()
                   if "PJSIP/carrier-" in ln and f"Playing '{OFFER_FILE}." in ln]
    assert offer_lines, f"Asterisk did not play the offer to the caller:\n{played[-3000:]}"
    assert "/en/confirmation." in played, played[-3000:]

    line = stack.line()
    assert len(line) == 1 and line[0]["id"] == first["id"], line
    assert line[0]["kind"] == "callback", line
    stored = stack.store_items()
    assert [(r["id"], r["kind"], r["number"]) for r in stored] == [
        (first["id"], "callback", "+1" + CALLER_A)
    ], stored
    # The consoles: the logins of .env work (hashed at start, never stored).
    me = stack.console_login("supervisor", stack.env("IVR_PASSWORD_SUPERVISOR"))
    assert me["role"] == "supervisor", me
    assert stack.console_login("alice", stack.env("IVR_PASSWORD_ALICE"))["agent"] == "alice"

    # 3. Two callers wait behind the callback; the service is upgraded meanwhile.
    waiting = []
    for number, expected in ((CALLER_B, 2), (CALLER_C, 3)):
        caller = stack_caller(caller=number, hangup_after=HOLD, max_duration=HOLD + 30)
        caller.start()
        await caller.wait_answered(30)
        await until(_waiting_is(stack, expected), 15, f"caller {number} in GET /api/queues")
        waiting.append(caller)
    before = stack.line()
    assert [i["kind"] for i in before] == ["callback", "inbound", "inbound"], before
    assert before[0]["id"] == first["id"]

    old = stack.project.container_id("ivr")
    started = time.monotonic()
    stack.project.compose("stop", "ivr", timeout=60)
    stopped_in = time.monotonic() - started
    exit_code = stack.engine.docker("inspect", "-f", "{{.State.ExitCode}}", old).stdout.strip()
    old_logs = stack.engine.docker("logs", "--tail", "20", old).stderr
    assert exit_code == "0", f"SIGTERM is a graceful stop (exit 0), got {exit_code}\n{old_logs}"
    assert "ivr stopped" in old_logs, old_logs
    assert all(_still_in_call(c) for c in waiting), "a waiting caller was dropped by the stop"

    stack.project.compose("up", "-d", "--force-recreate", "--no-deps", "--wait", "ivr",
                          timeout=120)
    assert stack.project.container_id("ivr") != old, "the service container was not recreated"
    await until(lambda: _ids(_line(stack)) == _ids(before), 30,
                lambda: f"re-adopted in order: {_ids(before)} != {_ids(_line(stack))}\n"
                        f"{stack.logs('ivr')}")
    assert [i["kind"] for i in stack.line()] == ["callback", "inbound", "inbound"]
    assert all(_still_in_call(c) for c in waiting), "a waiting caller was dropped by the upgrade"
    channels = stack.asterisk_cli("core show channels count")
    assert "2 active call" in channels, channels
    recreated_in = time.monotonic() - started
    assert recreated_in < HOLD - 10, (f"stop + recreate took {recreated_in:.0f}s "
                                      f"(the stop {stopped_in:.0f}s)")

    for caller in waiting:
        res = await caller.wait(HOLD + 30)
        assert res.answered and res.hung_up_by == "us", caller.describe()
        assert _bye_answered(res), f"the call was gone from Asterisk\n{caller.describe()}"
    await until(lambda: _ids(_line(stack)) == [first["id"]], 15,
                "the two callers' hang-ups seen by the re-adopting service")
    stored = stack.store_items()
    assert [r["kind"] for r in stored] == ["callback", "inbound", "inbound"], stored


def test_the_example_env_is_refused(stack: Stack) -> None:
    """``.env.example`` as shipped (every secret a CHANGE-ME placeholder): both images
    refuse to start, exit 78, and name what to fix."""
    example = Project(stack.engine, f"{stack.project.name}x", REPO / ".env.example",
                      extra_env={"IVR_IMAGE_TAG": IMAGE_TAG})
    try:
        for service, names in (
            ("asterisk", ("IVR_ARI_PASSWORD", "SIP_EXTERNAL_ADDRESS", "CARRIER_ADDRESS",
                          "SIP_PASSWORD_ALICE", "SIP_PASSWORD_BOB")),
            ("ivr", ("IVR_ARI_PASSWORD", "IVR_API_TOKEN", "IVR_PASSWORD_ALICE",
                     "IVR_PASSWORD_SUPERVISOR")),
        ):
            proc = example.compose("run", "--rm", "--no-deps", "-T", service, timeout=120,
                                   check=False)
            out = proc.stdout + proc.stderr
            assert proc.returncode == 78, f"{service}: rc={proc.returncode}\n{out}"
            assert "refusing to start" in out, out
            for name in names:
                assert f"{name} is still the placeholder" in out, f"{service}: {name}\n{out}"
    finally:
        example.compose("down", "-v", "--remove-orphans", timeout=120, check=False)
