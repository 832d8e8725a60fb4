"""What the asyncio-native adapters (PostgreSQL, Redis, NATS) have in common.

:class:`EventLoopNotify` is the asyncio twin of ``CrossProcessNotify``: the
same protocol methods, wire format, :class:`Listeners`, :class:`Outage` and
:class:`Backoff`, but every read and write is a coroutine on one event loop,
so that nothing an ``AsyncQueuert`` or ``AsyncWorker`` does waits for the
backend on its loop:

* ``notify_*`` puts the message on a queue and returns at once, from any
  thread; one sender task sends the queue in order.
* ``listen_*`` registers the callback; the reader task (started by the first
  ``listen_*``) subscribes, reads, reconnects on :class:`Backoff` and wakes the
  listeners after an outage. Called on a thread that runs an event loop it
  returns at once (``await adapter.listening()`` waits for the subscription);
  called from plain sync code it blocks until the subscription is active,
  like the thread-based adapters.

The loop is the one running where the adapter is first used; first used from
sync code (``Queuert``, ``Worker``), the adapter runs a loop of its own on a
daemon thread. Callbacks run on that loop, one message after another.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

from queuert_sa._logs import get_logger

from ._cross_process import Backoff, Kind, Outage, deliver, encode_job_scheduled, payload_fits
from ._listeners import Listeners

if TYPE_CHECKING:
    from . import Subscription

log = get_logger("queuert_sa.notify")

_Conn = TypeVar("_Conn")
_T = TypeVar("_T")

#: Messages queued while the sender cannot keep up; more are dropped (they are hints).
MAX_QUEUED = 10_000

#: The sender gives the loop a turn after this many messages.
_YIELD_EVERY = 32


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class EventLoopNotify(ABC, Generic[_Conn]):
    """The protocol methods, the sender and reader tasks and closing of the asyncio adapters.

    A subclass adds the backend: :meth:`_send` (one message),
    :meth:`_open_listener`, :meth:`_subscribe`, :meth:`_pump` and
    :meth:`_close_listener` (the listening connection ``_Conn``) and
    :meth:`_release` (whatever else it opened).
    """

    # Per backend: its name and the listening connection's name in log messages,
    # what joins prefix and kind in channel names, and the loop thread's name.
    _backend: ClassVar[str]
    _listener_role: ClassVar[str]
    _separator: ClassVar[str]
    _thread_name: ClassVar[str]

    def __init__(
        self,
        *,
        where: str,
        channel_prefix: str,
        connect_timeout_s: float,
        health_check_interval: dt.timedelta,
    ) -> None:
        self._where = where
        self._channel_prefix = channel_prefix
        #: Channel of job-scheduled notifications.
        self.job_scheduled_channel = f"{channel_prefix}{self._separator}job_scheduled"
        #: Channel of chain-completed notifications.
        self.chain_completed_channel = f"{channel_prefix}{self._separator}chain_completed"
        #: Channel of job-ownership-lost notifications.
        self.job_ownership_lost_channel = f"{channel_prefix}{self._separator}job_ownership_lost"
        self._kinds: dict[str, Kind] = {
            self.job_scheduled_channel: "job_scheduled",
            self.chain_completed_channel: "chain_completed",
            self.job_ownership_lost_channel: "job_ownership_lost",
        }
        self._connect_timeout_s = connect_timeout_s  # also bounds listen_*'s wait
        self._health_check_s = health_check_interval.total_seconds()
        self._listeners = Listeners()
        self._lock = threading.Lock()  # binding to a loop, starting tasks, _closed
        self._closed = False
        self.error_listeners: list[Callable[[str, BaseException], None]] = []
        """Called with (operation, error) on each failed publish or listen (the client's
        observers' ``notify_error``)."""
        self._publish_outage = Outage(
            f"{self._backend} notify publisher ({where})", "publish", self.error_listeners
        )
        self._listen_outage = Outage(
            f"{self._backend} notify {self._listener_role} ({where})",
            "listen",
            self.error_listeners,
        )
        # Set when bound to a loop (_bind); all but _loop and _thread belong to that loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._queue: asyncio.Queue[tuple[str, str]] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reading = False
        self._first_attempt_done: asyncio.Event | None = None
        self._shutdown: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._where} prefix={self._channel_prefix!r}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- the event loop -------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop | None:
        """The adapter's loop, bound on first use; None once closed."""
        with self._lock:
            if self._closed:
                return None
            loop = self._loop
            if loop is not None and not loop.is_closed():
                return loop
            running = _running_loop()
            if running is not None:
                loop = running
                self._thread = None
            else:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=_run_loop,
                    args=(loop,),
                    name=f"{self._thread_name}[{self._channel_prefix}]",
                    daemon=True,
                )
            self._loop = loop  # a reader wanted on the previous loop starts on this one
            self._queue = None
            ready = threading.Event()
            if running is loop:
                self._start(ready)
            else:
                loop.call_soon_threadsafe(self._start, ready)
                assert self._thread is not None
                self._thread.start()
        if running is not loop:
            ready.wait()
        return loop

    def _start(self, ready: threading.Event) -> None:
        """On the loop: make its queue and events, start the sender (and the reader if wanted)."""
        self._queue = asyncio.Queue(MAX_QUEUED)
        self._first_attempt_done = asyncio.Event()
        self._sender = asyncio.get_running_loop().create_task(
            self._send_forever(), name=f"{self._thread_name}-send[{self._channel_prefix}]"
        )
        if self._reading:
            self._start_reader()
        ready.set()

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T | None:
        """Run ``coro`` on the adapter's loop from another thread and wait up to ``timeout``."""
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            return None
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except (TimeoutError, asyncio.CancelledError, RuntimeError):
            future.cancel()
            return None

    # --- publishing -----------------------------------------------------------------

    def notify_job_scheduled(self, type_name: str, count: int = 1) -> None:
        self._publish(self.job_scheduled_channel, encode_job_scheduled(type_name, count))

    def notify_chain_completed(self, chain_id: uuid.UUID) -> None:
        self._publish(self.chain_completed_channel, str(chain_id))

    def notify_job_ownership_lost(self, job_id: uuid.UUID) -> None:
        self._publish(self.job_ownership_lost_channel, str(job_id))

    def _publish(self, channel: str, payload: str) -> None:
        if self._closed or not payload_fits(payload):
            return
        loop = self._bind()
        if loop is None:
            return
        if _running_loop() is loop:
            self._enqueue(channel, payload)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._enqueue, channel, payload)

    def _enqueue(self, channel: str, payload: str) -> None:
        # Not refused once closed: a message published before close() may be
        # queued here after it (from another thread); close() sends it still.
        if self._queue is None:
            return
        try:
            self._queue.put_nowait((channel, payload))
        except asyncio.QueueFull:
            log.debug("notification dropped: %d are waiting to be sent", MAX_QUEUED)

    async def _send_forever(self) -> None:
        assert self._queue is not None
        queue = self._queue
        sent = 0
        try:
            while True:
                channel, payload = await queue.get()
                try:
                    await self._send(channel, payload)
                    if queue.empty():
                        await self._sent_all()
                except Exception as exc:  # _send reports its own failures; a bug guard
                    log.debug("sending a notification failed", exc_info=exc)
                finally:
                    queue.task_done()
                sent += 1
                if sent % _YIELD_EVERY == 0:
                    # A send that only buffers (NATS) never suspends: let the loop run.
                    await asyncio.sleep(0)
        finally:
            # Cancelled by close(), or by the end of the loop (asyncio.run cancels
            # what is left): either way the connections go with it. A later use
            # from another loop opens new ones.
            with contextlib.suppress(Exception):
                await self._release()

    @abstractmethod
    async def _send(self, channel: str, payload: str) -> None:
        """Send one message, or drop it while the backend is down; never raises."""

    async def _sent_all(self) -> None:
        """Called when the queue is empty after a send (NATS flushes here)."""

    # --- listening ------------------------------------------------------------------

    def listen_job_scheduled(
        self, type_names: Iterable[str], callback: Callable[[str, int], None]
    ) -> Subscription:
        subscription = self._listeners.add_job_scheduled(type_names, callback)
        self._start_reading()
        return subscription

    def listen_chain_completed(
        self, chain_id: uuid.UUID, callback: Callable[[uuid.UUID], None]
    ) -> Subscription:
        subscription = self._listeners.add_chain_completed(chain_id, callback)
        self._start_reading()
        return subscription

    def listen_job_ownership_lost(self, callback: Callable[[uuid.UUID], None]) -> Subscription:
        subscription = self._listeners.add_job_ownership_lost(callback)
        self._start_reading()
        return subscription

    async def listening(self) -> None:
        """Return once the ``listen_*`` calls made so far are active.

        That is, once the reader's first attempt to subscribe ended: the
        backend has the subscription, or it is down (the subscription takes
        effect when it is back; an outage wakes the listeners afterwards).
        Waits at most the connect timeout. Never blocks the event loop.
        """
        loop = self._loop
        if loop is None or loop.is_closed() or self._closed:
            return
        if _running_loop() is loop:
            await self._wait_first_attempt()
            return
        future = asyncio.run_coroutine_threadsafe(self._wait_first_attempt(), loop)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.wrap_future(future), self._connect_timeout_s + 1)

    async def _wait_first_attempt(self) -> None:
        event = self._first_attempt_done
        if event is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), self._connect_timeout_s + 1)

    def _start_reading(self) -> None:
        """Start the reader on first use; block until subscribed only when called from sync code."""
        loop = self._bind()
        if loop is None:
            return
        on_loop = _running_loop() is loop
        with self._lock:
            if not self._reading:
                self._reading = True
                if on_loop:
                    self._start_reader()
                else:
                    loop.call_soon_threadsafe(self._start_reader)
        if _running_loop() is None:
            self._call(self._wait_first_attempt(), self._connect_timeout_s + 2)

    def _start_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(
                self._read_forever(), name=f"{self._thread_name}-read[{self._channel_prefix}]"
            )

    async def _read_forever(self) -> None:
        backoff = Backoff()
        assert self._first_attempt_done is not None
        first_done = self._first_attempt_done
        while not self._closed:
            conn: _Conn | None = None
            try:
                conn = await asyncio.wait_for(self._open_listener(), self._connect_timeout_s)
                await asyncio.wait_for(self._subscribe(conn), self._connect_timeout_s)
                backoff.reset()
                was_down = self._listen_outage.recovered()
                first_done.set()
                if was_down:
                    self._listeners.wake_after_outage()
                await self._pump(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._closed:
                    self._listen_outage.failed(exc)
                    first_done.set()
                    await asyncio.sleep(backoff.next_delay())
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self._close_listener(conn))

    @abstractmethod
    async def _open_listener(self) -> _Conn:
        """A new listening connection; the reader closes it with :meth:`_close_listener`."""

    @abstractmethod
    async def _subscribe(self, conn: _Conn, /) -> None:
        """Subscribe ``conn`` to the channels; return once the backend confirmed it."""

    @abstractmethod
    async def _pump(self, conn: _Conn, /) -> None:
        """Deliver messages until cancelled; raise when the connection is lost."""

    @abstractmethod
    async def _close_listener(self, conn: _Conn, /) -> None:
        """Close a listening connection (never raises past the reader: errors are ignored)."""

    def _deliver(self, channel: str, payload: str) -> None:
        kind = self._kinds.get(channel)
        if kind is not None:
            deliver(self._listeners, kind, payload)

    # --- closing --------------------------------------------------------------------

    def close(self) -> None:
        """Stop listening, send what is queued (briefly), release connections; idempotent.

        From sync code this waits for all of it. Called on the adapter's event
        loop it cannot wait there: it starts the shutdown and returns (use
        ``await aclose()`` in async code). Notifications sent after this are
        dropped; callbacks are not called again.
        """
        loop = self._mark_closed()
        if loop is None:
            return
        if _running_loop() is loop:
            self._begin_shutdown()
            return
        self._call(self._finish(), self._connect_timeout_s + 3)
        self._stop_thread(loop)

    async def aclose(self) -> None:
        """``close()`` for async code: awaits the shutdown without blocking the loop."""
        loop = self._mark_closed()
        if loop is None:
            if self._shutdown is not None and _running_loop() is self._loop:
                await asyncio.shield(self._shutdown)
            return
        if _running_loop() is loop:
            await self._finish()
            return
        future = asyncio.run_coroutine_threadsafe(self._finish(), loop)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.wrap_future(future), self._connect_timeout_s + 3)
        await asyncio.to_thread(self._stop_thread, loop)

    def _mark_closed(self) -> asyncio.AbstractEventLoop | None:
        """Mark closed and drop the listeners; the loop to shut down on (None: nothing to do)."""
        with self._lock:
            if self._closed:
                return None
            self._closed = True
            loop = self._loop
        self._listeners.clear()
        if loop is None or loop.is_closed():
            return None
        return loop

    def _begin_shutdown(self) -> None:
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._finish())

    async def _finish(self) -> None:
        """On the loop: stop the reader, send the queue (within the connect timeout), release."""
        if self._shutdown is not None and self._shutdown is not asyncio.current_task():
            await asyncio.shield(self._shutdown)
            return
        if self._first_attempt_done is not None:
            self._first_attempt_done.set()  # a listen_* waiting for the reader returns now
        tasks = [task for task in (self._reader, self._sender) if task is not None]
        if self._reader is not None:
            self._reader.cancel()
        if self._queue is not None and self._sender is not None and not self._sender.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), self._connect_timeout_s)
        if self._sender is not None:
            self._sender.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._release()

    @abstractmethod
    async def _release(self) -> None:
        """Close what the adapter opened besides the listening connection (on its loop)."""

    def _stop_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        thread = self._thread
        if thread is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        if thread is not threading.current_thread():
            thread.join(self._connect_timeout_s + 3)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The adapter's own loop thread: run until stopped, then close the loop."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
