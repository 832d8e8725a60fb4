"""What only ``NatsNotify`` does: wake-hint tickets shared out between processes, and the
caller's own connection (left open, followed through nats-py's reconnection).

Listening "processes" are adapter instances, each with its connection, as
separate processes would have; ``tests/bench_latency.py --processes 8`` measures
the same with real processes and workers.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator

import nats
import pytest
from nats.aio.client import Client as NatsClient

from queuert_sa.notify.nats import NatsNotify

from .test_notify_asyncio import LoopInbox
from .test_notify_conformance import Inbox, eventually, unique_prefix
from .test_notify_resilience import NatsServer, nats_server

__all__ = ["nats_server"]  # a fixture, imported to be used here


@pytest.fixture
def fleet(nats_url: str) -> Iterator[tuple[str, list[NatsNotify]]]:
    """A prefix and the adapters made on it (closed at the end)."""
    made: list[NatsNotify] = []
    yield unique_prefix(), made
    for adapter in made:
        adapter.close()


@pytest.mark.parametrize("type_name", ["t", "order:validate", "mail/ünïcode *> ok"])
def test_with_wake_hints_each_job_wakes_one_listening_process(
    type_name: str, nats_url: str, fleet: tuple[str, list[NatsNotify]]
) -> None:
    prefix, made = fleet
    producer = NatsNotify(nats_url, channel_prefix=prefix, wake_hints=True)
    made.append(producer)
    inboxes: list[Inbox] = []
    for _ in range(4):
        listener = NatsNotify(nats_url, channel_prefix=prefix, wake_hints=True)
        made.append(listener)
        inbox = Inbox()
        listener.listen_job_scheduled([type_name, "sentinel"], inbox)
        inboxes.append(inbox)

    for _ in range(10):
        producer.notify_job_scheduled(type_name, 1)
    producer.notify_job_scheduled(type_name, 3)  # a batch: three tickets

    def woken() -> list[int]:
        return [sum(int(str(c[1])) for c in inbox.calls if c[0] == type_name) for inbox in inboxes]

    assert eventually(lambda: sum(woken()) >= 13), woken()
    # A message without hints reaches every listener, after everything sent before it.
    plain = NatsNotify(nats_url, channel_prefix=prefix)
    made.append(plain)
    plain.notify_job_scheduled("sentinel", 1)
    for inbox in inboxes:
        assert inbox.wait_for("sentinel", 1)
    assert sum(woken()) == 13, woken()  # every job woke exactly one process


def test_a_producer_without_hints_wakes_every_listener(
    nats_url: str, fleet: tuple[str, list[NatsNotify]]
) -> None:
    prefix, made = fleet
    producer = NatsNotify(nats_url, channel_prefix=prefix)  # no hints
    made.append(producer)
    inboxes = []
    for _ in range(3):
        listener = NatsNotify(nats_url, channel_prefix=prefix, wake_hints=True)
        made.append(listener)
        inbox = Inbox()
        listener.listen_job_scheduled(["t"], inbox)
        inboxes.append(inbox)
    producer.notify_job_scheduled("t", 2)
    for inbox in inboxes:
        assert inbox.wait_for("t", 2)


def test_prefix_and_argument_refusals() -> None:
    with pytest.raises(ValueError, match="subject prefix"):
        NatsNotify(channel_prefix="has space")
    with pytest.raises(ValueError, match="subject prefix"):
        NatsNotify(channel_prefix="a.*")
    with pytest.raises(TypeError, match="nats:// URL"):
        NatsNotify(42)  # type: ignore[arg-type]
    NatsNotify(channel_prefix="app.queuert").close()  # tokens joined by dots are fine


def test_the_callers_connection_is_used_and_left_open(nats_url: str) -> None:
    prefix = unique_prefix()

    async def main() -> None:
        nc = NatsClient()
        await nc.connect(nats_url)
        try:
            producer = NatsNotify(nc, channel_prefix=prefix, wake_hints=True)
            listener = NatsNotify(nc, channel_prefix=prefix, wake_hints=True)
            jobs, chains = LoopInbox(), LoopInbox()
            chain_id = uuid.uuid4()
            listener.listen_job_scheduled(["t"], jobs)
            listener.listen_chain_completed(chain_id, chains)
            await listener.listening()
            producer.notify_job_scheduled("t", 2)
            producer.notify_chain_completed(chain_id)
            assert await jobs.wait_for("t", 2)
            assert await chains.wait_for(chain_id)
            await producer.aclose()
            await listener.aclose()
            assert nc.is_connected  # not the adapters' to close
        finally:
            await nc.close()

    asyncio.run(main())


def test_the_callers_connection_reconnects_and_the_adapter_follows(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    nats_server.start()
    prefix = unique_prefix()
    caplog.set_level(logging.INFO, logger="queuert_sa.notify")

    async def main() -> None:
        nc = await nats.connect(
            nats_server.url,
            reconnect_time_wait=0.2,  # type: ignore[arg-type]
            max_reconnect_attempts=-1,
        )
        producer = NatsNotify(nats_server.url, channel_prefix=prefix)
        listener = NatsNotify(nc, channel_prefix=prefix)
        try:
            jobs, chains = LoopInbox(), LoopInbox()
            chain_id = uuid.uuid4()
            listener.listen_job_scheduled(["t"], jobs)
            listener.listen_chain_completed(chain_id, chains)
            await listener.listening()
            producer.notify_job_scheduled("t", 3)
            assert await jobs.wait_for("t", 3)

            await asyncio.to_thread(nats_server.kill)
            assert await jobs.wait_until(lambda: _warned(caplog, "subscriber"))
            await asyncio.to_thread(nats_server.start)

            # nats-py reconnected; the adapter subscribed again and woke its listeners ...
            assert await jobs.wait_for("t", 1)
            assert await chains.wait_for(chain_id)

            # ... and messages arrive again (the producer's own connection came back too).
            async def delivered() -> bool:
                producer.notify_job_scheduled("t", 7)
                return await jobs.wait_until(lambda: ("t", 7) in jobs.calls, timeout=0.3)

            for _ in range(40):
                if await delivered():
                    break
            assert ("t", 7) in jobs.calls
        finally:
            await producer.aclose()
            await listener.aclose()
            await nc.close()

    asyncio.run(main())


def _warned(caplog: pytest.LogCaptureFixture, role: str) -> bool:
    return any(
        role in r.getMessage() and "unavailable" in r.getMessage()
        for r in caplog.records
        if r.name == "queuert_sa.notify" and r.levelno == logging.WARNING
    )
