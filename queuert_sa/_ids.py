"""Job ids: time-ordered UUIDs (version 7, RFC 9562).

Time-ordered ids keep the primary-key index append-mostly, which matters for a
table that receives a steady stream of inserts.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import uuid

from ._errors import InvalidJobIdError

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id() -> uuid.UUID:
    """A new UUIDv7: 48-bit Unix milliseconds, then a 12-bit counter and random bits."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            # Same millisecond (or clock went back): keep ids monotonic.
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        counter = _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= rand
    return uuid.UUID(int=value)


def new_ids(count: int) -> list[uuid.UUID]:
    """``count`` new UUIDv7s in increasing order, as ``count`` calls of :func:`new_id` would give.

    One clock read, one lock and one draw of random bits for all of them (a
    batched start's ids): the ids of one call share a millisecond, as calls
    within one millisecond do, and roll over to the next when its counter is
    used up.
    """
    global _last_ms, _counter
    if count == 1:
        return [new_id()]  # one id: without the batch's bookkeeping
    random = os.urandom(8 * count + 2)
    stamps: list[int] = []
    with _lock:
        ms = time.time_ns() // 1_000_000
        last_ms, counter = _last_ms, _counter
        if ms > last_ms:
            # A new millisecond: the counter starts at a random point of its lower
            # quarter (room to count on before rolling over).
            last_ms, counter = ms, (int.from_bytes(random[-2:], "big") & 0x3FF) - 1
        for _ in range(count):
            counter += 1
            if counter > 0xFFF:  # same millisecond (or clock went back): keep ids monotonic
                last_ms, counter = last_ms + 1, 0
            stamps.append(((last_ms & _MS_MASK) << 16) | _VERSION | counter)
        _last_ms, _counter = last_ms, counter
    return [
        uuid.UUID(int=(stamp << 64) | _VARIANT | (rand & _RAND_MASK))
        for stamp, rand in zip(stamps, struct.unpack_from(f">{count}Q", random), strict=True)
    ]


_MS_MASK = (1 << 48) - 1
_VERSION = 0x7 << 12
_VARIANT = 0b10 << 62
_RAND_MASK = (1 << 62) - 1


def coerce_id(value: object) -> uuid.UUID:
    """Accept a UUID or its string form; :class:`InvalidJobIdError` otherwise."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidJobIdError(value)
