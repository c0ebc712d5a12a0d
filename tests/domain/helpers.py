"""Shared builders for the domain tests (plain functions, not fixtures, so these tests
do not depend on any conftest)."""

from __future__ import annotations

from ivr.domain import FakeClock, QueueEngine, QueuePolicy


def make_engine(*policies: QueuePolicy) -> tuple[QueueEngine, FakeClock]:
    clock = FakeClock()
    if not policies:
        policies = (
            QueuePolicy("sales", max_waiting=3, max_ewt=300, retry_interval=600, max_attempts=3),
            QueuePolicy("support"),
        )
    return QueueEngine(policies, clock), clock
