"""Subscribing from an event loop without blocking it, whatever the adapter.

``AsyncQueuert`` and ``AsyncWorker`` listen through :func:`listen_on_loop`:
an :class:`~queuert_sa.notify.AsyncNotifyAdapter` registers at once and is
awaited until active; the in-memory adapter does no IO; any other (thread-based)
adapter's ``listen_*``, which may wait for a connection, runs on a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from . import AsyncNotifyAdapter, NotifyAdapter, Subscription
from .memory import InMemoryNotify


async def listen_on_loop(
    adapter: NotifyAdapter, listen: Callable[[NotifyAdapter], Subscription]
) -> Subscription:
    """``listen(adapter)``, active when this returns, without blocking the running loop."""
    if isinstance(adapter, AsyncNotifyAdapter):
        subscription = listen(adapter)
        await adapter.listening()
        return subscription
    if isinstance(adapter, InMemoryNotify):
        return listen(adapter)
    return await asyncio.to_thread(listen, adapter)
