"""``q.Rate``: how many attempts of a job type may start per period, across every worker."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._durations import Duration, as_duration
from ._errors import WorkerConfigError

#: Bucket names longer than this are hashed (the column is ``VARCHAR(255)``).
_MAX_NAME = 255


@dataclass(frozen=True, init=False)
class Rate:
    """At most ``count`` attempts of a type start per ``per``, fleet-wide (a token bucket).

    ::

        @worker.handler(send_mail, rate=q.Rate(14, per=timedelta(seconds=1)))
        @worker.handler(call_api, rate=q.Rate(100, per=timedelta(minutes=1),
                                              key=lambda input: input["customer_id"]))

    Args:
        count: Attempts per period, at least 1.
        per: The period (a ``timedelta`` or seconds).
        burst: How many may start at once after a quiet spell (the bucket's
            size). Default 1: attempts are spread evenly, one every
            ``per / count``.
        key: A function of a job's input (as stored: the JSON value) giving
            the key whose own bucket the job uses, e.g. per customer. Default:
            one bucket for the type.

    A job that finds no token stays pending and is delayed until one is due:
    never failed, its attempt count untouched. The buckets live in the
    ``queuert_rate_bucket`` table, shared by every worker on the database.
    """

    count: int
    per: dt.timedelta
    burst: int
    key: Callable[[Any], object] | None

    def __init__(
        self,
        count: int,
        *,
        per: Duration,
        burst: int = 1,
        key: Callable[[Any], object] | None = None,
    ) -> None:
        for name, value in (("count", count), ("burst", burst)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:  # pyright: ignore[reportUnnecessaryIsInstance]
                raise WorkerConfigError(
                    f"Rate({name}=...) must be a whole number, at least 1, not {value!r}"
                )
        period = as_duration(per, "per")
        if period <= dt.timedelta(0):
            raise WorkerConfigError(f"Rate(per=...) must be a positive period, not {period}")
        if key is not None and not callable(key):
            raise WorkerConfigError(f"Rate(key=...) must be a function of the input, not {key!r}")
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "per", period)
        object.__setattr__(self, "burst", burst)
        object.__setattr__(self, "key", key)

    @property
    def per_second(self) -> float:
        """Tokens added per second."""
        return self.count / self.per.total_seconds()

    def bucket(self, type_name: str, raw_input: Any) -> str:
        """The bucket a job of ``type_name`` with this stored input takes its token from."""
        if self.key is None:
            return type_name
        name = f"{type_name}\x1f{self.key(raw_input)}"
        if len(name) > _MAX_NAME:
            digest = hashlib.sha256(name.encode()).hexdigest()
            name = f"{type_name[:180]}\x1fsha256:{digest}"
        return name
