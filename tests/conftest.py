"""Shared fixtures for tests against a real Asterisk 22 (see rig/sandbox.py).

``asterisk`` (session): one sandboxed Asterisk for the whole run. Tests keep out of
each other's way by using their own DID 7xxx (queue ``q7xxx``) and their own peers.
The helpers behind these fixtures live in ``tests/support/`` and ``tests/peers/``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rig.sandbox import AsteriskInstance
from tests import peers
from tests.peers import SipCaller, SipCarrier, SipPhone
from tests.support.asterisk import finish_asterisk, start_asterisk
from tests.support.observer import AriObserver
from tests.support.postgres import pg_dsn, pg_server  # noqa: F401 (fixtures)
from tests.support.service import StartService, serving


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tiers: every test that needs the real Asterisk (the ``asterisk`` fixture, or a
    sandbox of its own) is marked ``asterisk``; ``-m "not asterisk"`` is the fast tier
    that runs without root in under a minute."""
    for item in items:
        if "asterisk" in getattr(item, "fixturenames", ()) or item.path.name in OWN_SANDBOX:
            item.add_marker(pytest.mark.asterisk)


# Test modules that start a sandboxed Asterisk of their own (not the shared fixture).
OWN_SANDBOX = frozenset({"test_quickstart.py", "test_restart.py", "test_rig.py",
                         "test_nodes_rig.py", "test_standby.py", "test_nodes_real.py"})


@pytest.fixture(autouse=True)
def _no_sipp_left_behind() -> Iterator[None]:
    yield
    peers.stop_all()


@pytest.fixture(scope="session")
def asterisk() -> Iterator[AsteriskInstance]:
    inst = start_asterisk()
    try:
        yield inst
    finally:
        finish_asterisk(inst)


@pytest.fixture
async def ari_observer(asterisk: AsteriskInstance) -> AsyncIterator[AriObserver]:
    """A second ARI app (``observer``, subscribeAll) that records every event."""
    obs = AriObserver(asterisk)
    await obs.start()
    try:
        yield obs
    finally:
        await obs.close()


@pytest.fixture
async def service(asterisk: AsteriskInstance, tmp_path: Path) -> AsyncIterator[StartService]:
    """``await service(queues, agents=None, *, not_ready=(), wait_reachable=True, **top)``
    starts the real service in-process (``tests/support/service.py``: ``serving``);
    agents listed in ``not_ready`` are set not-ready before any call arrives. Every
    service started is stopped at teardown."""
    async with serving(asterisk, tmp_path) as start:
        yield start


@pytest.fixture
def sip_caller(asterisk: AsteriskInstance) -> Iterator[Callable[..., SipCaller]]:
    """Factory: ``sip_caller(did, caller="5551234", digits=[(2.0, "1")], ...)``."""
    made: list[SipCaller] = []

    def make(did: str, **kwargs: Any) -> SipCaller:
        c = SipCaller(asterisk, did, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def sip_phone(asterisk: AsteriskInstance) -> Iterator[Callable[..., SipPhone]]:
    """Factory: ``sip_phone("agent1", behaviours=CallBehaviour(...))`` (started)."""
    made: list[SipPhone] = []

    def make(agent: str, **kwargs: Any) -> SipPhone:
        p = SipPhone(asterisk, agent, **kwargs)
        made.append(p)
        p.start()
        return p

    yield make
    for p in made:
        p.stop()


@pytest.fixture
def sip_carrier(asterisk: AsteriskInstance) -> Iterator[Callable[..., SipCarrier]]:
    """Factory: ``sip_carrier(behaviours=CallBehaviour(answer_after=0.5))`` (started).

    Only one carrier can listen on ``asterisk.carrier_port`` at a time.
    """
    made: list[SipCarrier] = []

    def make(**kwargs: Any) -> SipCarrier:
        c = SipCarrier(asterisk, **kwargs)
        made.append(c)
        c.start()
        return c

    yield make
    for c in made:
        c.stop()
