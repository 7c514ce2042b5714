"""Retry timing and the per-partner circuit breaker (SPEC §7), on an injected clock.

Pure: no I/O.  Times are seconds from the caller's clock (``IReactorTime.seconds``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["RetryPolicy", "CircuitBreaker"]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, a cap, and limits in attempts and time.

    Defaults: first retry within 1 s, doubling to at most 5 minutes between attempts,
    dead after 20 attempts or 24 hours, whichever comes first.  Per partner, any of
    these can be set under ``retry`` in its delivery configuration.
    """

    base: float = 1.0
    cap: float = 300.0
    max_attempts: int = 20
    max_age: float = 24 * 3600.0

    def delay(self, attempts_made: int, rng: random.Random | None = None,
              retry_after: float | None = None) -> float:
        """Seconds to wait after *attempts_made* failed attempts ("full jitter").

        A receiver's ``Retry-After`` is honoured even beyond the cap: the receiver knows
        when it can take the delivery again, and hammering it sooner helps nobody.  The
        delivery's ``max_age`` still bounds how long it is tried in all.
        """
        ceiling = min(self.cap, self.base * (2 ** max(attempts_made - 1, 0)))
        delay = (rng or random).uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def exhausted(self, attempts_made: int, age: float) -> bool:
        """True when no further attempt may be made."""
        return attempts_made >= self.max_attempts or age >= self.max_age

    @classmethod
    def from_config(cls, config: dict) -> RetryPolicy:
        """A policy from a partner's ``retry`` settings (missing keys keep the defaults)."""
        known = {k: float(v) if k != "max_attempts" else int(v) for k, v in config.items()
                 if k in ("base", "cap", "max_attempts", "max_age")}
        return cls(**known)


@dataclass
class CircuitBreaker:
    """Pauses a partner whose endpoint keeps failing, then lets one probe through.

    Closed: deliveries flow.  After *threshold* consecutive transient failures it opens
    for *cooldown* seconds (doubling on each failed probe, up to *max_cooldown*); then one
    delivery is let through as a probe: success closes it, failure opens it again.
    """

    threshold: int = 5
    cooldown: float = 30.0
    max_cooldown: float = 600.0
    failures: int = 0
    open_until: float | None = None
    probing: bool = False
    _current_cooldown: float = field(default=0.0, repr=False)

    def configure(self, retry: dict) -> None:
        """Take the limits of a partner's ``retry`` settings (``pause_after``, ``pause``,
        ``max_pause``); missing ones go back to the defaults."""
        self.threshold = int(retry.get("pause_after", CircuitBreaker.threshold))
        self.cooldown = float(retry.get("pause", CircuitBreaker.cooldown))
        self.max_cooldown = float(retry.get("max_pause", CircuitBreaker.max_cooldown))

    def allows(self, now: float) -> bool:
        """May a delivery be attempted now?  (At most one probe while half-open.)"""
        if self.open_until is None:
            return True
        if now < self.open_until or self.probing:
            return False
        self.probing = True
        return True

    def succeeded(self) -> None:
        """The receiver took a delivery: close the circuit."""
        self.failures = 0
        self.open_until = None
        self.probing = False
        self._current_cooldown = 0.0

    def failed(self, now: float) -> None:
        """A transient failure (a permanent one says nothing about the endpoint)."""
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self._current_cooldown = min(self.max_cooldown,
                                         self._current_cooldown * 2 if self.probing else self.cooldown)
            self.open_until = now + self._current_cooldown
            self.probing = False

    @property
    def is_open(self) -> bool:
        """True while deliveries to this partner are paused."""
        return self.open_until is not None
