"""The agent console and the supervisor wallboard in a real browser (Debian's headless
Chromium, driven by Playwright), against the real Asterisk with real SIP: sipp callers
press 1, a sipp softphone answers the offer, a sipp carrier answers the callback.

What must hold: the offer card appears for the callback at the head of the line; the
customer is dialled only after the agent clicks Accept (the carrier's INVITE comes after
the click); the card follows the call to "connected" and, when the customer is not
reached, shows the next try. The wallboard shows the line in order and follows it live
(an arrival, a hang-up, a cancel). Screenshots of both pages are written to
``$IVR_ARTEFACTS`` (default ``var/artefacts``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from ivr import passwords
from ivr.app import Service, running
from ivr.domain.items import State
from rig.sandbox import AsteriskInstance, free_port
from tests.peers import BUSY, CallBehaviour, SipCaller, SipCarrier, SipPhone
from tests.support.config import CB_QUEUE, write_config
from tests.support.observer import AriObserver
from tests.support.observing import caller_channel
from tests.support.store import stored_item
from tests.support.waiting import until

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
# Headless as root on a closed network: no sandbox (root), nothing fetched at start.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
AGENT_PW, SUP_PW = "agent-pass-123", "super-pass-456"
ARTEFACTS = Path(os.environ.get("IVR_ARTEFACTS", "var/artefacts"))
#: how long the page may take to show a change (live updates arrive well within it)
SHOWN = 10_000
# The agent's phone answers and stays on the line; its keys are not used here.
ANSWER_AND_STAY = CallBehaviour(answer_after=0.3)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@contextlib.asynccontextmanager
async def console_service(asterisk: AsteriskInstance, tmp_path: Path, queue: str,
                          **queue_cfg: Any) -> AsyncIterator[tuple[Service, str]]:
    port = free_port(udp=False)
    agents = {"agent1": {"name": "Alice Agent", "endpoint": "PJSIP/agent1", "queues": [queue],
                         "password_hash": passwords.hash_password(AGENT_PW)}}
    supervisors = {"sup": {"name": "Sam", "password_hash": passwords.hash_password(SUP_PW)}}
    cfg = write_config(asterisk, tmp_path,
                       {queue: {**CB_QUEUE, "preview_timeout": "30s", **queue_cfg}}, agents,
                       http={"bind": "127.0.0.1", "port": port}, supervisors=supervisors)
    async with running(cfg, http=True) as svc:
        await until(lambda: all(a.reachable for a in svc.board))
        yield svc, f"http://127.0.0.1:{port}"


async def log_in(browser: Browser, base: str, login: str, password: str) -> Page:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await page.goto(f"{base}/agent")  # not logged in: sent to the login page
    assert page.url.endswith("/login")
    await page.fill("#login", login)
    await page.fill("#password", password)
    await page.click("#login-submit")
    return page


async def request_callback(sip_caller: Callable[..., SipCaller], obs: AriObserver, did: str,
                           number: str) -> None:
    c = sip_caller(did, caller=number, digits=[(1.6, "1")], max_duration=30)
    c.start()
    await caller_channel(obs, number)
    assert (await c.wait(30)).hung_up_by == "them", c.describe()


def line(page: Page) -> Any:
    return page.locator("table.line tbody tr")


async def test_agent_accepts_in_the_browser_and_the_wallboard_follows_the_line(
    asterisk: AsteriskInstance, tmp_path: Path, browser: Browser, ari_observer: AriObserver,
    sip_caller: Callable[..., SipCaller], sip_phone: Callable[..., SipPhone],
    sip_carrier: Callable[..., SipCarrier],
) -> None:
    async with console_service(asterisk, tmp_path, "q7501") as (svc, base):
        phone = sip_phone("agent1", behaviours=ANSWER_AND_STAY)
        carrier = sip_carrier(behaviours=CallBehaviour(answer_after=0.5, hangup_after=4.0))
        agent = await log_in(browser, base, "agent1", AGENT_PW)
        await expect(agent).to_have_url(f"{base}/agent")
        await expect(agent.locator("#agent-name")).to_have_text("Alice Agent")
        status = agent.get_by_test_id("status")
        await expect(status).to_have_text("available", timeout=SHOWN)
        await agent.click("#go-not-ready")
        await expect(status).to_have_text("not ready", timeout=SHOWN)
        sup = await log_in(browser, base, "sup", SUP_PW)
        await expect(sup).to_have_url(f"{base}/supervisor")
        agent_row = sup.locator('#agents tr[data-agent="agent1"]')
        await expect(agent_row).to_contain_text("not ready", timeout=SHOWN)

        # A caller presses 1: the callback appears on the wallboard, live.
        await request_callback(sip_caller, ari_observer, "7501", "2015550301")
        await expect(line(sup)).to_have_count(1, timeout=SHOWN)
        first = line(sup).nth(0)
        await expect(first).to_contain_text("CALLBACK")
        await expect(first).to_contain_text("2015550301")
        # A live caller arrives behind it, and is shown behind it; then hangs up.
        live = sip_caller("7501", caller="2015550302", hangup_after=6.0, max_duration=30)
        live.start()
        await expect(line(sup)).to_have_count(2, timeout=SHOWN)
        await expect(line(sup).nth(1)).to_contain_text("live")
        await expect(line(sup).nth(1)).to_contain_text("2015550302")
        # A second callback joins at the end; the supervisor cancels it from the page.
        await request_callback(sip_caller, ari_observer, "7501", "2015550303")
        await expect(line(sup)).to_have_count(3, timeout=SHOWN)
        await expect(line(sup).nth(2)).to_contain_text("2015550303")
        await live.wait(30)
        await expect(line(sup)).to_have_count(2, timeout=SHOWN)  # the live caller left
        positions = await sup.locator("table.line tbody tr td:first-child").all_inner_texts()
        assert positions == ["1", "2"]
        (ARTEFACTS / "screenshots").mkdir(parents=True, exist_ok=True)
        await sup.screenshot(path=str(ARTEFACTS / "screenshots" / "supervisor.png"),
                             full_page=True)
        sup.on("dialog", lambda d: d.accept())
        await line(sup).nth(1).get_by_test_id("cancel").click()
        await expect(line(sup)).to_have_count(1, timeout=SHOWN)
        cancelled = await stored_item(svc, "2015550303")
        assert cancelled.state == State.CANCELLED
        assert cancelled.history[-1].detail["reason"] == "cancelled by sup"

        # The agent goes available: the phone rings with the callback, the card shows it.
        await agent.click("#go-available")
        card = agent.get_by_test_id("offer-card")
        await expect(card).to_be_visible(timeout=SHOWN)
        await expect(card.locator("#offer-kind")).to_have_text("CALLBACK")
        await expect(card.locator("#offer-number")).to_have_text("2015550301")
        await expect(card.locator("#offer-attempts")).to_have_text("0")
        await phone.wait_for_calls(1, 20, lambda c: c.answered_at is not None)
        phase = agent.get_by_test_id("offer-phase")
        await expect(phase).to_contain_text("Preview", timeout=SHOWN)
        await expect(agent_row).to_contain_text("previewing", timeout=SHOWN)
        await agent.screenshot(path=str(ARTEFACTS / "screenshots" / "agent.png"),
                               full_page=True)
        # Answered and previewing, yet nobody is dialled before the click.
        assert carrier.calls() == []
        clicked = time.time()
        await agent.get_by_test_id("accept").click()
        [dialled] = await carrier.wait_for_calls(1, 20)
        assert dialled.invited_at >= clicked - 0.05  # the INVITE follows the click
        assert dialled.dialled.endswith("2015550301")
        await expect(phase).to_have_text("Connected", timeout=SHOWN)
        item = await stored_item(svc, "2015550301")
        accepts = [h for h in item.history if h.event == "dial_started"]
        assert len(accepts) == 1 and accepts[0].detail["agent"] == "agent1"
        # The customer hangs up: the card gives way to how it ended.
        await expect(agent.get_by_test_id("last")).to_contain_text("Conversation ended",
                                                                   timeout=SHOWN)
        await expect(line(sup)).to_have_count(0, timeout=SHOWN)
        funnel = sup.get_by_test_id("funnel")
        await expect(funnel).to_contain_text("Connected1", timeout=SHOWN)


async def test_customer_not_reached_card_shows_the_next_try_and_decline_returns_it(
    asterisk: AsteriskInstance, tmp_path: Path, browser: Browser, ari_observer: AriObserver,
    sip_caller: Callable[..., SipCaller], sip_phone: Callable[..., SipPhone],
    sip_carrier: Callable[..., SipCarrier],
) -> None:
    async with console_service(asterisk, tmp_path, "q7502", retry_interval="10m",
                               wrap_up="0s") as (svc, base):
        svc.board.set_ready("agent1", False)
        phone = sip_phone("agent1", behaviours=ANSWER_AND_STAY)
        carrier = sip_carrier(behaviours=BUSY)
        await request_callback(sip_caller, ari_observer, "7502", "2015550311")
        agent = await log_in(browser, base, "agent1", AGENT_PW)
        await expect(agent.get_by_test_id("status")).to_have_text("not ready", timeout=SHOWN)
        await agent.click("#go-available")
        card = agent.get_by_test_id("offer-card")
        await expect(card).to_be_visible(timeout=SHOWN)
        # Decline while it rings or previews: back to its place, nobody dialled.
        await agent.get_by_test_id("decline").click()
        [item] = svc.engine.items("q7502")

        def events() -> list[str]:
            return [h.event for h in item.history]

        # Offered again at once (no other agent could take it): the card is back for
        # the same callback; this time accepted, and the customer's line is busy.
        await until(lambda: events().count("offered") == 2, 10)
        offers = [e for e in events() if e in ("offered", "declined", "dial_started")]
        assert offers == ["offered", "declined", "offered"] and carrier.calls() == []
        await expect(card).to_be_visible(timeout=SHOWN)
        # (The first ring was declined while ringing or after the answer: either way,
        # the second offer is a second call that the phone answers.)
        await phone.wait_for_calls(2, 20)
        await until(lambda: phone.calls()[1].answered_at is not None, 20)
        await expect(agent.get_by_test_id("offer-phase")).to_contain_text("Preview",
                                                                          timeout=SHOWN)
        await agent.get_by_test_id("accept").click()
        [busy] = await carrier.wait_for_calls(1, 20, lambda c: c.ended)
        assert busy.rejected_with == 486
        last = agent.get_by_test_id("last")
        await expect(last).to_contain_text("not reached", timeout=SHOWN)
        await expect(last).to_contain_text("Attempt 1 failed; next try at")
        [held] = svc.engine.items("q7502")
        assert (held.attempts, held.state) == (1, State.CALLBACK_PENDING)
        # A second click on a finished offer changes nothing (the API says why).
        assert len(carrier.calls()) == 1
