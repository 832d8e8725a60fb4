"""The notify promises seen from an event loop, and that the asyncio-native adapters never block it.

``AsyncQueuert`` and ``AsyncWorker`` subscribe through ``listen_on_loop`` and
publish after COMMIT on their loop. Here every adapter kind of the
conformance suite is used that way; the asyncio-native ones
(``AsyncPostgresNotify``, ``AsyncRedisNotify``, ``NatsNotify``) must also keep
the loop responsive: a probe task that sleeps 5 ms at a time measures how
late it wakes, during a storm of notifications and while the backend is down
or hangs (a server that accepts connections and never answers).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest

from queuert_sa.notify import AsyncNotifyAdapter, NotifyAdapter
from queuert_sa.notify._on_loop import listen_on_loop
from queuert_sa.notify.asyncio_postgres import AsyncPostgresNotify
from queuert_sa.notify.asyncio_redis import AsyncRedisNotify
from queuert_sa.notify.nats import NatsNotify

from .test_notify_conformance import KINDS, make_adapter, postgres_conninfo, unique_prefix
from .test_notify_resilience import free_port

__all__ = ["postgres_conninfo"]  # a fixture, imported to be used here

DELIVERY_TIMEOUT_S = 5.0
#: How late the probe may wake. A loop blocked by a connect or a round trip
#: per message is seconds late (a thread-based adapter on a hung server: the
#: whole connect timeout). The asyncio-native adapters keep it within a few ms;
#: a busy CI machine adds tens of ms, and the garbage collector what it takes
#: for the objects made during the test (see ``LagProbe.running``).
LAG_LIMIT_S = 0.25
NATIVE_KINDS = ["postgres-async", "redis-async", "nats", "nats-hints"]


class LagProbe:
    """A task that sleeps ``period`` at a time and records how much later it woke."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.period)
            self.worst = max(self.worst, loop.time() - before - self.period)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[LagProbe]:
        # What is measured is the adapter, not the collector: a full collection
        # of this test process's heap (the whole suite's objects) can take
        # longer than the bound. Frozen objects are not collected again.
        gc.collect()
        gc.freeze()
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        try:
            yield self
        finally:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            gc.unfreeze()


