"""What every layer above the state layer needs to know, in one frozen record.

Clients, transitions, attempts and both worker drivers take a :class:`Context`
instead of the ``Queuert`` façade: the registry, the tables, the database's
capabilities, the clock and where post-commit notifications go. Nothing here
does IO. One context is shared by a client and everything it made, so a clock
replaced on the client (``queuert.clock = fake``, as tests do) is the one its
workers see; the other fields are fixed when the client is made.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypedDict

from ._job_types import JobTypes
from ._observing import NO_OBSERVERS, Observers
from .models import Models
from .notify import NotifyAdapter
from .observers import Observer
from .state import Capabilities

#: A source of "now": returns aware UTC datetimes. Tests inject a fake one.
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    """The default clock: the current time in UTC."""
    return dt.datetime.now(dt.UTC)


class ClientOptions(TypedDict, total=False):
    """The keyword options of ``Queuert``/``AsyncQueuert`` (see :class:`Queuert`)."""

    notify: NotifyAdapter | None
    models: Models
    clock: Clock
    observers: Sequence[Observer]


@dataclass(kw_only=True, eq=False)
class Context:
    """The registry, tables, capabilities, clock and notify adapter of one client."""

    job_types: JobTypes
    """The job types this client and its workers know."""

    models: Models
    """The job and blocker tables."""

    capabilities: Capabilities
    """What the database can do (resolved once per engine)."""

    clock: Clock
    """Source of "now" for every decision and timestamp."""

    notify: NotifyAdapter
    """Where post-commit wake-ups and chain-completed signals go."""

    observers: Observers = NO_OBSERVERS
    """Who is told of events (``Queuert(..., observers=[...])``)."""


class ContextView:
    """What both clients show of their context: registry, tables, capabilities, clock, notify."""

    ctx: Context
    """What the transitions and workers of this client share."""

    @property
    def job_types(self) -> JobTypes:
        """The registry of job types."""
        return self.ctx.job_types

    @property
    def models(self) -> Models:
        """The job and blocker tables."""
        return self.ctx.models

    @property
    def capabilities(self) -> Capabilities:
        """What the database can do (resolved once for the engine)."""
        return self.ctx.capabilities

    @property
    def clock(self) -> Clock:
        """Source of "now"; replaceable (tests inject a fake one), workers included."""
        return self.ctx.clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self.ctx.clock = clock

    @property
    def notify(self) -> NotifyAdapter:
        """Where post-commit wake-ups go."""
        return self.ctx.notify

    @property
    def observers(self) -> tuple[Observer, ...]:
        """Who is told of events (see :mod:`queuert_sa.observers`)."""
        return self.ctx.observers.all

    def add_observer(self, observer: Observer) -> None:
        """Tell ``observer`` of events from now on (this client and its workers)."""
        self.ctx.observers = Observers((*self.ctx.observers.all, observer))
