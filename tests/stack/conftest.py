"""The stack tier: docker-compose.yml built and run on a private Docker engine
(``rig/stack.py``; provisioned by ``scripts/install-docker``), called with sipp.

``pytest -m stack`` runs this tier alone. Its tests are marked ``asterisk`` too (they need
root and a real Asterisk 22, here in a container), so ``-m "not asterisk"`` stays the fast
tier. When the engine cannot be provisioned or started the tests FAIL (CI runs them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rig.stack import Engine, StackError
from tests.stack.harness import Stack, StackCaller, launch

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "stack: builds and runs docker-compose.yml on a private Docker engine "
        "(root; scripts/install-docker provisions it)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.stack)
            item.add_marker(pytest.mark.asterisk)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """A private dockerd with the base images imported; stopped after this tier's tests
    (module scope: not kept running through the rest of a whole-suite run)."""
    try:
        eng = Engine.start()
    except StackError as exc:
        pytest.fail(f"cannot start the Docker engine for the stack tests: {exc}", pytrace=False)
    try:
        try:
            eng.import_base_images()
        except StackError as exc:
            pytest.fail(f"cannot provide the base images: {exc}", pytrace=False)
        yield eng
    finally:
        eng.stop()


@pytest.fixture(scope="module")
def stack(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack built from this checkout and up (``docker compose up -d --wait``) on free
    ports with generated secrets; ``down -v`` at the end."""
    work = tmp_path_factory.mktemp("stack")
    try:
        with launch(engine, work) as running:
            yield running
    except StackError as exc:
        pytest.fail(f"the compose stack failed: {exc}", pytrace=False)


@pytest.fixture
def stack_caller(stack: Stack) -> Iterator[Callable[..., StackCaller]]:
    """Factory: ``stack_caller(caller="2015550123", digits=[(6.0, "1")], ...)`` (a
    ``SipCaller`` to the stack's DID, not started). Each is stopped and its sipp folder
    removed at teardown."""
    made: list[StackCaller] = []

    def make(**kwargs: Any) -> StackCaller:
        c = stack.caller(**kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()
