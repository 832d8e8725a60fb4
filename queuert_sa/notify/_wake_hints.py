"""Wake hints of ``NatsNotify``: tickets in a JetStream key-value bucket, one per job.

A job-scheduled message from a producer with hints carries a random id
(``"hint"`` in the payload). It stands for ``count`` tickets, keys
``<hex of the prefix>.<hex of the type name>.<id>.<i>`` for ``i < count``; a
listening process that receives it tries to *create* those keys, all at once,
and wakes its workers once per key it created. Creating a key that exists
fails, so every ticket is won by exactly one process: one job wakes one
process, not all of them, at the cost of one key-value round trip on the
listener and none on the producer. Names are hex-encoded, so any type name
and prefix give a valid key; tickets expire with the bucket's TTL.

Every failure leans towards waking: a message without an id (a producer
without hints), or a bucket that cannot be reached, means "wake for the whole
count"; the database's ``SKIP LOCKED`` sorts out the extra lookers. Only
tickets that other processes won mean "do not wake".

Unlike upstream's one counter per type (read, then compare-and-set, on both
sides, giving up after five lost races), tickets have no hot key to contend
for, so a burst of notifications neither slows down on retries nor loses
wake-ups when the retries run out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Protocol, cast

from nats.aio.client import Client as NatsClient
from nats.js.api import StorageType
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from queuert_sa._logs import get_logger

log = get_logger("queuert_sa.notify")

#: Tickets one message stands for at most. For a bigger batch, a process that
#: won a ticket also wakes for the jobs beyond them: a batch that big keeps every
#: idle slot busy anyway.
MAX_TICKETS = 64

#: The ticket value (its key is what counts).
_TICKET = b"1"


class _JetStream(Protocol):
    """The key-value part of ``JetStreamContext`` (its ``**params`` are not annotated)."""

    async def key_value(self, bucket: str) -> KeyValue: ...
    async def create_key_value(
        self, *, bucket: str, ttl: float, storage: StorageType
    ) -> KeyValue: ...


class _HasJetStream(Protocol):
    def jetstream(self) -> object: ...


def new_hint_id() -> str:
    """The id of one job-scheduled message's tickets."""
    return uuid.uuid4().hex


def ticket_key(channel_prefix: str, type_name: str, hint_id: str, index: int) -> str:
    """The key of ticket ``index`` of a message: hex of the prefix and type name, id, index."""
    return f"{channel_prefix.encode().hex()}.{type_name.encode().hex()}.{hint_id}.{index}"


class WakeHints:
    """The tickets of one adapter, in the bucket on its current connection."""

    def __init__(self, channel_prefix: str, bucket: str, ttl: dt.timedelta) -> None:
        self._prefix = channel_prefix
        self._bucket = bucket
        self._ttl_s = ttl.total_seconds()
        self._kv: tuple[NatsClient, KeyValue] | None = None

    async def ready(self, nc: NatsClient) -> None:
        """Open (or create) the bucket now, so that the first message waits for nothing more."""
        try:
            await self._store(nc)
        except Exception as exc:
            log.debug("wake hint bucket %r not opened: %s", self._bucket, exc)

    async def _store(self, nc: NatsClient) -> KeyValue:
        if self._kv is not None and self._kv[0] is nc:
            return self._kv[1]
        js = cast("_JetStream", cast("_HasJetStream", nc).jetstream())
        try:
            kv = await js.key_value(self._bucket)
        except BucketNotFoundError:
            # In memory: tickets are worth nothing after their TTL, or after a restart.
            kv = await js.create_key_value(
                bucket=self._bucket, ttl=self._ttl_s, storage=StorageType.MEMORY
            )
        self._kv = (nc, kv)
        return kv

    async def claim(self, nc: NatsClient, type_name: str, count: int, hint_id: str) -> int:
        """How many of the message's tickets this process won: how many slots to wake."""
        tickets = min(count, MAX_TICKETS)
        try:
            kv = await self._store(nc)
            keys = [ticket_key(self._prefix, type_name, hint_id, i) for i in range(tickets)]
            results = await asyncio.gather(
                *(kv.create(key, _TICKET) for key in keys), return_exceptions=True
            )
        except Exception as exc:
            log.debug("wake hint for %r not claimed (%s): waking", type_name, exc)
            return count
        won = sum(not isinstance(result, BaseException) for result in results)
        failed = [
            r
            for r in results
            if isinstance(r, BaseException) and not isinstance(r, KeyWrongLastSequenceError)
        ]
        if failed:
            # Not "taken by another process": the bucket misbehaved. Wake for those.
            log.debug("wake hint for %r: %d not claimed: %s", type_name, len(failed), failed[0])
            won += len(failed)
        if count > tickets and won:
            won += count - tickets  # the tickets beyond the cap are nobody's: wake for them
        return won
