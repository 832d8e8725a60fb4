"""The warning the operator commands print for ready jobs that no worker takes (stderr)."""

from __future__ import annotations

import datetime as dt

from queuert_sa._client import Queuert
from queuert_sa._worker import _untaken as untaken
from queuert_sa.state import queries


def untaken_lines(client: Queuert) -> list[str]:
    """Lines naming the types whose ready jobs wait untaken (as the workers warn), by type."""
    now = dt.datetime.now(dt.UTC)
    with client.engine.connect() as conn:
        rows = queries.waiting_untaken(
            conn, client.models, handled=(), due_before=now - untaken.WAITING_AFTER
        )
    waiting = untaken.age(untaken.WAITING_AFTER.total_seconds())
    return [
        f"warning: untaken for over {waiting}: {row['count']} ready job(s) of type {row['type_name']!r} "
        f"(the oldest due {untaken.age((now - row['oldest']).total_seconds())} ago): no "
        "running worker handles it, or its workers are down or behind"
        for row in rows
    ]
