"""What the cross-process adapters (PostgreSQL, Redis) have in common.

Both read their backend on one background thread and hand each message to the
callbacks registered in a :class:`Listeners` (:func:`deliver` decodes it;
``_listeners`` holds the callbacks); both reconnect on the same :class:`Backoff` and report an outage once
through :class:`Outage`; both use one wire format per message, so a reader of
either backend sees the same payloads:

* ``job_scheduled`` — ``{"type": type_name, "count": n}`` (JSON);
* ``chain_completed`` — the chain id;
* ``job_ownership_lost`` — the job id.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from typing import Literal, cast

from ._listeners import Listeners

log = logging.getLogger("queuert_sa.notify")

#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; Redis has no such
#: limit, but one format for both keeps payloads portable.
MAX_PAYLOAD_BYTES = 7999

#: The messages of the protocol; each adapter gives each its own channel,
#: ``<channel_prefix><separator><kind>``.
Kind = Literal["job_scheduled", "chain_completed", "job_ownership_lost"]

#: First and longest delay between reconnection attempts (seconds).
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0


def encode_job_scheduled(type_name: str, count: int) -> str:
    """``{"type": ..., "count": ...}`` — the job-scheduled payload."""
    return json.dumps({"type": type_name, "count": count}, ensure_ascii=False)


def decode_job_scheduled(payload: str) -> tuple[str, int] | None:
    """The (type name, count) of a job-scheduled payload; None if it is not one."""
    try:
        data = cast("object", json.loads(payload))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    fields = cast("dict[str, object]", data)
    type_name = fields.get("type")
    count = fields.get("count")
    if not isinstance(type_name, str) or not isinstance(count, int) or isinstance(count, bool):
        return None
    return type_name, count


def decode_id(payload: str) -> uuid.UUID | None:
    """The id of a chain-completed (chain id) or ownership-lost (job id) payload; None if none."""
    try:
        return uuid.UUID(payload)
    except ValueError:
        return None


def payload_fits(payload: str) -> bool:
    if len(payload.encode()) <= MAX_PAYLOAD_BYTES:
        return True
    log.warning(
        "notification dropped: its payload is %d bytes, the limit is %d (is a job type "
        "name that long?); workers still find the job by polling",
        len(payload.encode()),
        MAX_PAYLOAD_BYTES,
    )
    return False


def deliver(listeners: Listeners, kind: Kind, payload: str) -> None:
    """Decode a message that arrived on ``kind``'s channel and dispatch it.

    A payload that does not decode (another program on the channel) is ignored.
    """
    if kind == "job_scheduled":
        scheduled = decode_job_scheduled(payload)
        if scheduled is not None:
            listeners.job_scheduled(*scheduled)
        return
    some_id = decode_id(payload)
    if some_id is None:
        return
    if kind == "chain_completed":
        listeners.chain_completed(some_id)
    else:
        listeners.job_ownership_lost(some_id)


class Backoff:
    """Delays between reconnection attempts: 0.1 s, doubling, at most 5 s, ±10 %."""

    def __init__(self, initial: float = BACKOFF_INITIAL_S, cap: float = BACKOFF_MAX_S) -> None:
        self._initial = initial
        self._cap = cap
        self._next = initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._cap)
        return delay * random.uniform(0.9, 1.1)

    def reset(self) -> None:
        self._next = self._initial


class Outage:
    """Up/down state of one connection; logs each outage once, not each failure.

    ``may_try()`` gates callers that should not hammer a backend that is down
    (publishers): after a failure the next attempt waits for the backoff delay,
    and calls in between return False at once.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.Lock()
        self._down = False
        self._retry_at = 0.0
        self._backoff = Backoff()

    @property
    def is_down(self) -> bool:
        return self._down

    def may_try(self) -> bool:
        with self._lock:
            return not self._down or time.monotonic() >= self._retry_at

    def failed(self, error: BaseException) -> None:
        with self._lock:
            first = not self._down
            self._down = True
            self._retry_at = time.monotonic() + self._backoff.next_delay()
        if first:
            log.warning(
                "%s is unavailable (%s: %s); notifications are dropped until it is back, "
                "workers keep polling; reconnecting in the background",
                self.what,
                type(error).__name__,
                str(error).strip(),
            )
        else:
            log.debug("%s still unavailable: %s", self.what, error)

    def recovered(self) -> bool:
        """Mark the connection up; True if it was down (the outage is over)."""
        with self._lock:
            was_down = self._down
            self._down = False
            self._backoff.reset()
        if was_down:
            log.info("%s is back", self.what)
        return was_down
