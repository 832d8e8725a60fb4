"""How a staged attempt learns that it lost its job: :class:`AttemptSignal`.

The worker sets the signal from whichever thread or event loop notices the
loss (a lease renewal, the ownership-lost message, the check in
``transaction()``). A ``def`` handler waits on it as on a thread event; an
``async def`` handler gets :class:`AsyncAttemptSignal`, whose ``wait()`` is
awaited on the handler's own loop, so racing an external call against losing
the job never blocks that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

#: Guards an attempt signal's event and waiters: taken rarely (first use, a loss).
_LOCK = threading.Lock()


class AttemptSignal:
    """Tells a staged handler that its attempt lost the job.

    Set when a lease renewal finds the job taken over by another worker
    (``"taken_by_another_worker"``), completed elsewhere (``"already_completed"``),
    cancelled (``"cancelled"``)
    or deleted (``"not_found"``). Long external work can poll ``is_set()`` or
    ``wait(timeout)`` and stop early; ``attempt.transaction()`` refuses to write
    either way.
    """

    def __init__(self) -> None:
        # Made on first use: most attempts never wait on it, and an Event
        # (a Condition and its lock) costs more than the rest of the attempt's state.
        self._event: threading.Event | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.reason: str | None = None

    def _the_event(self) -> threading.Event:
        event = self._event
        if event is None:
            with _LOCK:
                event = self._event
                if event is None:
                    event = self._event = threading.Event()
        return event

    def is_set(self) -> bool:
        """True once the attempt lost its job."""
        event = self._event
        return event is not None and event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is lost or ``timeout`` seconds pass; True if lost."""
        return self._the_event().wait(timeout)

    async def wait_async(self, timeout: float | None = None) -> bool:
        """Wait on the running event loop until the job is lost or ``timeout`` seconds
        pass; True if lost. Cancelling the wait leaves the signal as it is."""
        loop = asyncio.get_running_loop()
        with _LOCK:
            if self.is_set():
                return True
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, waiter))
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return False
        finally:
            with _LOCK:
                if (loop, waiter) in self._waiters:
                    self._waiters.remove((loop, waiter))
        return True

    def set(self, reason: str) -> None:
        """Mark the attempt as having lost its job (called by the worker)."""
        event = self._the_event()
        with _LOCK:
            if event.is_set():
                return
            self.reason = reason
            event.set()
            waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:
            # A closed loop raises RuntimeError: nobody waits there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_wake, waiter)

    def __bool__(self) -> bool:
        return self.is_set()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class AsyncAttemptSignal:
    """:class:`AttemptSignal` for an ``async def`` handler: ``await signal.wait()``.

    The same signal (set for the same reasons, ``reason`` the same), with a
    ``wait`` that is awaited instead of blocking the event loop. Race an
    external call against losing the job::

        call = asyncio.ensure_future(gateway.charge(order))
        lost = asyncio.ensure_future(attempt.signal.wait())
        done, _ = await asyncio.wait({call, lost}, return_when=asyncio.FIRST_COMPLETED)
        if lost in done:
            call.cancel()
            raise RuntimeError(f"lost the job ({attempt.signal.reason})")
        lost.cancel()
    """

    def __init__(self, signal: AttemptSignal) -> None:
        self._signal = signal

    @property
    def reason(self) -> str | None:
        """Why the job was lost (see :class:`AttemptSignal`); None while it is not."""
        return self._signal.reason

    def is_set(self) -> bool:
        """True once the attempt lost its job."""
        return self._signal.is_set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Until the job is lost or ``timeout`` seconds pass, without blocking the loop;
        True if lost."""
        return await self._signal.wait_async(timeout)

    def __bool__(self) -> bool:
        return self._signal.is_set()
