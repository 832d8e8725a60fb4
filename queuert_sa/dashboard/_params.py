"""The query parameters of the listings, checked: a bad value is a 400, never a guess.

The pages and the API share them, so a listing's URL is the same in both:
``type`` and ``status`` take comma-separated lists, ``id`` and ``job_id`` (or
``chain_id``) one id each, ``roots`` is ``true`` (the default for chains: hide
the chains that are other jobs' blockers) or ``false``, ``cursor`` is the
previous page's ``next_cursor`` and ``limit`` the page size.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from queuert_sa.models import JobStatus

#: The largest page a listing serves.
MAX_LIMIT = 100

STATUSES = tuple(status.value for status in JobStatus)


class BadRequest(Exception):
    """A request the dashboard refuses with 400 and this message."""


def parse_id(text: str, what: str) -> uuid.UUID:
    """``text`` as an id; a :class:`BadRequest` naming ``what`` otherwise."""
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise BadRequest(f"{what} {text[:60]!r} is not a valid id (a UUID).") from None


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def _statuses(text: str | None) -> tuple[str, ...]:
    given = _names(text)
    unknown = [s for s in given if s not in STATUSES]
    if unknown:
        raise BadRequest(f"Unknown status {unknown[0][:40]!r}; one of: {', '.join(STATUSES)}.")
    return given


def _limit(text: str | None, default: int) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {text[:20]!r}.")
    return value


def _flag(text: str | None, name: str, default: bool) -> bool:
    if text is None or text == "":
        return default
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise BadRequest(f"{name} must be true or false, got {text[:20]!r}.")


def _one_id(params: Mapping[str, str], name: str) -> uuid.UUID | None:
    text = params.get(name, "").strip()
    return parse_id(text, name) if text else None


@dataclass(frozen=True)
class Listing:
    """A listing's filters and page, as parsed from a query string."""

    kind: str
    types: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    id: uuid.UUID | None = None
    job_id: uuid.UUID | None = None
    chain_id: uuid.UUID | None = None
    chain_types: tuple[str, ...] = ()
    roots_only: bool = True
    cursor: str | None = None
    limit: int = 25

    def filters(self) -> dict[str, Any]:
        """Keyword arguments for ``list_chains`` or ``list_jobs``."""
        found: dict[str, Any] = {}
        if self.types:
            found["types"] = list(self.types)
        if self.statuses:
            found["statuses"] = list(self.statuses)
        if self.kind == "chains":
            if self.id is not None:
                found["chain_ids"] = [self.id]
            if self.job_id is not None:
                found["job_ids"] = [self.job_id]
            found["roots_only"] = self.roots_only
        else:
            if self.id is not None:
                found["job_ids"] = [self.id]
            if self.chain_id is not None:
                found["chain_ids"] = [self.chain_id]
            if self.chain_types:
                found["chain_types"] = list(self.chain_types)
        return found

    def query(self, **changes: Any) -> str:
        """This listing's query string (without the leading ``?``), with ``changes``."""
        listing = replace(self, **changes)
        pairs: dict[str, str] = {}
        if listing.id is not None:
            pairs["id"] = str(listing.id)
        if listing.job_id is not None:
            pairs["job_id"] = str(listing.job_id)
        if listing.chain_id is not None:
            pairs["chain_id"] = str(listing.chain_id)
        if listing.types:
            pairs["type"] = ",".join(listing.types)
        if listing.chain_types:
            pairs["chain_type"] = ",".join(listing.chain_types)
        if listing.statuses:
            pairs["status"] = ",".join(listing.statuses)
        if listing.kind == "chains" and not listing.roots_only:
            pairs["roots"] = "false"
        if listing.cursor:
            pairs["cursor"] = listing.cursor
        return urlencode(pairs)


def listing(kind: str, params: Mapping[str, str], *, default_limit: int) -> Listing:
    """The ``chains`` or ``jobs`` listing that ``params`` ask for; :class:`BadRequest` if wrong."""
    return Listing(
        kind=kind,
        types=_names(params.get("type")),
        statuses=_statuses(params.get("status")),
        id=_one_id(params, "id"),
        job_id=_one_id(params, "job_id") if kind == "chains" else None,
        chain_id=_one_id(params, "chain_id") if kind == "jobs" else None,
        chain_types=_names(params.get("chain_type")) if kind == "jobs" else (),
        roots_only=_flag(params.get("roots"), "roots", True) if kind == "chains" else False,
        cursor=params.get("cursor") or None,
        limit=_limit(params.get("limit"), default_limit),
    )


def cascade_flag(params: Mapping[str, str]) -> bool:
    """``cascade=`` of a deletion: true or false (default false)."""
    return _flag(params.get("cascade"), "cascade", False)
