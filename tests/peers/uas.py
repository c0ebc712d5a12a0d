"""The UAS peers: whatever Asterisk calls.

* ``SipPhone``   — an agent softphone on its static-contact port (or, for
  ``"regagent"``, one that registers with digest auth and answers via ``-oocsf``).
* ``SipCarrier`` — the carrier answering outbound callbacks on
  ``carrier_host:carrier_port``; ``FaultyCarrier`` may also fail the INVITE itself.
* ``DemoCallerPhone`` — the README quick start's demo caller softphone.

Per-call behaviour of a UAS (phone/carrier): ONE sipp process serves every call; a
sipp global counter numbers incoming INVITEs and call k follows ``behaviours[k-1]``
(the last behaviour repeats). No restart between calls, so no window where the port
is closed. Concurrent calls work (each is its own sipp call).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rig.sandbox import AsteriskInstance, free_port, media_port
from tests.peers.sipp import (
    SIPP_DIR,
    SipError,
    SippProcess,
    dtmf_pcap,
    failure_recvs,
    ms,
    play_digit,
    render,
    render_timeline,
)
from tests.peers.trace import Headers, SipMessage, parse_name_addr, who_hung_up

# ------------------------------------------------------------------ UAS (phone, carrier)


@dataclass(frozen=True)
class CallBehaviour:
    """What a phone/carrier does with one incoming INVITE.

    ``answer_after``: seconds of 180 Ringing before 200 OK (0 → answer at once);
    ``"never"`` → ring until CANCEL; ``"busy"`` → 486 Busy Here. After the answer:
    ``digits`` ``(seconds after answering, digit)``; ``hangup_after`` seconds → we
    send BYE, else wait for Asterisk's BYE up to ``max_duration``.
    """

    answer_after: float | Literal["never", "busy"] = 0.0
    digits: Sequence[tuple[float, str]] = ()
    hangup_after: float | None = None
    max_duration: float = 600.0


RING_FOREVER = CallBehaviour(answer_after="never")
BUSY = CallBehaviour(answer_after="busy")


@dataclass
class ReceivedCall(Headers):
    """An INVITE the peer received, and what became of that call."""

    call_id: str
    invited_at: float
    request_uri: str
    dialled: str  # user part of the request URI (the number the carrier must dial)
    from_name: str | None
    from_number: str
    headers: list[tuple[str, str]]
    answered_at: float | None = None
    rejected_with: int | None = None
    cancelled_at: float | None = None
    bye_received_at: float | None = None
    bye_sent_at: float | None = None

    @property
    def ended(self) -> bool:
        return (
            self.cancelled_at is not None
            or self.bye_received_at is not None
            or self.bye_sent_at is not None
            or self.rejected_with is not None
        )


def calls_from_messages(msgs: Sequence[SipMessage]) -> list[ReceivedCall]:
    calls: dict[str, ReceivedCall] = {}
    for m in msgs:
        cid = m.call_id
        if m.direction == "received" and m.is_request and m.method == "INVITE":
            if cid in calls:
                continue  # retransmission (or re-INVITE)
            name, number, _ = parse_name_addr(m.header("From") or "")
            _, dialled, _ = parse_name_addr("<" + m.request_uri + ">")
            calls[cid] = ReceivedCall(
                call_id=cid,
                invited_at=m.time,
                request_uri=m.request_uri,
                dialled=dialled,
                from_name=name,
                from_number=number,
                headers=m.headers,
            )
            continue
        call = calls.get(cid)
        if call is None:
            continue
        if m.direction == "sent" and not m.is_request and m.method == "INVITE":
            status = m.status or 0
            if status == 200 and call.answered_at is None:
                call.answered_at = m.time
            elif status >= 300 and status != 487 and call.rejected_with is None:
                call.rejected_with = status
        elif m.is_request and m.method == "CANCEL" and m.direction == "received":
            call.cancelled_at = call.cancelled_at or m.time
        elif m.is_request and m.method == "BYE":
            if m.direction == "received":
                call.bye_received_at = call.bye_received_at or m.time
            else:
                call.bye_sent_at = call.bye_sent_at or m.time
    return list(calls.values())


class _SipUas:
    """A sipp UAS serving every INVITE sent to ``host:port`` until stopped."""

    def __init__(
        self,
        instance: AsteriskInstance,
        label: str,
        host: str,
        port: int,
        behaviours: CallBehaviour | Sequence[CallBehaviour],
        *,
        contact_user: str,
        register: tuple[str, str] | None = None,
    ) -> None:
        self.instance = instance
        self.host = host
        self.port = port
        self.register = register
        self.behaviours = (
            [behaviours] if isinstance(behaviours, CallBehaviour) else list(behaviours)
        )
        if not self.behaviours:
            raise ValueError("at least one CallBehaviour")
        self._sipp = SippProcess(label)
        self.media_port = media_port(host)
        self.scenario = self._sipp.write("uas.xml", self._render_uas(contact_user))
        self.register_scenario: Path | None = None
        if register is not None:
            user, password = register
            self.register_scenario = self._sipp.write(
                "register.xml", render("register.xml", user=user, password=password)
            )

    def _render_uas(self, contact_user: str) -> str:
        n = len(self.behaviours)
        tests, jumps, blocks = [], [], []
        for i, b in enumerate(self.behaviours):
            cmp_ = "greater_than_equal" if i == n - 1 else "equal"
            tests.append(
                f'      <test assign_to="use{i}" variable="count" compare="{cmp_}"'
                f' value="{i + 1}"/>'
            )
            jumps.append(f'  <nop test="use{i}" next="b{i}"/>')
            blocks.append(self._render_behaviour(i, b, contact_user))
        jumps.append('  <nop next="b0"/>')
        return render(
            "uas.xml",
            dispatch_tests="\n".join(tests),
            dispatch_jumps="\n".join(jumps),
            behaviours="\n".join(blocks),
        )

    def _render_behaviour(self, i: int, b: CallBehaviour, contact_user: str) -> str:
        ringing = render("uas_ringing.xml", contact_user=contact_user)
        if b.answer_after == "busy":
            busy = (SIPP_DIR / "uas_busy.xml").read_text()
            return render("uas_behaviour.xml", b=f"b{i}", ring="", answer=busy)
        if b.answer_after == "never":
            wait = (
                f'  <recv request="CANCEL" timeout="{ms(b.max_duration)}" ontimeout="end"'
                ' next="cancelled"/>'
            )
            return render("uas_behaviour.xml", b=f"b{i}", ring=ringing + wait, answer="")
        for _, d in b.digits:
            dtmf_pcap(d)
        ring = ringing
        if b.answer_after > 0:
            ring += (
                f'  <recv request="CANCEL" timeout="{ms(b.answer_after)}"'
                f' ontimeout="b{i}ans" next="cancelled"/>\n  <label id="b{i}ans"/>'
            )
        answer = render("uas_answer.xml", contact_user=contact_user)
        events = [(t, d) for t, d in b.digits]
        timeline, last = render_timeline(events, f"b{i}", lambda _i, d: play_digit(d))
        answer += "\n" + timeline
        end = b.hangup_after if b.hangup_after is not None else b.max_duration
        if end > last:
            answer += (
                f'\n  <recv request="BYE" timeout="{ms(end - last)}" ontimeout="ourbye"'
                ' next="gotbye"/>'
            )
        answer += '\n  <nop next="ourbye"/>'
        return render("uas_behaviour.xml", b=f"b{i}", ring=ring, answer=answer)

    def start(self) -> None:
        inst = self.instance
        common = [
            "-i", self.host,
            "-p", str(self.port),
            "-mi", self.host,
            "-mp", str(self.media_port),
            "-aa",  # 200 OK to OPTIONS/INFO/NOTIFY/UPDATE outside the scenario
        ]  # fmt: skip
        if self.register_scenario is None:
            self._sipp.start(["-sf", str(self.scenario), *common])
        else:
            self._sipp.start(
                [
                    f"127.0.0.1:{inst.sip_port}",
                    "-sf", str(self.register_scenario),
                    "-oocsf", str(self.scenario),
                    "-m", "1",
                    *common,
                ]
            )  # fmt: skip

    def stop(self) -> None:
        """Kill sipp and remove its temp dir (unless IVR_KEEP_RUNS)."""
        self._sipp.cleanup()

    @property
    def message_log(self) -> Path:
        return self._sipp.message_log

    def messages(self) -> list[SipMessage]:
        return self._sipp.messages()

    def calls(self) -> list[ReceivedCall]:
        """Every INVITE received so far, in order, with what became of each call."""
        return calls_from_messages(self.messages())

    async def wait_for_calls(
        self,
        count: int = 1,
        timeout: float = 30.0,
        predicate: Callable[[ReceivedCall], bool] | None = None,
    ) -> list[ReceivedCall]:
        """Wait until ``count`` received calls (matching ``predicate``) exist."""
        deadline = time.monotonic() + timeout
        while True:
            calls = [c for c in self.calls() if predicate is None or predicate(c)]
            if len(calls) >= count:
                return calls
            if self._sipp.returncode is not None:
                raise SipError(f"sipp exited ({self._sipp.returncode})\n{self.describe()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(calls)} of {count} calls after {timeout:.0f}s\n{self.describe()}"
                )
            await asyncio.sleep(0.05)

    async def wait_registered(self, timeout: float = 30.0) -> None:
        """(Registering phones) wait for the 200 OK to our REGISTER."""
        deadline = time.monotonic() + timeout
        while not any(
            m.direction == "received" and m.method == "REGISTER" and m.status == 200
            for m in self.messages()
        ):
            if self._sipp.returncode is not None or time.monotonic() > deadline:
                raise TimeoutError(f"not registered\n{self.describe()}")
            await asyncio.sleep(0.05)

    def describe(self) -> str:
        return self._sipp.describe()


class SipPhone(_SipUas):
    """Agent softphone for endpoint ``agent`` of the instance.

    ``agent1..agentN`` listen on their static contact (``instance.agent_ports``);
    ``"regagent"`` registers (digest auth, ``instance.reg_password``) from a free port
    first — call ``await phone.wait_registered()`` before originating to it.
    """

    def __init__(
        self,
        instance: AsteriskInstance,
        agent: str,
        behaviours: CallBehaviour | Sequence[CallBehaviour] = CallBehaviour(),
    ) -> None:
        if agent == instance.reg_user:
            port = free_port("127.0.0.1")
            register: tuple[str, str] | None = (agent, instance.reg_password)
        elif agent in instance.agent_ports:
            port = instance.agent_ports[agent]
            register = None
        else:
            raise ValueError(f"unknown agent {agent!r}; have {sorted(instance.agent_ports)}")
        self.agent = agent
        super().__init__(
            instance, f"phone-{agent}", "127.0.0.1", port, behaviours,
            contact_user=agent, register=register,
        )  # fmt: skip


class SipCarrier(_SipUas):
    """The carrier side of the trunk: receives Asterisk's outbound calls (callbacks).

    ``ReceivedCall.dialled`` is the number Asterisk asked the carrier to dial and
    ``from_number``/``from_name`` the caller id it presented.
    """

    def __init__(
        self,
        instance: AsteriskInstance,
        behaviours: CallBehaviour | Sequence[CallBehaviour] = CallBehaviour(),
    ) -> None:
        super().__init__(
            instance, "carrier", instance.carrier_host, instance.carrier_port, behaviours,
            contact_user="carrier",
        )  # fmt: skip


# ------------------------------------------------------------------ faulty trunk

_REASONS = {
    404: "Not Found", 408: "Request Timeout", 480: "Temporarily Unavailable",
    500: "Server Internal Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Server Time-out", 603: "Decline",
}  # fmt: skip


@dataclass(frozen=True)
class TrunkFault(CallBehaviour):
    """A carrier that fails the INVITE itself (not the customer's phone): ``"silent"``
    takes the INVITE and sends nothing back (no 100, no final response) for
    ``max_duration`` seconds -- make it longer than the dial timeout -- and only then a
    late 408, so Asterisk's INVITE transaction (which outlives the call, up to Timer B =
    32 s) ends instead of retransmitting to the next test's carrier; ``"trying"`` sends
    100 Trying and then nothing more (Asterisk CANCELs it); a status code (e.g. 503) is
    sent at once as the final response. Usable only with ``FaultyCarrier``."""

    reply: int | Literal["silent", "trying"] = "silent"


TRUNK_SILENT = TrunkFault(reply="silent", max_duration=8.0)
TRUNK_503 = TrunkFault(reply=503)


class FaultyCarrier(SipCarrier):
    """``SipCarrier`` whose behaviours may also be ``TrunkFault``s."""

    def _render_behaviour(self, i: int, b: CallBehaviour, contact_user: str) -> str:
        if not isinstance(b, TrunkFault):
            return super()._render_behaviour(i, b, contact_user)
        if isinstance(b.reply, int):
            reject = render("uas_reject.xml", status=str(b.reply),
                             reason=_REASONS.get(b.reply, "Failure"))
            return render("uas_behaviour.xml", b=f"b{i}", ring="", answer=reject)
        wait = render("uas_silent.xml", b=f"b{i}", max_ms=str(ms(b.max_duration)))
        if b.reply == "trying":
            wait = (SIPP_DIR / "uas_trying.xml").read_text() + wait
        return render("uas_behaviour.xml", b=f"b{i}", ring=wait, answer="")


# ------------------------------------------------------------------ quick start: demo caller


@dataclass
class DemoCall:
    """The demo caller's own call to the DID, as its sipp saw it."""

    call_id: str
    challenged_with: int | None  # 401/407 to the first INVITE (digest auth asked)
    answered_at: float | None  # wall time of the 200 OK to the authenticated INVITE
    rejected_with: int | None  # final failure status after the challenge, if any
    bye_received_at: float | None
    bye_sent_at: float | None

    @property
    def hung_up_by(self) -> Literal["us", "them"] | None:
        return who_hung_up(self.bye_received_at, self.bye_sent_at)

    @property
    def ended(self) -> bool:
        return (self.bye_received_at is not None or self.bye_sent_at is not None
                or self.rejected_with is not None)


