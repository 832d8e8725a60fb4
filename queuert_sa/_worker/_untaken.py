"""The warning for ready jobs that no worker takes: a type nobody handles, said in a log line.

A worker knows only its own handlers; the fleet keeps no record of who
handles what. So the rule is one a worker can check alone: pending jobs of a
type it does not handle, due for longer than :data:`WAITING_AFTER`. A type
that some worker handles has its ready jobs taken within seconds, so in a
fleet that splits its types across workers, the line appears only when a
type's jobs really wait: no running worker has a handler for it (a renamed
type, a forgotten worker), or its workers are down or far behind. Each
worker of the fleet then says so, once a minute.

Cost: one statement per worker per :data:`CHECK_EVERY` (on the acquisition
index, pending jobs only); the first a poll interval after the worker starts,
or at the start of a ``drain()``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import weakref
from functools import partial

from queuert_sa._logs import get_logger
from queuert_sa.state import queries

from ._config import WorkerCore
from ._effects import Flow, Look

log = get_logger("queuert_sa.worker")

#: How long a due job waits, untaken, before its type is named.
WAITING_AFTER = dt.timedelta(minutes=5)

#: How often (seconds) a worker checks.
CHECK_EVERY = 60.0

_lock = threading.Lock()
# By worker id: an AsyncWorker's plain handlers run on a Worker of the same
# id, and the two check as one (the types of both, one line per type).
_cores: dict[str, weakref.WeakSet[WorkerCore]] = {}
_next: dict[str, float] = {}


def check_due(core: WorkerCore, *, at_once: bool) -> bool:
    """True when ``core``'s worker should check now (once per :data:`CHECK_EVERY`)."""
    now = time.monotonic()
    with _lock:
        cores = _cores.get(core.worker_id)
        if cores is None:
            for gone in [w for w, c in _cores.items() if not c]:
                del _cores[gone]
                _next.pop(gone, None)
            cores = _cores[core.worker_id] = weakref.WeakSet()
        cores.add(core)
        due = _next.get(core.worker_id)
        if due is None:
            # A poll interval in: the worker's other half (plain handlers) has started too.
            due = now if at_once else now + core.poll_interval.total_seconds()
        if now < due:
            _next[core.worker_id] = due
            return False
        _next[core.worker_id] = now + CHECK_EVERY
    return True


def check(core: WorkerCore) -> Flow[None]:
    """Read the untaken ready jobs of other types (one read) and log a WARNING per type."""
    with _lock:
        handled = {name for c in _cores.get(core.worker_id, ()) for name in c.type_names}
    now = core.ctx.clock()
    unit = partial(
        queries.waiting_untaken,
        models=core.ctx.models,
        handled=handled,
        due_before=now - WAITING_AFTER,
    )
    rows = yield Look(unit)
    for row in rows:
        name = row["type_name"]
        log.warning(
            "worker %s: %d ready job(s) of type %r not taken for %s (the oldest due %s ago); "
            "this worker has no handler for %r: register one (worker.handler) or start a "
            "worker that has one",
            core.worker_id,
            row["count"],
            name,
            age(WAITING_AFTER.total_seconds()),
            age((now - row["oldest"]).total_seconds()),
            name,
            extra={"worker_id": core.worker_id, "type_name": name},
        )


def age(seconds: float) -> str:
    """A wait in the unit that reads best: ``42 s``, ``12 min``, ``3.5 h``, ``2.1 d``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
