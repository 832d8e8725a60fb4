"""The library's loggers: every record carries the job and worker it is about.

Each record from a ``queuert_sa.*`` logger has the attributes ``job_id``,
``chain_id``, ``type_name``, ``attempt`` and ``worker_id`` (None when the
record is not about one), so a JSON formatter, or a format string such as
``%(job_id)s``, can use them on any record.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import Any, cast

#: The fields every record of the library's loggers carries.
FIELDS = ("job_id", "chain_id", "type_name", "attempt", "worker_id")


class _Defaults(logging.Filter):
    """Give a record the :data:`FIELDS` it was not logged with, as None."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = record.__dict__
        for name in FIELDS:
            values.setdefault(name, None)
        return True


_DEFAULTS = _Defaults()


def get_logger(name: str) -> logging.Logger:
    """The logger ``name``, whose records always carry :data:`FIELDS`."""
    logger = logging.getLogger(name)
    if _DEFAULTS not in logger.filters:
        logger.addFilter(_DEFAULTS)
    return logger


def job_fields(job: Any, worker_id: str | None = None) -> dict[str, Any]:
    """``extra=`` for a record about a job (a row mapping, or a ``Job`` snapshot)."""
    if isinstance(job, Mapping):
        row = cast("Mapping[str, Any]", job)
        job_id, chain_id = row["id"], row.get("chain_id")
        type_name, attempt = row.get("type_name"), row.get("attempt")
    else:
        job_id, chain_id, type_name, attempt = job.id, job.chain_id, job.type_name, job.attempt
    return {
        "job_id": str(job_id),
        "chain_id": None if chain_id is None else str(chain_id),
        "type_name": type_name,
        "attempt": attempt,
        "worker_id": worker_id,
    }


def worker_fields(worker_id: str) -> dict[str, Any]:
    """``extra=`` for a record about a worker, not one job."""
    return {"worker_id": worker_id}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, the
    :data:`FIELDS` that are set, and ``exception`` (the formatted traceback) if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
