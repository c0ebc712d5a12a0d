"""Reading the API's bodies in tests: a queue or an agent by name, a counter by event."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def queue(body: Any, name: str) -> Any:
    """The queue ``name`` of a ``GET /api/queues`` body."""
    return next(q for q in body["queues"] if q["name"] == name)


def agent(body: Any, agent_id: str) -> Any:
    """The agent ``agent_id`` of a ``GET /api/agents`` body."""
    return next(a for a in body["agents"] if a["id"] == agent_id)


def metric(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples ``name`` whose labels include ``labels`` (None: absent)."""
    found: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                found = (found or 0.0) + sample.value
    return found
