"""The text the operator commands read and print: durations and times given as
options, UTC times, aligned tables, a stored error's last line, and JSON (chains
and jobs as objects; UUIDs and datetimes as strings).

Pure functions: no click, no database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

from queuert_sa._entities import Chain, Job

#: ``chain show`` cuts a job's last error to this many characters.
ERROR_WIDTH = 80

_DURATION_UNITS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:\d+[dhms])+")
_DURATION_PART = re.compile(r"(\d+)([dhms])")


def parse_duration(text: str) -> dt.timedelta:
    """``7d``, ``12h``, ``30m``, ``90s``, or a combination such as ``1d12h``, as a timedelta.

    Raises ``ValueError`` with a message naming the accepted forms.
    """
    compact = text.strip().lower()
    if not _DURATION.fullmatch(compact):
        raise ValueError(
            f"{text!r} is not a duration; use a whole number and a unit: 7d, 12h, 30m or 90s "
            "(combined: 1d12h)."
        )
    seconds = sum(int(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(compact))
    try:
        return dt.timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration.") from None


def format_duration(value: dt.timedelta) -> str:
    """The shortest ``parse_duration`` form of ``value`` (whole seconds): ``1d12h``, ``0s``."""
    seconds = int(value.total_seconds())
    parts: list[str] = []
    for unit, size in _DURATION_UNITS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def parse_time(text: str, *, now: dt.datetime) -> dt.datetime:
    """An aware UTC time: ISO 8601 (UTC when it has no offset) or a duration before ``now``.

    ``2026-11-22``, ``2026-11-22T05:00:00Z``, ``2026-11-22 06:00+01:00``, ``2h``.
    Raises ``ValueError`` for anything else.
    """
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2026-11-22T05:00:00Z; UTC when it has no "
            "offset) nor a duration before now (30m, 2h, 7d)."
        ) from None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def format_time(value: dt.datetime | None) -> str:
    """A UTC time to the second (``2026-11-22 05:08:40``); ``-`` for none."""
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns as wide as their widest cell, two spaces apart; one line per row."""
    widths = [len(header) for header in headers]
    for row in rows:
        for column, cell in enumerate(row):
            widths[column] = max(widths[column], len(cell))
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    ]


def error_line(text: str | None, width: int = ERROR_WIDTH) -> str:
    """The last line of a stored error (a traceback's exception line), cut to ``width``."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return "-"
    line = lines[-1]
    return line if len(line) <= width else line[: width - 1] + "…"


def _json_default(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def to_json(value: object, *, indent: int | None = 2) -> str:
    """JSON text of ``value``; UUIDs and datetimes (ISO 8601, UTC) as strings."""
    return json.dumps(value, default=_json_default, indent=indent, ensure_ascii=False)


def chain_data(chain: Chain[Any, Any]) -> dict[str, Any]:
    """A chain as a JSON object (its ``Chain`` fields, less ``deduplicated``)."""
    data = dataclasses.asdict(chain)
    del data["deduplicated"]
    return data


def job_data(job: Job[Any]) -> dict[str, Any]:
    """A job as a JSON object (its ``Job`` fields)."""
    return dataclasses.asdict(job)


CHAIN_HEADERS = ("ID", "TYPE", "STATUS", "CURRENT STEP", "CREATED (UTC)", "COMPLETED (UTC)")


def chain_row(chain: Chain[Any, Any]) -> list[str]:
    """A chain's cells in the ``chains list`` table, in the order of ``CHAIN_HEADERS``."""
    return [
        str(chain.id),
        chain.type_name,
        chain.status.value,
        f"{chain.current_type_name}#{chain.current_index}",
        format_time(chain.created_at),
        format_time(chain.completed_at),
    ]


JOB_HEADERS = (
    "ID",
    "TYPE",
    "STATUS",
    "CHAIN",
    "STEP",
    "ATTEMPTS",
    "SCHEDULED (UTC)",
    "COMPLETED (UTC)",
)


def job_row(job: Job[Any]) -> list[str]:
    """A job's cells in the ``jobs list`` table, in the order of ``JOB_HEADERS``."""
    return [
        str(job.id),
        job.type_name,
        job.status.value,
        str(job.chain_id),
        f"{job.chain_type_name}#{job.chain_index}",
        str(job.attempt),
        format_time(job.scheduled_at),
        format_time(job.completed_at),
    ]
