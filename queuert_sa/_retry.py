"""The retry decision: when a failed attempt runs again (or that it never does), and the error kept.

Pure functions of (error, attempt number, config, ``now``, random source); no
IO and no clock of their own. ``Reschedule`` is the handler's way to choose
the time itself.
"""

from __future__ import annotations

import datetime as dt
import random
import traceback
from dataclasses import dataclass
from datetime import timedelta

from ._durations import Duration, as_duration

#: ``last_attempt_error`` is cut to this many characters.
MAX_ERROR_CHARS = 10_000


class Reschedule(Exception):
    """Raise from a handler to retry the job at a chosen time instead of with backoff.

    Everything the attempt wrote is rolled back, as for any exception; the job
    becomes pending at ``run_at`` (or ``run_in`` from now) and ``reason`` is
    recorded in ``last_attempt_error``.
    """

    def __init__(
        self,
        *,
        run_at: dt.datetime | None = None,
        run_in: Duration | None = None,
        reason: str = "",
    ) -> None:
        if (run_at is None) == (run_in is None):
            raise ValueError("Reschedule needs exactly one of run_at= or run_in=")
        if run_at is not None and run_at.tzinfo is None:
            raise ValueError("Reschedule(run_at=...) needs an aware datetime")
        super().__init__(reason or "rescheduled by the handler")
        self.run_at = run_at
        self.run_in = None if run_in is None else as_duration(run_in, "Reschedule(run_in=...)")
        self.reason = reason


class Fail(Exception):
    """Raise from a handler to fail the job at once: no retries, whatever ``max_attempts`` says.

    For work that cannot succeed however often it runs (the order was deleted,
    the input is invalid). Everything the attempt wrote is rolled back, as for
    any exception; the job becomes ``failed`` with ``reason`` in
    ``last_attempt_error``, and its chain reads as failed. ``retry_job`` runs
    it again once the cause is fixed.
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "failed by the handler")
        self.reason = reason


@dataclass(frozen=True, kw_only=True, init=False)
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

    def __init__(
        self,
        *,
        initial: Duration = timedelta(seconds=10),
        multiplier: float = 2.0,
        maximum: Duration = timedelta(seconds=300),
        jitter: float = 0.1,
    ) -> None:
        # Written by hand so that initial= and maximum= take seconds too.
        object.__setattr__(self, "initial", as_duration(initial, "Backoff(initial=...)"))
        object.__setattr__(self, "multiplier", multiplier)
        object.__setattr__(self, "maximum", as_duration(maximum, "Backoff(maximum=...)"))
        object.__setattr__(self, "jitter", jitter)
        self._check()

    def _check(self) -> None:
        if self.initial < timedelta(0) or self.maximum < timedelta(0):
            raise ValueError("Backoff.initial and Backoff.maximum must not be negative")
        if self.multiplier < 1:
            raise ValueError("Backoff.multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("Backoff.jitter must be between 0 and 1")


DEFAULT_BACKOFF = Backoff()

# Raised by handlers and shown in their tracebacks: named by their public module.
Reschedule.__module__ = Fail.__module__ = "queuert_sa"


def is_attempt_limit(value: object) -> bool:
    """Whether ``value`` is a retry limit: None (unlimited) or a whole number, at least 1."""
    return value is None or (type(value) is int and value >= 1)


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


def describe_error(exc: BaseException) -> str:
    """The text kept in ``last_attempt_error``: the traceback, cut to a bounded size."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    if len(text) > MAX_ERROR_CHARS:
        suffix = "… [truncated]"
        text = text[: MAX_ERROR_CHARS - len(suffix)] + suffix
    return text


def retry_decision(
    exc: BaseException,
    *,
    attempt: int,
    backoff: Backoff,
    now: dt.datetime,
    rng: random.Random | None = None,
    max_attempts: int | None = None,
    fail_on: tuple[type[BaseException], ...] = (),
) -> tuple[dt.datetime | None, str]:
    """When a failed attempt runs again (None: never, the job fails), and the error text to keep.

    ``Fail``, the exceptions of ``fail_on`` and queuert's errors that no
    retry can fix (``fails_job``, e.g. ``DuplicateJobIdError``) fail the job
    at once; so does
    any other failure of attempt number ``max_attempts``. ``Reschedule`` is
    the handler's choice of time, not a failure: it never fails the job (its
    attempts still count towards the limit). Any other exception waits the
    backoff delay for this attempt number.
    """
    if isinstance(exc, Reschedule):
        at = (
            exc.run_at.astimezone(dt.UTC)
            if exc.run_at is not None
            else now + (exc.run_in or dt.timedelta(0))
        )
        return max(at, now), f"Reschedule: {exc.reason or 'rescheduled by the handler'}"
    if isinstance(exc, Fail):
        return None, f"Fail: {exc.reason or 'failed by the handler'}"
    if getattr(type(exc), "fails_job", False):
        return None, describe_error(exc)  # e.g. DuplicateJobIdError: would fail again
    if isinstance(exc, (SystemExit, KeyboardInterrupt)):
        # The process is ending, which is no fault of the job's.
        return now + backoff_delay(attempt, backoff, rng), describe_error(exc)
    if (fail_on and isinstance(exc, fail_on)) or (
        max_attempts is not None and attempt >= max_attempts
    ):
        return None, describe_error(exc)
    return now + backoff_delay(attempt, backoff, rng), describe_error(exc)
