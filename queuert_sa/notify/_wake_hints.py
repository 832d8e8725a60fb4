"""Wake hints of ``NatsNotify``: a job counter per type in a JetStream key-value bucket.

The producer adds the job count of a job-scheduled message to the type's
counter before it publishes the message; each listening process takes up to
that count from the counter (compare-and-set) and wakes its workers only for
what it took. So one job wakes one process, not all of them.

Every failure leans towards waking: a counter that is missing (expired, never
written) or unreadable, a bucket that cannot be reached, or five
compare-and-set races lost in a row, means "wake for the whole count"; the
database's ``SKIP LOCKED`` sorts out the extra lookers. A producer that loses
five races marks the counter unknown, which means the same until the bucket's
TTL removes it (a count started over would strand the jobs the old count stood
for). Only a counter at zero means "do not wake". (Upstream gives up silently on both sides, which can
leave a job to polling; here a lost race costs a spurious look instead.)
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol, cast

from nats.aio.client import Client as NatsClient
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from queuert_sa._logs import get_logger

log = get_logger("queuert_sa.notify")

#: Compare-and-set attempts before giving up (and waking: see the module doc).
CAS_ATTEMPTS = 5

#: The value of a counter that lost track; it means "wake" until it expires.
UNKNOWN = b"unknown"


class _JetStream(Protocol):
    """The key-value part of ``JetStreamContext`` (its ``**params`` are not annotated)."""

    async def key_value(self, bucket: str) -> KeyValue: ...
    async def create_key_value(self, *, bucket: str, ttl: float) -> KeyValue: ...


class _HasJetStream(Protocol):
    def jetstream(self) -> object: ...


def hint_key(channel_prefix: str, type_name: str) -> str:
    """The key of a type's counter: hex of the prefix and of the name (any name is valid)."""
    return f"{channel_prefix.encode().hex()}.{type_name.encode().hex()}"


class WakeHints:
    """The counters of one adapter, on the bucket of its current connection."""

    def __init__(self, channel_prefix: str, bucket: str, ttl: dt.timedelta) -> None:
        self._prefix = channel_prefix
        self._bucket = bucket
        self._ttl_s = ttl.total_seconds()
        self._kv: tuple[NatsClient, KeyValue] | None = None

    async def _store(self, nc: NatsClient) -> KeyValue:
        if self._kv is not None and self._kv[0] is nc:
            return self._kv[1]
        js = cast("_JetStream", cast("_HasJetStream", nc).jetstream())
        try:
            kv = await js.key_value(self._bucket)
        except BucketNotFoundError:
            kv = await js.create_key_value(bucket=self._bucket, ttl=self._ttl_s)
        self._kv = (nc, kv)
        return kv

    async def provide(self, nc: NatsClient, type_name: str, count: int) -> None:
        """Add ``count`` to the type's counter (best effort: a lost hint only wakes more)."""
        key = hint_key(self._prefix, type_name)
        try:
            kv = await self._store(nc)
            for _ in range(CAS_ATTEMPTS):
                try:
                    entry = await kv.get(key)
                except KeyNotFoundError:
                    try:
                        await kv.create(key, str(count).encode())
                    except KeyWrongLastSequenceError:
                        continue
                    return
                current = _count(entry.value)
                if current < 0:
                    return  # unknown stays unknown until the bucket's TTL removes it
                try:
                    await kv.update(key, str(current + count).encode(), last=entry.revision)
                except KeyWrongLastSequenceError:
                    continue
                return
            # Lost every race (consumers kept taking). Starting the counter over
            # would strand the jobs it still stood for: mark it unknown instead.
            await kv.put(key, UNKNOWN)
        except Exception as exc:
            log.debug("wake hint for %r not written: %s", type_name, exc)

    async def consume(self, nc: NatsClient, type_name: str, count: int) -> int:
        """Take up to ``count`` from the type's counter; how many to wake for."""
        key = hint_key(self._prefix, type_name)
        try:
            kv = await self._store(nc)
            for _ in range(CAS_ATTEMPTS):
                try:
                    entry = await kv.get(key)
                except KeyNotFoundError:
                    return count  # unknown counts as "go"
                current = _count(entry.value)
                if current < 0:
                    return count
                if current == 0:
                    return 0
                taken = min(current, count)
                try:
                    await kv.update(key, str(current - taken).encode(), last=entry.revision)
                except KeyWrongLastSequenceError:
                    continue
                return taken
        except Exception as exc:
            log.debug("wake hint for %r not read (%s): waking", type_name, exc)
        return count


def _count(value: bytes | None) -> int:
    """The counter's value; -1 when it is not a number (treated as missing)."""
    try:
        return int((value or b"").decode())
    except ValueError:
        return -1