class LoopInbox:
    """A listener callback that records its calls and wakes a waiting coroutine (any thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.calls: list[tuple[object, ...]] = []
        self._changed = asyncio.Event()

    def __call__(self, *args: object) -> None:
        self.loop.call_soon_threadsafe(self._record, args)

    def _record(self, args: tuple[object, ...]) -> None:
        self.calls.append(args)
        self._changed.set()

    async def wait_until(
        self, condition: Callable[[], bool], timeout: float = DELIVERY_TIMEOUT_S
    ) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return condition()
        return True

    async def wait_for(self, *call: object) -> bool:
        return await self.wait_until(lambda: call in self.calls)


async def close(adapter: NotifyAdapter) -> None:
    if isinstance(adapter, AsyncNotifyAdapter):
        await adapter.aclose()
    else:
        await asyncio.to_thread(adapter.close)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_from_an_event_loop_every_message_reaches_its_listeners(
    kind: str, request: pytest.FixtureRequest
) -> None:
    prefix = unique_prefix()

    async def main() -> None:
        producer = make_adapter(kind, request, prefix)
        listener = (
            producer if kind in ("memory", "recording") else make_adapter(kind, request, prefix)
        )
        try:
            jobs, chains, lost = LoopInbox(), LoopInbox(), LoopInbox()
            chain_id, job_id = uuid.uuid4(), uuid.uuid4()
            await listen_on_loop(listener, lambda a: a.listen_job_scheduled(["t"], jobs))
            await listen_on_loop(listener, lambda a: a.listen_chain_completed(chain_id, chains))
            await listen_on_loop(listener, lambda a: a.listen_job_ownership_lost(lost))

            producer.notify_job_scheduled("t", 2)
            producer.notify_chain_completed(chain_id)
            producer.notify_job_ownership_lost(job_id)
            producer.notify_job_scheduled("t", 1)  # sentinel

            assert await jobs.wait_for("t", 1)
            assert jobs.calls == [("t", 2), ("t", 1)]
            assert await chains.wait_for(chain_id)
            assert await lost.wait_for(job_id)
        finally:
            await close(producer)
            if listener is not producer:
                await close(listener)

    asyncio.run(main())


@pytest.mark.parametrize("kind", NATIVE_KINDS, indirect=True)
def test_a_publish_storm_does_not_block_the_loop(kind: str, request: pytest.FixtureRequest) -> None:
    prefix = unique_prefix()
    storm = 2000

    async def main() -> None:
        producer = make_adapter(kind, request, prefix)
        listener = make_adapter(kind, request, prefix)
        try:
            inbox = LoopInbox()
            await listen_on_loop(listener, lambda a: a.listen_job_scheduled(["t"], inbox))
            async with LagProbe().running() as probe:
                started = time.monotonic()
                for n in range(storm):
                    producer.notify_job_scheduled("t", 1)
                    if n % 100 == 0:
                        await asyncio.sleep(0)  # as between commits
                calls_took = time.monotonic() - started
                received = await inbox.wait_until(
                    lambda: sum(int(str(c[1])) for c in inbox.calls) >= storm,
                    # Each hint is a compare-and-set on both sides: a few hundred a second.
                    timeout=30 if kind == "nats-hints" else DELIVERY_TIMEOUT_S,
                )
            assert received, f"{sum(int(str(c[1])) for c in inbox.calls)} of {storm} delivered"
            assert calls_took < 1.0, f"{storm} notify calls took {calls_took:.2f} s"
            assert probe.worst < LAG_LIMIT_S, f"the loop was blocked for {probe.worst:.3f} s"
        finally:
            await close(producer)
            await close(listener)

    asyncio.run(main())


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a hung server)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield int(server.getsockname()[1])


def native_adapter(kind: str, port: int, prefix: str) -> AsyncNotifyAdapter:
    timeout = dt.timedelta(seconds=2)
    if kind == "postgres-async":
        url = f"postgresql://postgres@127.0.0.1:{port}/nothing"
        return AsyncPostgresNotify(url, channel_prefix=prefix, connect_timeout=timeout)
    if kind == "redis-async":
        url = f"redis://127.0.0.1:{port}/0"
        return AsyncRedisNotify(url, channel_prefix=prefix, connect_timeout=timeout)
    return NatsNotify(
        f"nats://127.0.0.1:{port}",
        channel_prefix=prefix,
        wake_hints=kind == "nats-hints",
        connect_timeout=timeout,
    )


@pytest.mark.parametrize("server", ["refusing", "hung"])
@pytest.mark.parametrize("kind", NATIVE_KINDS, indirect=True)
def test_a_backend_that_is_down_or_hangs_does_not_block_the_loop(
    kind: str, server: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main(port: int) -> None:
        adapter = native_adapter(kind, port, unique_prefix())
        async with LagProbe().running() as probe:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await listen_on_loop(adapter, lambda a: a.listen_job_scheduled(["t"], LoopInbox()))
            await listen_on_loop(adapter, lambda a: a.listen_job_ownership_lost(LoopInbox()))
            listened = loop.time() - started
            while loop.time() - started < 2.5:  # through a connect timeout and retries
                for _ in range(50):
                    adapter.notify_job_scheduled("t", 1)
                    adapter.notify_chain_completed(uuid.uuid4())
                await asyncio.sleep(0.01)
            closing = loop.time()
            await adapter.aclose()
            closed = loop.time() - closing
        assert listened < 3.5, f"listening took {listened:.2f} s"
        assert closed < 6, f"aclose took {closed:.2f} s"
        assert probe.worst < LAG_LIMIT_S, f"the loop was blocked for {probe.worst:.3f} s"

    if server == "hung":
        with silent_server() as port:
            asyncio.run(main(port))
    else:
        asyncio.run(main(free_port()))
    warnings = [r for r in caplog.records if r.name == "queuert_sa.notify" and r.levelno >= 30]
    assert 1 <= len(warnings) <= 2, [r.getMessage() for r in warnings]  # once per role
