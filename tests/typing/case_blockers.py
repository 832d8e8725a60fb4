"""Blockers: declarations, start_chain(blockers=...), and typed blocker outputs."""

from __future__ import annotations

import uuid
from typing import TypedDict, assert_type

from sqlalchemy.orm import Session

import queuert_sa as q


class SourceIn(TypedDict):
    source: str


class Rows(TypedDict):
    rows: int


class ReportIn(TypedDict):
    title: str


class ReportOut(TypedDict):
    total: int


job_types = q.JobTypes()
fetch = job_types.entry("fetch", input=SourceIn, output=Rows)
other = job_types.entry("other", input=SourceIn, output=ReportOut)
report = job_types.entry(
    "report", input=ReportIn, output=ReportOut, blockers=[fetch, q.many(other)]
)
merge = job_types.entry("merge", input=ReportIn, output=ReportOut, blockers=q.many(fetch))
bad = job_types.entry("bad", input=ReportIn, blockers=fetch)  # expect-error


def start(queuert: q.Queuert, session: Session, chain: q.Chain[SourceIn, Rows]) -> None:
    queuert.start_chain(session, report, {"title": "t"}, blockers=[chain, uuid.uuid4(), "a-uuid"])
    queuert.start_chain(session, report, {"title": "t"}, blockers=chain)  # expect-error
    queuert.start_chain(session, report, {"title": "t"}, blockers=[1])  # expect-error


worker = q.Queuert.__new__(q.Queuert).worker()


@worker.handler(merge)
def merge_sources(attempt: q.Attempt[ReportIn, ReportOut]) -> q.Outcome:
    outputs = attempt.blocker_outputs(fetch)
    assert_type(outputs, list[Rows])
    total = sum(o["rows"] for o in outputs)
    total += sum(o["rowz"] for o in outputs)  # expect-error
    totals = attempt.blocker_outputs(other)
    assert_type(totals, list[ReportOut])
    label: str = totals[0]["total"]  # expect-error
    return attempt.complete({"total": total + len(label)})
