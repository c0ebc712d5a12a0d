"""Customers calling a DID through the carrier trunk (sipp sends from
``instance.carrier_host`` so Asterisk identifies it as the carrier).

* ``SipCaller``  — one customer, one call, one sipp process.
* ``SipCallers`` — many customers from ONE sipp process, each with its own plan.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rig.sandbox import AsteriskInstance, free_port, media_port
from tests.peers.sipp import (
    SippProcess,
    dtmf_pcap,
    failure_recvs,
    info_xml,
    ms,
    play_digit,
    render,
    render_timeline,
)
from tests.peers.trace import SipMessage, parse_name_addr, who_hung_up

# ------------------------------------------------------------------ caller


@dataclass
class CallerResult:
    answered: bool
    answered_at: float | None  # wall time of the 200 OK to our INVITE
    hung_up_by: Literal["us", "them"] | None
    bye_received_at: float | None
    bye_sent_at: float | None
    rejected_with: int | None  # final non-2xx status, if any
    exit_code: int
    message_log: Path
    messages: list[SipMessage] = field(repr=False)


class SipCaller:
    """A customer calling ``did`` on the instance through the carrier trunk.

    ``caller=None`` calls as anonymous (``"Anonymous" <sip:anonymous@anonymous.invalid>``).
    ``digits``: ``(seconds after the ACK of the 200 OK, digit)`` played as RFC 4733
    RTP from sipp's pcaps. ``hangup_after``: we send BYE at that time after the
    answer; ``None``: wait for Asterisk's BYE up to ``max_duration`` (then we hang
    up). ``send_info_at``: a SIP INFO ``application/dtmf-relay`` (``info_digit``) at
    that time — Asterisk must answer it (anything else is an unexpected message that
    aborts sipp's call). Not answered within ``max_duration`` → CANCEL. ``host``: the
    address it sends from, the carrier's unless told (Asterisk knows the carrier by it).
    """

    def __init__(
        self,
        instance: AsteriskInstance,
        did: str,
        *,
        caller: str | None = "5551234",
        caller_name: str | None = None,
        digits: Sequence[tuple[float, str]] = (),
        hangup_after: float | None = None,
        max_duration: float = 120.0,
        send_info_at: float | None = None,
        info_digit: str = "1",
        infos: Sequence[tuple[float, str]] = (),
        host: str | None = None,
    ) -> None:
        self.instance = instance
        self.did = did
        self.caller = caller
        self.max_duration = max_duration
        #: where the INVITE goes (Asterisk's SIP port; a subclass may aim elsewhere)
        self.target = f"127.0.0.1:{instance.sip_port}"
        self._sipp = SippProcess(f"caller-{did}")
        self.host = host = host or instance.carrier_host
        self.local_port = free_port(host)
        self.media_port = media_port(host)
        if caller is None:
            from_hdr = '"Anonymous" <sip:anonymous@anonymous.invalid>'
            contact_user = "anonymous"
        else:
            name = f'"{caller_name}" ' if caller_name else ""
            from_hdr = f"{name}<sip:{caller}@{host}>"
            contact_user = caller
        for _, d in digits:
            dtmf_pcap(d)
        if hangup_after is not None and hangup_after > max_duration:
            raise ValueError("hangup_after > max_duration")

        events: list[tuple[float, str]] = [(t, "dtmf:" + d) for t, d in digits]
        if send_info_at is not None:
            events.append((send_info_at, "info:" + info_digit))
        # Digits as SIP INFO: unlike the RTP pcaps, any number of them, repeats included.
        events.extend((t, "info:" + d) for t, d in infos)
        cseq = [1]

        def render_event(i: int, what: str) -> str:
            kind, arg = what.split(":", 1)
            if kind == "dtmf":
                return play_digit(arg)
            cseq[0] += 1
            return info_xml(from_hdr, contact_user, cseq[0], arg, f"i{i}")

        timeline, last = render_timeline(events, "c", render_event)
        if hangup_after is not None:
            if hangup_after > last:
                timeline += (
                    f'\n  <recv request="BYE" timeout="{ms(hangup_after - last)}"'
                    ' ontimeout="us_bye" next="gotbye"/>'
                )
        else:
            timeline += (
                f'\n  <recv request="BYE" timeout="{ms(max(max_duration - last, 0.001))}"'
                ' ontimeout="us_bye" next="gotbye"/>'
            )
        failures = failure_recvs(max_duration)
        self.scenario = self._sipp.write(
            "caller.xml",
            render(
                "caller.xml",
                **{
                    "from": from_hdr,
                    "contact_user": contact_user,
                    "failures": failures,
                    "answer_timeout_ms": str(ms(max_duration)),
                    "timeline": timeline,
                    "bye_cseq": str(cseq[0] + 1),
                },
            ),
        )

    @property
    def message_log(self) -> Path:
        return self._sipp.message_log

    def start(self) -> None:
        """Start the call (returns at once)."""
        host = self.host
        self._sipp.start(
            [
                self.target,
                "-sf", str(self.scenario),
                "-s", self.did,
                "-i", host,
                "-p", str(self.local_port),
                "-mi", host,
                "-mp", str(self.media_port),
                "-m", "1",
                "-l", "1",
                "-timeout", f"{int(self.max_duration * 2 + 30)}s",
                "-timeout_error",
            ]
        )  # fmt: skip

    def messages(self) -> list[SipMessage]:
        return self._sipp.messages()

    def answered_at(self) -> float | None:
        for m in self.messages():
            if m.direction == "received" and m.method == "INVITE" and m.status == 200:
                return m.time
        return None

    async def wait_answered(self, timeout: float = 30.0) -> float:
        """Wait until Asterisk answered; returns the wall time of the 200 OK."""
        deadline = time.monotonic() + timeout
        while (at := self.answered_at()) is None:
            if self._sipp.returncode is not None or time.monotonic() > deadline:
                raise TimeoutError(f"call to {self.did} not answered\n{self._sipp.describe()}")
            await asyncio.sleep(0.05)
        return at

    async def wait(self, timeout: float | None = None) -> CallerResult:
        """Wait for the call (the sipp process) to end; parse what sipp saw."""
        if timeout is None:
            timeout = self.max_duration + 30
        rc = await self._sipp.wait(timeout)
        return self.result(rc)

    def result(self, rc: int) -> CallerResult:
        msgs = self.messages()
        answered_at = None
        rejected = None
        bye_in = bye_out = None
        for m in msgs:
            if m.direction == "received" and m.method == "INVITE" and m.status is not None:
                if m.status == 200 and answered_at is None:
                    answered_at = m.time
                elif m.status >= 300 and rejected is None:
                    rejected = m.status
            if m.is_request and m.method == "BYE":
                if m.direction == "received" and bye_in is None:
                    bye_in = m.time
                if m.direction == "sent" and bye_out is None:
                    bye_out = m.time
        return CallerResult(
            answered=answered_at is not None,
            answered_at=answered_at,
            hung_up_by=who_hung_up(bye_in, bye_out),
            bye_received_at=bye_in,
            bye_sent_at=bye_out,
            rejected_with=rejected,
            exit_code=rc,
            message_log=self._sipp.message_log,
            messages=msgs,
        )

    def describe(self) -> str:
        return self._sipp.describe()

    def stop(self) -> None:
        """Kill sipp if still running and remove its temp dir (unless IVR_KEEP_RUNS)."""
        self._sipp.cleanup()


# ------------------------------------------------------------------ many callers, one sipp


@dataclass(frozen=True)
class CallPlan:
    """One call of ``SipCallers``: from ``number``; ``infos`` are ``(seconds after the
    answer, digit)`` sent as SIP INFO; ``hangup_after`` seconds after the answer we send
    BYE, else we wait for Asterisk's BYE up to ``max_duration`` (then hang up)."""

    number: str
    infos: Sequence[tuple[float, str]] = ()
    hangup_after: float | None = None
    max_duration: float = 60.0


@dataclass
class PlannedCallResult:
    plan: CallPlan
    call_id: str
    answered_at: float | None
    rejected_with: int | None
    bye_received_at: float | None
    bye_sent_at: float | None

    @property
    def hung_up_by(self) -> Literal["us", "them"] | None:
        return who_hung_up(self.bye_received_at, self.bye_sent_at)


class SipCallers:
    """Many customers calling ``did`` from ONE sipp process (``-m len(plans)``), a new
    call every ``interval`` seconds, each from its own number with its own plan (sipp
    numbers the calls; an injection file maps call k to plan k)."""

    def __init__(
        self,
        instance: AsteriskInstance,
        did: str,
        plans: Sequence[CallPlan],
        *,
        interval: float = 0.5,
        label: str = "callers",
    ) -> None:
        if not plans:
            raise ValueError("at least one CallPlan")
        if len({p.number for p in plans}) != len(plans):
            raise ValueError("one number per call")
        self.instance = instance
        self.did = did
        self.plans = list(plans)
        self.interval = interval
        self._sipp = SippProcess(f"{label}-{did}")
        host = instance.carrier_host
        self.local_port = free_port(host)
        self.media_port = media_port(host)
        from_hdr = f"<sip:[field0]@{host}>"
        longest = max(p.max_duration for p in plans)
        tests, jumps, blocks = [], [], []
        for k, plan in enumerate(plans):
            if plan.hangup_after is not None and plan.hangup_after > plan.max_duration:
                raise ValueError("hangup_after > max_duration")
            tests.append(f'      <test assign_to="plan{k}" variable="plannum" compare="equal"'
                         f' value="{k}"/>')
            jumps.append(f'  <nop test="plan{k}" next="p{k}"/>')
            cseq = [1]

            def render_event(i: int, digit: str, k: int = k, cseq: list[int] = cseq) -> str:
                cseq[0] += 1
                return info_xml(from_hdr, "[field0]", cseq[0], digit, f"p{k}i{i}")

            timeline, last = render_timeline(list(plan.infos), f"p{k}", render_event)
            end = plan.hangup_after if plan.hangup_after is not None else plan.max_duration
            if end > last:
                timeline += (f'\n  <recv request="BYE" timeout="{ms(end - last)}"'
                             ' ontimeout="us_bye" next="gotbye"/>')
            timeline += '\n  <nop next="us_bye"/>'
            blocks.append(f'  <label id="p{k}"/>\n{timeline}')
        jumps.append('  <nop next="us_bye"/>')  # no plan: should not happen
        failures = failure_recvs(longest)
        self.scenario = self._sipp.write("callers.xml", render(
            "callers.xml",
            answer_timeout_ms=str(ms(longest)),
            failures=failures,
            dispatch_tests="\n".join(tests),
            dispatch_jumps="\n".join(jumps),
            plans="\n".join(blocks),
        ))
        self.injection = self._sipp.write(
            "plans.csv",
            "SEQUENTIAL\n" + "".join(f"{p.number};{k};\n" for k, p in enumerate(plans)),
        )
        self.max_duration = longest

    def start(self) -> None:
        """Start the calls (returns at once; they follow each other every ``interval``)."""
        inst = self.instance
        host = inst.carrier_host
        n = len(self.plans)
        self._sipp.start(
            [
                f"127.0.0.1:{inst.sip_port}",
                "-sf", str(self.scenario),
                "-inf", str(self.injection),
                "-s", self.did,
                "-i", host,
                "-p", str(self.local_port),
                "-mi", host,
                "-mp", str(self.media_port),
                "-m", str(n),
                "-l", str(n),
                "-r", "1",
                "-rp", str(ms(self.interval)),
                "-timeout", f"{int(self.max_duration * 2 + n * self.interval + 30)}s",
                "-timeout_error",
            ]
        )  # fmt: skip

    @property
    def returncode(self) -> int | None:
        return self._sipp.returncode

    async def wait(self, timeout: float) -> list[PlannedCallResult]:
        """Wait for every call (the sipp process) to end; what each call saw."""
        await self._sipp.wait(timeout)
        return self.results()

    def results(self) -> list[PlannedCallResult]:
        by_number = {p.number: p for p in self.plans}
        out: dict[str, PlannedCallResult] = {}
        for m in self.messages():
            cid = m.call_id
            if cid not in out:
                if not (m.direction == "sent" and m.method == "INVITE" and m.is_request):
                    continue
                _, number, _ = parse_name_addr(m.header("From") or "")
                plan = by_number.get(number)
                if plan is None:
                    continue
                out[cid] = PlannedCallResult(plan, cid, None, None, None, None)
            r = out[cid]
            if m.direction == "received" and m.method == "INVITE" and m.status is not None:
                if m.status == 200 and r.answered_at is None:
                    r.answered_at = m.time
                elif m.status >= 300 and r.rejected_with is None:
                    r.rejected_with = m.status
            if m.is_request and m.method == "BYE":
                if m.direction == "received" and r.bye_received_at is None:
                    r.bye_received_at = m.time
                if m.direction == "sent" and r.bye_sent_at is None:
                    r.bye_sent_at = m.time
        return list(out.values())

    def messages(self) -> list[SipMessage]:
        return self._sipp.messages()

    def describe(self) -> str:
        return self._sipp.describe()

    def stop(self) -> None:
        self._sipp.cleanup()
