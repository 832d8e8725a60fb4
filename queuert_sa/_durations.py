"""Lengths of time in the public API: a ``timedelta``, or a number of seconds.

Every option that takes a duration (``poll_interval=``, ``timeout=``,
``lease=``, ``run_in=``, ``older_than=``, ``Backoff(initial=...)``, ...) takes
either; it is turned into a ``timedelta`` where it enters the library.
"""

from __future__ import annotations

import datetime as dt
import math

Duration = dt.timedelta | float
"""A length of time: a ``timedelta``, or a number of seconds (``5``, ``0.25``)."""


def as_duration(value: object, name: str) -> dt.timedelta:
    """``value`` as a ``timedelta``; a number is seconds. Anything else is a ``TypeError``."""
    if isinstance(value, dt.timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return dt.timedelta(seconds=value)
    raise TypeError(f"{name} takes a timedelta or a number of seconds, not {value!r:.60}")
