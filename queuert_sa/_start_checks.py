"""What a start must pass before its INSERT: deduplication, and ids given by the caller.

Both run inside the caller's transaction, before any row is written, so a
refusal (:class:`DuplicateJobIdError`) leaves the transaction usable and a
deduplicated start inserts nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from ._context import Context
from ._entities import Chain
from ._errors import DeduplicationError, DuplicateJobIdError
from ._job_types import ChainStart
from ._snapshots import chain_from_rows
from .state import NewJob
from .state import chains as ops_chains
from .state import dedup as ops_dedup
from .state import operations as ops

#: How often a deduplicated start looks again when its match is deleted meanwhile.
DEDUP_LOOKUPS = 10


def check_new_ids(
    session: Session,
    ctx: Context,
    ids: Sequence[uuid.UUID],
    place: tuple[uuid.UUID, int] | None = None,
) -> None:
    """Refuse ids given by the caller that are other jobs' (:class:`DuplicateJobIdError`).

    ``place``: the (chain, index) a continuation goes to; the same id already
    there is the same step written again, not a collision.
    """
    if not ids:
        return
    seen: set[uuid.UUID] = set()
    for job_id in ids:
        if job_id in seen:
            raise DuplicateJobIdError(job_id, chain_id=job_id)  # twice in one batch
        seen.add(job_id)
    for job_id, found in ops.job_places(session, ctx.models, ids).items():
        if found != place:
            raise DuplicateJobIdError(job_id, chain_id=found[0])


def find_duplicates(
    session: Session,
    ctx: Context,
    starts: Sequence[ChainStart[Any, Any]],
    jobs: Sequence[NewJob],
    now: dt.datetime,
) -> dict[int, Chain[Any, Any] | int]:
    """Which starts duplicate an existing chain (the chain) or an earlier start (its index).

    Concurrent transactions with the same (chain type, key) are serialised
    first (an advisory lock on PostgreSQL, the write lock on SQLite), so the
    lookup sees any chain a concurrent start committed.
    """
    keyed = [(i, start.dedup) for i, start in enumerate(starts) if start.dedup is not None]
    if not keyed:
        return {}
    keys = {(jobs[i].chain_type_name, dedup.key) for i, dedup in keyed}
    isolation = ops_dedup.lock_dedup_keys(session, ctx.models, ctx.capabilities, keys)
    if isolation is not None and isolation != "read committed":
        raise DeduplicationError(
            f"Deduplication needs a READ COMMITTED transaction on PostgreSQL; this one is "
            f"{isolation.upper()}, whose snapshot would miss a chain that a concurrent "
            "transaction just committed. Start deduplicated chains in a READ COMMITTED "
            "transaction (the default)."
        )
    found: dict[int, Chain[Any, Any] | int] = {}
    first_of_key: dict[tuple[str, str], int] = {}
    for i, dedup in keyed:
        job = jobs[i]
        batch_key = (job.chain_type_name, dedup.key)
        if batch_key in first_of_key:
            first = first_of_key[batch_key]
            found[i] = found.get(first, first)
            continue
        first_of_key[batch_key] = i
        rows = None
        for _ in range(DEDUP_LOOKUPS):
            chain_id = ops_dedup.find_duplicate(
                session,
                ctx.models,
                chain_type_name=job.chain_type_name,
                key=dedup.key,
                scope=dedup.scope,
                since=now - dedup.window if dedup.window is not None else None,
                exclude=dedup.exclude,
            )
            if chain_id is None:
                break
            rows = ops_chains.get_chain(session, ctx.models, chain_id)
            if rows is not None:
                break
            # Deleted (delete_chains, cleanup) between the two reads: look again.
        if rows is None:
            continue
        job_type = ctx.job_types.resolve(starts[i].job_type)
        chain = chain_from_rows(ctx.job_types, *rows, job_type)
        found[i] = dataclasses.replace(chain, deduplicated=True)
    return found
