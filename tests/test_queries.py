"""Listings: list_chains, list_jobs, list_chain_jobs and list_blocked_jobs.

Pinned here, on SQLite and PostgreSQL: every filter of every listing, both
orders, the page-size bounds, opaque cursors that refuse garbage and cursors
of another listing or order, keyset pagination that neither skips nor repeats
a chain while other connections insert, and query plans that stay on an index
(the listings and the deduplication lookups must not read the whole job table).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypedDict

import pytest
from sqlalchemy import Connection, event, insert, text
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import DEFAULT_MODELS, Job, JobBlocker, JobStatus
from queuert_sa.state import dedup, queries, removal
from queuert_sa.state.queries import Filters

from .conftest import Db
from .test_worker import FakeClock


class NumIn(TypedDict):
    n: int


types = q.JobTypes()
alpha = types.entry("alpha", input=NumIn, continues_with=["alpha-next"])
alpha_next = types.define("alpha-next", input=NumIn, output=int)
beta = types.entry("beta", input=NumIn, output=int)
gate = types.entry("gate", input=NumIn, output=int, blockers=q.many(beta))
loop = types.entry("loop", input=NumIn, output=int, continues_with=["loop"])

MINUTE = dt.timedelta(minutes=1)


def start(client: q.Queuert, db: Db, job_type: q.JobType[NumIn, Any], n: int, **kw: Any) -> Any:
    with Session(db.engine) as s, s.begin():
        return client.start_chain(s, job_type, {"n": n}, **kw)


def ids(items: Any) -> list[uuid.UUID]:
    return [item.id for item in items]


def walk(fetch: Callable[[str | None], q.Page[Any]]) -> tuple[list[Any], list[int]]:
    """Every item of a listing, following next_cursor; also the page sizes."""
    items: list[Any] = []
    sizes: list[int] = []
    cursor: str | None = None
    while True:
        page = fetch(cursor)
        items += list(page)
        sizes.append(len(page))
        if page.next_cursor is None:
            return items, sizes
        cursor = page.next_cursor


@dataclass
class Data:
    """Four chains a minute apart; a1 continued (root completed, step 2 pending); b1 completed."""

    client: q.Queuert
    clock: FakeClock
    t: list[dt.datetime]
    a1: q.Chain[NumIn, Any]
    b1: q.Chain[NumIn, Any]
    a2: q.Chain[NumIn, Any]
    b2: q.Chain[NumIn, Any]
    step2: q.Job[Any]


def populate(db: Db) -> Data:
    clock = FakeClock()
    client = q.Queuert(db.engine, types, clock=clock)
    t: list[dt.datetime] = []
    chains = []
    for job_type, n in ((alpha, 1), (beta, 2), (alpha, 3), (beta, 4)):
        t.append(clock.now)
        chains.append(start(client, db, job_type, n))
        clock.advance(MINUTE)
    t.append(clock.now)  # t[4]: when a1 continues
    a1, b1, a2, b2 = chains
    alphas = client.worker()
    alphas.handler(alpha)(lambda a: a.continue_with(alpha_next, {"n": a.input["n"] * 10}))
    assert alphas.drain(max_jobs=1) == 1  # the oldest due alpha: a1
    betas = client.worker()
    betas.handler(beta)(lambda a: a.complete(a.input["n"] * 100))
    assert betas.drain(max_jobs=1) == 1  # the oldest due beta: b1
    step2 = client.get_chain(a1.id)
    assert step2.current_index == 1
    return Data(client, clock, t, a1, b1, a2, b2, client.get_job(step2.current_job_id))


# --- list_chains -------------------------------------------------------------------


def test_list_chains_orders_newest_first_by_default_and_oldest_first_on_request(db: Db) -> None:
    d = populate(db)
    newest_first = d.client.list_chains()
    assert ids(newest_first) == [d.b2.id, d.a2.id, d.b1.id, d.a1.id]
    assert newest_first.next_cursor is None
    assert ids(d.client.list_chains(order="desc")) == ids(newest_first)
    assert ids(d.client.list_chains(order="asc")) == [d.a1.id, d.b1.id, d.a2.id, d.b2.id]
    first = d.client.list_chains(order="asc").items[0]
    # A chain is read as its root's identity and input with its latest job's state.
    assert (first.type_name, first.input, first.created_at) == ("alpha", {"n": 1}, d.t[0])
    assert (first.status, first.current_index, first.current_type_name) == (
        "pending",
        1,
        "alpha-next",
    )


def test_list_chains_filters(db: Db) -> None:
    d = populate(db)
    c = d.client
    assert ids(c.list_chains(types=[alpha])) == [d.a2.id, d.a1.id]
    assert ids(c.list_chains(types=["beta"])) == [d.b2.id, d.b1.id]
    assert ids(c.list_chains(types=[alpha, "beta"], order="asc")) == [
        d.a1.id,
        d.b1.id,
        d.a2.id,
        d.b2.id,
    ]
    # types= are chain types: the continuation's type matches no chain.
    assert ids(c.list_chains(types=[alpha_next])) == []
    assert ids(c.list_chains(chain_ids=[d.a1.id, str(d.b2.id)])) == [d.b2.id, d.a1.id]
    assert ids(c.list_chains(chain_ids=[d.step2.id])) == []  # a job id, not a chain id
    # job_ids=: the chains containing those jobs (a continuation finds its chain).
    assert ids(c.list_chains(job_ids=[d.step2.id])) == [d.a1.id]
    assert ids(c.list_chains(job_ids=[d.step2.id, d.b1.id])) == [d.b1.id, d.a1.id]
    assert ids(c.list_chains(job_ids=[uuid.uuid4()])) == []
    # created_since is inclusive, created_before exclusive.
    assert ids(c.list_chains(created_since=d.t[1])) == [d.b2.id, d.a2.id, d.b1.id]
    assert ids(c.list_chains(created_before=d.t[2])) == [d.b1.id, d.a1.id]
    assert ids(c.list_chains(created_since=d.t[1], created_before=d.t[3])) == [d.a2.id, d.b1.id]
    assert ids(c.list_chains(created_since=d.t[1], created_before=d.t[1])) == []
    # Filters combine (AND).
    assert ids(c.list_chains(types=[beta], created_since=d.t[2])) == [d.b2.id]
    assert ids(c.list_chains(types=[beta], chain_ids=[d.a1.id])) == []


def test_list_chains_refuses_bad_filter_values(db: Db) -> None:
    d = populate(db)
    c = d.client
    with pytest.raises(TypeError, match=r"wrap a single one"):
        c.list_chains(types=alpha)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"wrap a single one"):
        c.list_chains(types="alpha")
    with pytest.raises(TypeError, match=r"wrap a single one"):
        c.list_chains(statuses="pending")
    with pytest.raises(TypeError, match=r"wrap a single id"):
        c.list_chains(chain_ids=d.a1.id)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Unknown job status 'done'"):
        c.list_chains(statuses=["done"])
    with pytest.raises(ValueError, match=r"naive"):
        c.list_chains(created_since=dt.datetime(2024, 1, 1))
    with pytest.raises(ValueError, match=r"naive"):
        c.list_jobs(created_before=dt.datetime(2024, 1, 1))
    # A misspelt filter is refused (not ignored), naming what the listing takes.
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'status'.*statuses"):
        c.list_chains(status=["pending"])  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"list_chains\(\) got an unexpected .*'chain_types'"):
        c.list_chains(chain_types=[alpha])  # type: ignore[call-arg]


def test_list_chains_status_is_the_latest_jobs_status(db: Db) -> None:
    d = populate(db)
    c = d.client
    with Session(db.engine) as s, s.begin():
        blocked = c.start_chain(s, gate, {"n": 9}, blockers=[d.b2])
    # a1's root is completed but it continued to a pending step: the chain is pending.
    assert ids(c.list_chains(statuses=["completed"])) == [d.b1.id]
    assert ids(c.list_chains(statuses=[JobStatus.PENDING])) == [d.b2.id, d.a2.id, d.a1.id]
    assert ids(c.list_chains(statuses=["blocked"])) == [blocked.id]
    assert ids(c.list_chains(statuses=["blocked", "completed"])) == [blocked.id, d.b1.id]
    assert ids(c.list_chains(statuses=["running"])) == []
    assert ids(c.list_chains(statuses=["pending"], types=[alpha])) == [d.a2.id, d.a1.id]
    done = c.list_chains(statuses=["completed"]).items[0]
    assert (done.output, done.completed_at) == (200, d.t[4])

    # The second step completes: now the whole chain reads completed.
    finisher = c.worker()
    finisher.handler(alpha_next)(lambda a: a.complete(a.input["n"] + 1))
    assert finisher.drain() == 1
    assert ids(c.list_chains(statuses=["completed"])) == [d.b1.id, d.a1.id]
    assert ids(c.list_chains(statuses=["pending"])) == [d.b2.id, d.a2.id]
    a1 = c.list_chains(chain_ids=[d.a1.id]).items[0]
    assert (a1.status, a1.output, a1.current_index) == ("completed", 11, 1)
    # A status filter pages like any other (the cursor carries no filter).
    found, sizes = walk(lambda cur: c.list_chains(statuses=["pending"], cursor=cur, limit=1))
    assert (ids(found), sizes) == ([d.b2.id, d.a2.id], [1, 1])


# --- list_jobs ---------------------------------------------------------------------


def test_list_jobs_filters_and_orders(db: Db) -> None:
    d = populate(db)
    c = d.client
    every = [d.step2.id, d.b2.id, d.a2.id, d.b1.id, d.a1.id]  # newest first
    assert ids(c.list_jobs()) == every
    assert ids(c.list_jobs(order="asc")) == every[::-1]
    # types= are the jobs' own types; chain_types= the types of their chains.
    assert ids(c.list_jobs(types=[alpha_next])) == [d.step2.id]
    assert ids(c.list_jobs(types=["alpha"])) == [d.a2.id, d.a1.id]
    assert ids(c.list_jobs(chain_types=[alpha])) == [d.step2.id, d.a2.id, d.a1.id]
    assert ids(c.list_jobs(chain_types=[alpha_next])) == []
    assert ids(c.list_jobs(statuses=["completed"])) == [d.b1.id, d.a1.id]
    assert ids(c.list_jobs(statuses=[JobStatus.PENDING], order="asc")) == [
        d.a2.id,
        d.b2.id,
        d.step2.id,
    ]
    assert ids(c.list_jobs(chain_ids=[d.a1.id])) == [d.step2.id, d.a1.id]
    assert ids(c.list_jobs(job_ids=[d.step2.id, str(d.b1.id), uuid.uuid4()])) == [
        d.step2.id,
        d.b1.id,
    ]
    assert ids(c.list_jobs(created_since=d.t[2])) == [d.step2.id, d.b2.id, d.a2.id]
    assert ids(c.list_jobs(created_before=d.t[1])) == [d.a1.id]
    assert ids(c.list_jobs(created_since=d.t[4], created_before=d.t[4])) == []
    assert ids(c.list_jobs(chain_types=[alpha], statuses=["pending"])) == [d.step2.id, d.a2.id]
    step2 = c.list_jobs(types=[alpha_next]).items[0]
    assert (step2.chain_id, step2.chain_index, step2.chain_type_name, step2.input) == (
        d.a1.id,
        1,
        "alpha",
        {"n": 10},
    )


# --- list_chain_jobs ------------------------------------------------------------------


def test_list_chain_jobs_by_chain_index_with_pagination(db: Db) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, types, clock=clock)
    chain = start(client, db, loop, 4)
    worker = client.worker()

    @worker.handler(loop)
    def count_down(attempt: q.Attempt[NumIn, int]) -> q.Outcome:
        clock.advance(MINUTE)
        if attempt.input["n"] == 0:
            return attempt.complete(0)
        return attempt.continue_with(loop, {"n": attempt.input["n"] - 1})

    assert worker.drain() == 5
    first = client.list_chain_jobs(chain.id)
    assert [j.chain_index for j in first] == [0, 1, 2, 3, 4]
    assert [j.input["n"] for j in first] == [4, 3, 2, 1, 0]
    assert first.next_cursor is None

    up, sizes = walk(lambda cur: client.list_chain_jobs(chain.id, cursor=cur, limit=2))
    assert ([j.chain_index for j in up], sizes) == ([0, 1, 2, 3, 4], [2, 2, 1])
    down, sizes = walk(
        lambda cur: client.list_chain_jobs(chain.id, order="desc", cursor=cur, limit=2)
    )
    assert ([j.chain_index for j in down], sizes) == ([4, 3, 2, 1, 0], [2, 2, 1])
    assert {j.chain_id for j in up} == {chain.id}
    exact, sizes = walk(lambda cur: client.list_chain_jobs(chain.id, cursor=cur, limit=5))
    assert (len(exact), sizes) == (5, [5])  # a full last page has no cursor to an empty page

    # Another chain's jobs never leak in; an unknown chain is an empty page.
    other = start(client, db, beta, 1)
    assert ids(client.list_chain_jobs(other.id)) == [other.id]
    empty = client.list_chain_jobs(uuid.uuid4())
    assert (empty.items, empty.next_cursor) == ([], None)


# --- list_blocked_jobs ----------------------------------------------------------------


def test_list_blocked_jobs_lists_dependents_also_after_they_were_unblocked(db: Db) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, types, clock=clock)
    blocker = start(client, db, beta, 1)
    other = start(client, db, beta, 2)
    dependents = []
    for n in range(3):
        clock.advance(MINUTE)
        dependents.append(start(client, db, gate, n, blockers=[blocker]))
    unrelated = start(client, db, gate, 7, blockers=[other])
    clock.advance(MINUTE)
    both = start(client, db, gate, 8, blockers=[other, blocker])
    expected = [both.id, *[d.id for d in reversed(dependents)]]

    listed = client.list_blocked_jobs(blocker.id)
    assert ids(listed) == expected
    assert {j.status for j in listed} == {"blocked"}
    assert ids(client.list_blocked_jobs(blocker.id, order="asc")) == expected[::-1]
    assert ids(client.list_blocked_jobs(other.id)) == [both.id, unrelated.id]
    found, sizes = walk(lambda cur: client.list_blocked_jobs(blocker.id, cursor=cur, limit=3))
    assert (ids(found), sizes) == (expected, [3, 1])
    found, sizes = walk(
        lambda cur: client.list_blocked_jobs(blocker.id, order="asc", cursor=cur, limit=2)
    )
    assert (ids(found), sizes) == (expected[::-1], [2, 2])

    # Unblocked and then completed, the dependents are still listed.
    worker = client.worker()
    worker.handler(beta)(lambda a: a.complete(a.input["n"]))
    worker.handler(gate)(lambda a: a.complete(len(a.blockers)))
    assert worker.drain(max_jobs=1) == 1  # the blocker: unblocks three dependents
    after_unblock = client.list_blocked_jobs(blocker.id)
    assert ids(after_unblock) == expected
    assert [j.status for j in after_unblock] == ["blocked", "pending", "pending", "pending"]
    worker.drain()
    completed = client.list_blocked_jobs(blocker.id)
    assert ids(completed) == expected
    assert {j.status for j in completed} == {"completed"}
    assert ids(client.list_blocked_jobs(uuid.uuid4())) == []
    assert ids(client.list_blocked_jobs(dependents[0].id)) == []  # blocks nothing


# --- page bounds, cursors, Page ----------------------------------------------------------


def listings(client: q.Queuert, chain_id: uuid.UUID) -> dict[str, Callable[..., q.Page[Any]]]:
    return {
        "chains": client.list_chains,
        "jobs": client.list_jobs,
        "chain_jobs": lambda **kw: client.list_chain_jobs(chain_id, **kw),
        "blocked_jobs": lambda **kw: client.list_blocked_jobs(chain_id, **kw),
    }


def test_limit_and_order_bounds(db: Db) -> None:
    client = q.Queuert(db.engine, types)
    chain = start(client, db, beta, 1)
    for name, listing in listings(client, chain.id).items():
        for bad in (0, -1, 1001):
            with pytest.raises(ValueError, match=r"limit must be between 1 and 1000"):
                listing(limit=bad)
        with pytest.raises(ValueError, match=r"order must be 'asc' or 'desc'"):
            listing(order="newest")
        for good in (1, 1000):
            page = listing(limit=good)
            assert page.next_cursor is None, name
    # The default page size is 50.
    many = [beta({"n": i}) for i in range(60)]
    with Session(db.engine) as s, s.begin():
        client.start_chains(s, many)
    page = client.list_chains()
    assert len(page) == 50
    assert page.next_cursor is not None
    assert len(client.list_chains(limit=1000)) == 61


def test_cursor_errors(db: Db) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, types, clock=clock)
    blocker = start(client, db, beta, 0)
    for n in range(3):
        clock.advance(MINUTE)
        start(client, db, gate, n, blockers=[blocker])
    chain = start(client, db, loop, 0)
    with Session(db.engine) as s, s.begin():
        client.complete_chain(s, chain.id, loop, lambda c: c.continue_with(loop, {"n": 1}))
    by_name = listings(client, blocker.id)
    by_name["chain_jobs"] = lambda **kw: client.list_chain_jobs(chain.id, **kw)
    cursors: dict[tuple[str, str], str] = {}
    for name, listing in by_name.items():
        for order in ("asc", "desc"):
            cursor = listing(order=order, limit=1).next_cursor
            assert cursor is not None, (name, order)
            assert listing(order=order, limit=1, cursor=cursor).items  # it works where it belongs
            cursors[name, order] = cursor

    def b64(payload: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")

    good = json.loads(base64.urlsafe_b64decode(cursors["chains", "desc"] + "=="))
    garbage = [
        "",
        "not a cursor!",
        "%%%",
        b64([1, 2]),
        b64({"l": "chains", "o": "desc"}),  # no version
        b64({**good, "v": 99}),
        b64({**good, "t": "yesterday"}),
        b64({**good, "t": "2024-01-01T00:00:00"}),  # naive
        b64({**good, "i": "not-a-uuid"}),
        b64({k: v for k, v in good.items() if k != "i"}),
    ]
    for bad in garbage:
        with pytest.raises(q.InvalidCursorError, match=r"Invalid cursor"):
            client.list_chains(cursor=bad)
    index_key = json.loads(base64.urlsafe_b64decode(cursors["chain_jobs", "asc"] + "=="))
    for bad_index in ("1", True, None, 1.5):
        with pytest.raises(q.InvalidCursorError, match=r"damaged"):
            client.list_chain_jobs(chain.id, cursor=b64({**index_key, "x": bad_index}))

    # A cursor from another listing, or for the other order, is refused.
    for (source, order), cursor in cursors.items():
        for name, listing in by_name.items():
            if name != source:
                with pytest.raises(q.InvalidCursorError, match=rf"comes from '{source}'"):
                    listing(order=order, cursor=cursor)
        flipped = "asc" if order == "desc" else "desc"
        with pytest.raises(q.InvalidCursorError, match=rf"continues order='{order}'"):
            by_name[source](order=flipped, cursor=cursor)
    # It is a ValueError too, for callers validating request parameters.
    with pytest.raises(ValueError, match=r"Invalid cursor"):
        client.list_jobs(cursor="xyz")


def test_page_is_iterable_sized_and_ends_without_a_cursor(db: Db) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, types, clock=clock)
    chains = []
    for n in range(5):
        chains.append(start(client, db, beta, n))
        clock.advance(MINUTE)
    page = client.list_chains(order="asc", limit=2)
    assert isinstance(page, q.Page)
    assert len(page) == 2
    assert [c.id for c in page] == [c.id for c in page.items] == ids(chains[:2])
    assert page.next_cursor is not None
    found, sizes = walk(lambda cur: client.list_chains(order="asc", cursor=cur, limit=2))
    assert (ids(found), sizes) == (ids(chains), [2, 2, 1])
    empty = client.list_chains(types=[gate])
    assert (list(empty), len(empty), empty.next_cursor) == ([], 0, None)
    # Reading inside the caller's transaction sees its uncommitted chain.
    with Session(db.engine) as s, s.begin():
        mine = client.start_chain(s, beta, {"n": 99})
        assert ids(client.list_chains(limit=1, session=s)) == [mine.id]
        assert ids(client.list_jobs(limit=1, session=s)) == [mine.id]
        s.rollback()
    assert mine.id not in ids(client.list_chains(limit=1000))


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_a_cursor_stays_valid_after_its_row_is_deleted(db: Db, order: str) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, types, clock=clock)
    chains = []
    for n in range(6):
        chains.append(start(client, db, beta, n))
        clock.advance(MINUTE)
    in_order = ids(chains) if order == "asc" else ids(chains)[::-1]
    first = client.list_chains(order=order, limit=2)  # type: ignore[arg-type]
    assert ids(first) == in_order[:2]
    with Session(db.engine) as s, s.begin():  # the cursor's own row, and the next one
        client.delete_chains(s, [in_order[1], in_order[2]])
    rest, sizes = walk(
        lambda cur: client.list_chains(order=order, cursor=cur or first.next_cursor, limit=2)  # type: ignore[arg-type]
    )
    assert (ids(rest), sizes) == (in_order[3:], [2, 1])


# --- keyset pagination under concurrent inserts ----------------------------------------


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_pagination_never_skips_or_repeats_while_chains_are_inserted(db: Db, order: str) -> None:
    """1,000 chains, pages of 50; between pages another connection commits new chains and a
    thread inserts continuously. Chains share created_at in groups of 40 with random ids, so
    page boundaries fall inside groups and the id tie-break is exercised."""
    clock = FakeClock()
    clock.now -= dt.timedelta(hours=1)  # the walk's chains are older than anything inserted
    client = q.Queuert(db.engine, types, clock=clock)
    existing: list[q.Chain[Any, Any]] = []
    for group in range(25):
        with Session(db.engine) as s, s.begin():
            starts = [beta({"n": group * 40 + i}, id=uuid.uuid4()) for i in range(40)]
            existing += client.start_chains(s, starts)
        clock.advance(dt.timedelta(seconds=1))
    expected = [c.id for c in sorted(existing, key=lambda c: (c.created_at, c.id))]
    if order == "desc":
        expected.reverse()
    assert len(set(expected)) == 1000

    live = q.Queuert(db.engine, types)  # the real clock: new chains are the newest
    inserted: list[uuid.UUID] = []
    lock = threading.Lock()

    def insert(count: int) -> None:
        with Session(db.engine) as s, s.begin():
            made = live.start_chains(s, [beta({"n": -1}) for _ in range(count)])
        with lock:
            inserted.extend(c.id for c in made)

    stop, first_insert = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def keep_inserting() -> None:
        try:
            while not stop.is_set():
                insert(1)
                first_insert.set()
                stop.wait(0.002)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            first_insert.set()

    inserter = threading.Thread(target=keep_inserting)
    seen: list[uuid.UUID] = []
    pages = 0
    cursor: str | None = None
    try:
        while True:
            page = client.list_chains(order=order, cursor=cursor, limit=50)  # type: ignore[arg-type]
            seen += ids(page)
            pages += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
            if pages == 1:  # the walk has begun: from now on, chains arrive all the time
                inserter.start()
                assert first_insert.wait(10)
            insert(3)  # another connection commits between two page reads
    finally:
        stop.set()
        if inserter.is_alive():
            inserter.join(30)
    assert not errors, errors
    assert len(inserted) > 3 * 19, "the inserts ran during the walk"
    assert len(seen) == len(set(seen)), "a chain was listed twice"
    if order == "desc":
        assert seen == expected
        assert pages == 20
    else:
        # Chains appended after the last key may be reached; every old chain comes first.
        assert seen[:1000] == expected
        assert set(seen[1000:]) <= set(inserted)
    with db.engine.connect() as conn:
        total = conn.execute(text("SELECT count(*) FROM queuert_job")).scalar_one()
    assert total == 1000 + len(inserted)


# --- query plans -------------------------------------------------------------------------

PLAN_ROWS = 5000


def bulk_rows(now: dt.datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """5,000 job rows: two-step alpha chains, beta chains, and gate chains blocked by betas.

    Roots come before their continuations (the chain_id foreign key).
    """
    jobs: list[dict[str, Any]] = []
    blockers: list[dict[str, Any]] = []

    def job(
        chain: uuid.UUID | None,
        type_name: str,
        chain_type: str,
        index: int,
        status: str,
        at: dt.datetime,
        key: str | None = None,
    ) -> uuid.UUID:
        job_id = uuid.uuid4()
        done = status == "completed"
        jobs.append(
            {
                "id": job_id,
                "type_name": type_name,
                "chain_id": chain or job_id,
                "chain_type_name": chain_type,
                "chain_index": index,
                "input": {"n": len(jobs)},
                "output": 1 if done else None,
                "status": status,
                "created_at": at,
                "scheduled_at": at,
                "completed_at": at if done else None,
                "attempt": 1 if done else 0,
                "deduplication_key": key,
            }
        )
        return job_id

    statuses = ["completed", "completed", "pending", "running", "blocked"]
    betas: list[uuid.UUID] = []
    for i in range(1500):  # 3,000 jobs
        at = now - dt.timedelta(seconds=PLAN_ROWS - i)
        key = f"k{i % 700}"
        root = job(None, "alpha", "alpha", 0, "completed", at, key)
        job(root, "alpha-next", "alpha", 1, statuses[i % 4], at + dt.timedelta(milliseconds=1), key)
    for i in range(1500):  # 1,500 jobs
        at = now - dt.timedelta(seconds=PLAN_ROWS - 1500 - i)
        betas.append(job(None, "beta", "beta", 0, statuses[i % 3], at, f"b{i}"))
    for i in range(500):  # 500 jobs, 1,000 blocker rows
        at = now - dt.timedelta(seconds=PLAN_ROWS - 3000 - i)
        gate_id = job(None, "gate", "gate", 0, "blocked", at)
        for slot, blocker in enumerate((betas[i], betas[(i * 7 + 1) % 1500])):
            if slot and blocker == betas[i]:
                continue
            blockers.append({"job_id": gate_id, "blocked_by_chain_id": blocker, "index": slot})
    assert len(jobs) == PLAN_ROWS
    return jobs, blockers


@contextmanager
def captured(conn: Connection) -> Iterator[list[tuple[str, Any]]]:
    """The SQL text and parameters of each statement run on ``conn`` meanwhile."""
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(conn, "before_cursor_execute", capture)
    try:
        yield statements
    finally:
        event.remove(conn, "before_cursor_execute", capture)


def explain(conn: Connection, kind: str, statement: str, parameters: Any) -> str:
    if kind == "postgresql":
        rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters).all()
        return "\n".join(row[0] for row in rows)
    rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
    return "\n".join(row[3] for row in rows)


JOB_TABLES = ("queuert_job", "queuert_job_blocker")
JOB_ALIASES = ("newer", "latest", "member", "root", "step")


def full_scans(kind: str, plan: str) -> list[str]:
    """Plan lines that read a whole queuert table (or an alias of it) instead of an index."""
    bad = []
    for line in plan.splitlines():
        if kind == "postgresql":
            match = re.search(r"Seq Scan on (\w+)", line)
            if match and match.group(1) in JOB_TABLES:
                bad.append(line.strip())
        else:
            match = re.match(r"\s*SCAN (\w+)(.*)$", line)
            queuert = match is not None and match.group(1) in (*JOB_TABLES, *JOB_ALIASES)
            if match and queuert and "USING" not in match.group(2):
                bad.append(line.strip())
    return bad


def uses_index(kind: str, plan: str) -> bool:
    if kind == "postgresql":
        return "Index" in plan
    return "USING INDEX" in plan or "USING COVERING INDEX" in plan


def test_listing_and_dedup_statements_use_an_index(db: Db) -> None:
    """The exact SQL the library runs is EXPLAINed over 5,000 analysed rows.

    Listings, the deduplication lookups and delete_chains' lookups must stay on
    an index (PostgreSQL: no Seq Scan on a queuert table; SQLite: no bare SCAN).
    The cleanup statements are checked in test_retention.py. Run with ``pytest
    -s`` to read the plans.
    """
    now = dt.datetime.now(dt.UTC)
    jobs, blockers = bulk_rows(now)
    with db.engine.begin() as conn:
        conn.execute(insert(Job.__table__), jobs)
        conn.execute(insert(JobBlocker.__table__), blockers)
    with db.engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    caps = q.Queuert(db.engine, types).capabilities
    m = DEFAULT_MODELS
    alpha_root = next(j for j in jobs if j["type_name"] == "alpha")
    beta_root = next(j for j in jobs if j["type_name"] == "beta")
    middle = jobs[len(jobs) // 2]
    after = (middle["created_at"], middle["id"])
    no_filter = Filters()
    cases: dict[str, Callable[[Connection], object]] = {
        "list_chains": lambda c: queries.list_chains(
            c, m, filters=no_filter, order="desc", after=None, limit=50
        ),
        "list_chains next page": lambda c: queries.list_chains(
            c, m, filters=no_filter, order="desc", after=after, limit=50
        ),
        "list_chains types": lambda c: queries.list_chains(
            c, m, filters=Filters(type_names=["beta"]), order="desc", after=None, limit=50
        ),
        "list_chains types asc next page": lambda c: queries.list_chains(
            c, m, filters=Filters(type_names=["beta"]), order="asc", after=after, limit=50
        ),
        "list_jobs": lambda c: queries.list_jobs(
            c, m, filters=no_filter, order="desc", after=None, limit=50
        ),
        "list_jobs next page": lambda c: queries.list_jobs(
            c, m, filters=no_filter, order="asc", after=after, limit=50
        ),
        "list_jobs statuses": lambda c: queries.list_jobs(
            c, m, filters=Filters(statuses=["pending"]), order="desc", after=None, limit=50
        ),
        "list_jobs types": lambda c: queries.list_jobs(
            c, m, filters=Filters(type_names=["alpha-next"]), order="desc", after=None, limit=50
        ),
        "list_chain_jobs": lambda c: queries.list_chain_jobs(
            c, m, chain_id=alpha_root["id"], order="asc", after=None, limit=50
        ),
        "list_blocked_jobs": lambda c: queries.list_blocked_jobs(
            c, m, chain_id=beta_root["id"], order="desc", after=None, limit=50
        ),
        "find_duplicate open": lambda c: dedup.find_duplicate(
            c, m, chain_type_name="alpha", key="k7", scope="open", since=None, exclude=[]
        ),
        "find_duplicate any": lambda c: dedup.find_duplicate(
            c, m, chain_type_name="alpha", key="k7", scope="any", since=None, exclude=[]
        ),
        "find_duplicate any window": lambda c: dedup.find_duplicate(
            c,
            m,
            chain_type_name="beta",
            key="b7",
            scope="any",
            since=now - dt.timedelta(hours=1),
            exclude=[uuid.uuid4()],
        ),
        "find_duplicate open window": lambda c: dedup.find_duplicate(
            c,
            m,
            chain_type_name="alpha",
            key="k7",
            scope="open",
            since=now - dt.timedelta(hours=1),
            exclude=[uuid.uuid4()],
        ),
        "lock_chains (delete_chains)": lambda c: removal.lock_chains(
            c, m, caps, [alpha_root["id"], beta_root["id"]]
        ),
        "outside_references (delete_chains)": lambda c: removal.outside_references(
            c, m, [beta_root["id"]]
        ),
    }
    failures: dict[str, list[str]] = {}
    with db.engine.connect() as conn:
        for name, run in cases.items():
            with captured(conn) as statements:
                run(conn)
            selects = [
                (sql, p) for sql, p in statements if sql.lstrip().upper().startswith("SELECT")
            ]
            assert selects, name
            for number, (sql, params) in enumerate(selects, 1):
                plan = explain(conn, db.kind, sql, params)
                label = f"{name} [{number}/{len(selects)}]"
                print(f"\n--- {db.kind}: {label}\n{plan}")
                bad = full_scans(db.kind, plan)
                if bad or not uses_index(db.kind, plan):
                    failures[label] = bad or ["no index in the plan"]
        conn.rollback()
    assert not failures, f"{db.kind} plans without an index: {failures}"
