"""The retry decision: how long a failed attempt waits before the next one.

Pure functions of (attempt, config, random source); no IO, no clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential backoff between attempts of a failing job.

    The delay after attempt ``n`` (1-based) is
    ``min(initial * multiplier ** (n - 1), maximum)``, then spread by
    ``± jitter`` so that jobs failing together do not retry together.
    With the defaults: 10 s, 20 s, 40 s, 80 s, 160 s, 300 s, 300 s, ... (±10 %).
    """

    initial: timedelta = timedelta(seconds=10)
    """Delay after the first failed attempt. Defaults to 10 seconds."""

    multiplier: float = 2.0
    """Growth factor per further attempt. Defaults to 2."""

    maximum: timedelta = timedelta(seconds=300)
    """Upper bound of the delay before jitter. Defaults to 300 seconds."""

    jitter: float = 0.1
    """Relative spread, 0 to 1: 0.1 means ±10 %. Defaults to 0.1."""

    def __post_init__(self) -> None:
        if self.initial < timedelta(0) or self.maximum < timedelta(0):
            raise ValueError("Backoff.initial and Backoff.maximum must not be negative")
        if self.multiplier < 1:
            raise ValueError("Backoff.multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("Backoff.jitter must be between 0 and 1")


DEFAULT_BACKOFF = Backoff()


def backoff_delay(attempt: int, backoff: Backoff, rng: random.Random | None = None) -> timedelta:
    """Delay before the retry that follows failed attempt number ``attempt`` (1-based)."""
    n = max(attempt, 1)
    initial = backoff.initial.total_seconds()
    maximum = backoff.maximum.total_seconds()
    # Cap the exponent first: multiplier ** 10_000 overflows a float.
    base = initial
    for _ in range(n - 1):
        base *= backoff.multiplier
        if base >= maximum:
            break
    base = min(base, maximum)
    if backoff.jitter:
        spread = (rng or random).uniform(-backoff.jitter, backoff.jitter)
        base *= 1 + spread
    return timedelta(seconds=max(base, 0.0))
