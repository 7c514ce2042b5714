"""Retry timing and the circuit breaker: what a partner's endpoint experiences from the hub."""

from __future__ import annotations

import random

import pytest

from gsem.delivery.policy import CircuitBreaker, RetryPolicy


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    """Delays after 1, 2, 3 … failures stay under base·2^(n-1) and never exceed the cap."""
    policy = RetryPolicy(base=1.0, cap=10.0)
    rng = random.Random(1)
    for attempts, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (30, 10.0)]:
        delays = [policy.delay(attempts, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # full jitter uses the whole range


def test_jitter_spreads_retries_of_many_deliveries() -> None:
    """Deliveries that failed together do not all come back at the same moment."""
    policy = RetryPolicy(base=1.0, cap=300.0)
    rng = random.Random(2)
    delays = [policy.delay(6, rng) for _ in range(100)]
    assert len({round(d, 3) for d in delays}) > 90


def test_retry_after_is_honoured_even_beyond_the_cap() -> None:
    """A receiver's Retry-After is never undercut, even when it asks for more than the cap."""
    policy = RetryPolicy(base=1.0, cap=60.0)
    rng = random.Random(3)
    assert all(policy.delay(1, rng, retry_after=7) >= 7 for _ in range(50))
    assert policy.delay(1, rng, retry_after=3600) == 3600.0


@pytest.mark.parametrize(("attempts", "age", "exhausted"), [
    (19, 100.0, False), (20, 100.0, True), (1, 24 * 3600.0, True), (1, 24 * 3600.0 - 1, False),
])
def test_default_limits_are_twenty_attempts_or_a_day(attempts: int, age: float, exhausted: bool) -> None:
    """By default a delivery dies after 20 attempts or 24 hours, whichever comes first."""
    assert RetryPolicy().exhausted(attempts, age) is exhausted


def test_partner_settings_override_only_what_they_name() -> None:
    """A partner's retry table changes its keys; the others keep the defaults; unknown keys are ignored."""
    policy = RetryPolicy.from_config({"base": 5, "max_attempts": 3, "colour": "blue"})
    assert policy == RetryPolicy(base=5.0, cap=300.0, max_attempts=3, max_age=24 * 3600.0)
    assert isinstance(policy.max_attempts, int)


def test_the_breaker_opens_after_the_threshold_and_lets_one_probe_through() -> None:
    """Five failures pause the partner for the cool-down; then exactly one delivery may probe."""
    breaker = CircuitBreaker(threshold=5, cooldown=30.0)
    for _ in range(4):
        breaker.failed(0.0)
    assert breaker.allows(0.0) and not breaker.is_open
    breaker.failed(0.0)
    assert breaker.is_open
    assert not breaker.allows(29.9)
    assert breaker.allows(30.0)  # the probe
    assert not breaker.allows(30.0)  # only one at a time


def test_a_failed_probe_doubles_the_pause_up_to_the_maximum() -> None:
    """Each failed probe pauses twice as long as the last, capped at max_cooldown."""
    breaker = CircuitBreaker(threshold=1, cooldown=30.0, max_cooldown=100.0)
    breaker.failed(0.0)
    pauses = []
    now = 0.0
    for _ in range(4):
        now = breaker.open_until
        assert breaker.allows(now)
        breaker.failed(now)
        pauses.append(breaker.open_until - now)
    assert pauses == [60.0, 100.0, 100.0, 100.0]


def test_a_successful_probe_closes_the_breaker() -> None:
    """After one success everything flows again and the failure count starts over."""
    breaker = CircuitBreaker(threshold=2, cooldown=10.0)
    breaker.failed(0.0)
    breaker.failed(0.0)
    assert breaker.allows(10.0)
    breaker.succeeded()
    assert not breaker.is_open and breaker.allows(10.0) and breaker.allows(10.0)
    breaker.failed(11.0)
    assert not breaker.is_open  # one failure is below the threshold again
