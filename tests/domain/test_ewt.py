"""R16 estimator on its own: EMA, prior, per-agent normalisation, idle gaps."""

from __future__ import annotations

import math

import pytest

from ivr.domain.ewt import EWT_ERROR_SAMPLES, DequeueEstimator, spoken_wait


def test_prior_until_first_sample_then_ema() -> None:
    est = DequeueEstimator(alpha=0.25, initial_interval=60)
    assert est.estimate(3, 1) == 180
    assert est.dequeued(100.0, 1) is None  # no start point: nothing measurable
    est.queue_became_busy(200.0)
    assert est.dequeued(240.0, 1) == 40
    assert est.per_agent_interval == 40  # first sample replaces the prior
    est.dequeued(300.0, 1)  # 60 s
    assert est.per_agent_interval == pytest.approx(40 + 0.25 * 20)
    est.dequeued(310.0, 3)  # 10 s with 3 agents = 30 s per agent
    assert est.per_agent_interval == pytest.approx(45 + 0.25 * (30 - 45))


def test_estimate_edges() -> None:
    est = DequeueEstimator(alpha=0.5, initial_interval=60)
    assert est.estimate(0, 1) == 0
    assert est.estimate(2, 0) == math.inf
    assert est.estimate(4, 2) == 120


def test_errors_are_bounded() -> None:
    est = DequeueEstimator(alpha=0.5, initial_interval=60)
    for i in range(EWT_ERROR_SAMPLES + 10):
        est.record_error(float(i), float(i))
    assert len(est.errors) == EWT_ERROR_SAMPLES
    assert est.errors[-1] == (EWT_ERROR_SAMPLES + 9, EWT_ERROR_SAMPLES + 9)


@pytest.mark.parametrize(("alpha", "interval"), [(0, 60), (1.5, 60), (0.5, 0)])
def test_bad_parameters(alpha: float, interval: float) -> None:
    with pytest.raises(ValueError):
        DequeueEstimator(alpha=alpha, initial_interval=interval)


@pytest.mark.parametrize(("seconds", "said"), [
    (math.inf, ("unknown", 0)), (0, ("under_minute", 0)), (59.9, ("under_minute", 0)),
    (60, ("about", 1)), (89, ("about", 1)), (91, ("about", 2)), (240, ("about", 4)),
    (10 * 60 + 29, ("about", 10)), (11 * 60, ("about", 10)), (13 * 60, ("about", 15)),
    (29 * 60, ("about", 30)), (32 * 60, ("about", 30)), (33 * 60, ("more_than", 30)),
    (5 * 3600, ("more_than", 30)),
])
def test_the_wait_is_said_the_way_people_speak(seconds: float, said: tuple[str, int]) -> None:
    assert spoken_wait(seconds) == said