class DemoCallerPhone(_SipUas):
    """The README quick start's demo caller softphone (sandbox ``demo_caller=True``).

    ONE sipp process on 127.0.0.1, as one softphone: it REGISTERs as ``caller`` with
    ``instance.caller_password``, then (once registered) dials ``did`` as that account:
    From user ``caller`` (Asterisk identifies the endpoint by it and presents the
    endpoint's own caller id, whatever display name ``from_name`` says), the INVITE's
    digest challenge (401/407) answered with a second INVITE. ``digits``: ``(seconds
    after the answer, digit)`` played as RFC 4733 RTP; then it waits for Asterisk's BYE
    up to ``max_duration`` (then hangs up). Calls Asterisk sends to the registered
    contact (the callback) follow ``behaviours`` as on any ``SipPhone``: ``calls()``.
    """

    user = "caller"

    def __init__(
        self,
        instance: AsteriskInstance,
        did: str,
        *,
        digits: Sequence[tuple[float, str]] = (),
        from_name: str = "Softphone",
        behaviours: CallBehaviour | Sequence[CallBehaviour] = CallBehaviour(),
        max_duration: float = 60.0,
    ) -> None:
        if not instance.caller_password:
            raise SipError("no demo caller account: start the sandbox with demo_caller=True")
        super().__init__(
            instance, "demo-caller", "127.0.0.1", free_port("127.0.0.1"), behaviours,
            contact_user=self.user,
        )  # fmt: skip
        self.did = did
        for _, d in digits:
            dtmf_pcap(d)
        timeline, last = render_timeline(
            [(t, d) for t, d in digits], "c", lambda _i, d: play_digit(d)
        )
        timeline += (
            f'\n  <recv request="BYE" timeout="{ms(max(max_duration - last, 0.001))}"'
            ' ontimeout="us_bye" next="gotbye"/>'
        )
        failures = failure_recvs(max_duration)
        self.register_scenario = self._sipp.write(
            "qs_demo_caller.xml",
            render(
                "qs_demo_caller.xml",
                user=self.user,
                password=instance.caller_password,
                from_name=f'"{from_name}"',
                answer_timeout_ms=str(ms(max_duration)),
                failures=failures,
                timeline=timeline,
            ),
        )

    def start(self) -> None:
        """Register, then place the call (returns at once)."""
        assert self.register_scenario is not None
        self._sipp.start(
            [
                f"127.0.0.1:{self.instance.sip_port}",
                "-sf", str(self.register_scenario),
                "-oocsf", str(self.scenario),
                "-s", self.did,
                "-m", "2",  # sipp call 1 registers, call 2 is the call to the DID
                "-i", self.host,
                "-p", str(self.port),
                "-mi", self.host,
                "-mp", str(self.media_port),
                "-aa",
            ]
        )  # fmt: skip

    def own_call(self) -> DemoCall | None:
        """The call to the DID (None before its INVITE went out)."""
        msgs = self.messages()
        cid = next((m.call_id for m in msgs if m.direction == "sent" and m.is_request
                    and m.method == "INVITE"), None)
        if cid is None:
            return None
        call = DemoCall(cid, None, None, None, None, None)
        for m in msgs:
            if m.call_id != cid:
                continue
            if m.direction == "received" and not m.is_request and m.method == "INVITE":
                status = m.status or 0
                if status in (401, 407) and call.challenged_with is None:
                    call.challenged_with = status
                elif status == 200 and call.answered_at is None:
                    call.answered_at = m.time
                elif status >= 300 and status not in (401, 407) and call.rejected_with is None:
                    call.rejected_with = status
            elif m.is_request and m.method == "BYE":
                if m.direction == "received":
                    call.bye_received_at = call.bye_received_at or m.time
                else:
                    call.bye_sent_at = call.bye_sent_at or m.time
        return call

    async def wait_own_call(
        self, predicate: Callable[[DemoCall], bool], timeout: float = 30.0
    ) -> DemoCall:
        """Wait until the call to the DID satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            call = self.own_call()
            if call is not None and predicate(call):
                return call
            if self._sipp.returncode is not None:
                raise SipError(f"sipp exited ({self._sipp.returncode})\n{self.describe()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"demo caller's call: {call} after {timeout:.0f}s\n"
                                   f"{self.describe()}")
            await asyncio.sleep(0.05)
