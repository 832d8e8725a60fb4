"""Opaque pagination cursors: the key of the last row of a page, base64url JSON.

A cursor records the listing it came from and its order, so passing it to
another listing (or flipping ``order``) fails loudly instead of returning a
wrong page.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from typing import Any

from ._errors import InvalidCursorError

_VERSION = 1


def encode(listing: str, order: str, key: dict[str, Any]) -> str:
    """A cursor for ``listing`` continuing after ``key`` in ``order``."""
    payload = {"v": _VERSION, "l": listing, "o": order, **key}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode(cursor: str, listing: str, order: str) -> dict[str, Any]:
    if not isinstance(cursor, str) or not cursor:  # pyright: ignore[reportUnnecessaryIsInstance]
        raise InvalidCursorError(str(cursor), reason="a cursor is a non-empty string")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursorError(cursor, reason="it is not a queuert cursor") from exc
    if not isinstance(payload, dict) or payload.get("v") != _VERSION:  # pyright: ignore[reportUnknownMemberType]
        raise InvalidCursorError(cursor, reason="it is not a queuert cursor")
    data: dict[str, Any] = payload  # pyright: ignore[reportUnknownVariableType]
    if data.get("l") != listing:
        raise InvalidCursorError(
            cursor, reason=f"it comes from {data.get('l')!r}, not from {listing!r}"
        )
    if data.get("o") != order:
        raise InvalidCursorError(
            cursor, reason=f"it continues order={data.get('o')!r}, not order={order!r}"
        )
    return data


def encode_created(listing: str, order: str, created_at: dt.datetime, id: uuid.UUID) -> str:
    """A cursor after the row with this ``(created_at, id)``."""
    return encode(listing, order, {"t": created_at.astimezone(dt.UTC).isoformat(), "i": str(id)})


def decode_created(cursor: str, listing: str, order: str) -> tuple[dt.datetime, uuid.UUID]:
    """The ``(created_at, id)`` key a cursor from :func:`encode_created` continues after."""
    data = _decode(cursor, listing, order)
    try:
        created_at = dt.datetime.fromisoformat(data["t"])
        row_id = uuid.UUID(data["i"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidCursorError(cursor, reason="its key is damaged") from exc
    if created_at.tzinfo is None:
        raise InvalidCursorError(cursor, reason="its key is damaged")
    return created_at, row_id


def encode_index(listing: str, order: str, chain_index: int) -> str:
    """A cursor after the job at ``chain_index``."""
    return encode(listing, order, {"x": chain_index})


def decode_index(cursor: str, listing: str, order: str) -> int:
    """The ``chain_index`` a cursor from :func:`encode_index` continues after."""
    value = _decode(cursor, listing, order).get("x")
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidCursorError(cursor, reason="its key is damaged")
    return value
