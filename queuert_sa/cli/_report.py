"""What ``chain show`` prints: :class:`ChainReport` (a chain, its jobs, their
blockers and its dependents, as text lines or JSON data), read in one session by
:func:`read_chain_report`, and the message for an id that names no chain.

No click here; the command turns the results into output and errors.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import TYPE_CHECKING, Any

from queuert_sa._client import Queuert
from queuert_sa._entities import Chain, Job
from queuert_sa._errors import JobNotFoundError
from queuert_sa._rules import MAX_PAGE_SIZE
from queuert_sa.models import JobStatus

from ._format import chain_data, error_line, format_table, format_time, job_data, to_json

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@dataclasses.dataclass(frozen=True)
class ChainReport:
    """Everything ``chain show`` prints about one chain."""

    chain: Chain[Any, Any]
    jobs: list[Job[Any]]
    #: Per job id, the chains that job declared as blockers, in slot order.
    blockers: dict[uuid.UUID, list[Chain[Any, Any]]]
    #: Jobs of other chains that declared this chain as a blocker.
    dependents: list[Job[Any]]

    def to_data(self) -> dict[str, Any]:
        return {
            "chain": chain_data(self.chain),
            "jobs": [
                {**job_data(job), "blockers": [chain_data(c) for c in self.blockers[job.id]]}
                for job in self.jobs
            ],
            "dependents": [job_data(job) for job in self.dependents],
            "stuck_dependents": [job.id for job in self.stuck_dependents],
        }

    @property
    def current_job(self) -> Job[Any] | None:
        """The chain's current (latest) job, if it was read."""
        return next((job for job in self.jobs if job.id == self.chain.current_job_id), None)

    @property
    def stuck_dependents(self) -> list[Job[Any]]:
        """Dependents still blocked although this chain failed or was cancelled."""
        if self.chain.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            return []
        return [job for job in self.dependents if job.status == JobStatus.BLOCKED]

    def _ending(self) -> list[tuple[str, str]]:
        """The ``error`` line of a failed chain, the ``reason`` of a cancelled one."""
        current = self.current_job
        if current is None:
            return []
        if self.chain.status == JobStatus.FAILED:
            return [("error", error_line(current.last_attempt_error))]
        if self.chain.status == JobStatus.CANCELLED:
            return [("reason", current.cancel_reason or "-")]
        return []

    def to_lines(self) -> list[str]:
        chain = self.chain
        lines = [f"chain {chain.id}"]
        for key, value in (
            ("type", chain.type_name),
            ("status", chain.status.value),
            *self._ending(),
            ("created", f"{format_time(chain.created_at)} UTC"),
            (
                "completed",
                "-" if chain.completed_at is None else f"{format_time(chain.completed_at)} UTC",
            ),
            ("input", to_json(chain.input, indent=None)),
            ("output", to_json(chain.output, indent=None) if chain.is_completed else "-"),
        ):
            lines.append(f"  {key:<10} {value}")
        lines += ["", f"jobs ({len(self.jobs)}):"]
        lines += format_table(
            (
                "#",
                "JOB ID",
                "TYPE",
                "STATUS",
                "ATTEMPT",
                "PRIORITY",
                "SCHEDULED (UTC)",
                "COMPLETED (UTC)",
                "LAST ERROR",
            ),
            [
                [
                    str(job.chain_index),
                    str(job.id),
                    job.type_name,
                    job.status.value,
                    str(job.attempt),
                    str(job.priority),
                    format_time(job.scheduled_at),
                    format_time(job.completed_at),
                    error_line(job.last_attempt_error),
                ]
                for job in self.jobs
            ],
        )
        blocker_rows = [
            [
                f"#{job.chain_index}",
                str(slot),
                str(blocker.id),
                blocker.type_name,
                blocker.status.value,
                format_time(blocker.completed_at),
            ]
            for job in self.jobs
            for slot, blocker in enumerate(self.blockers[job.id])
        ]
        if blocker_rows:
            lines += ["", "blockers (chains a job waits or waited for):"]
            lines += format_table(
                ("JOB", "SLOT", "CHAIN ID", "TYPE", "STATUS", "COMPLETED (UTC)"), blocker_rows
            )
        if self.dependents:
            lines += [
                "",
                f"dependents (jobs with this chain as a blocker, {len(self.dependents)}):",
            ]
            lines += format_table(
                ("CHAIN ID", "STEP", "STATUS", "JOB ID"),
                [
                    [
                        str(job.chain_id),
                        f"{job.type_name}#{job.chain_index}",
                        job.status.value,
                        str(job.id),
                    ]
                    for job in self.dependents
                ],
            )
        stuck = self.stuck_dependents
        if stuck:
            noun = "dependent stays" if len(stuck) == 1 else "dependents stay"
            cancel = f"queuert-sa chains cancel {chain.id} --cascade"
            todo = (
                f"retry it (queuert-sa jobs retry {chain.current_job_id}), or cancel them too "
                f"({cancel})"
                if chain.status == JobStatus.FAILED
                else f"cancel them too ({cancel})"
            )
            lines += ["", f"{len(stuck)} {noun} blocked until this chain completes; {todo}."]
        return lines


def read_chain_report(client: Queuert, chain_id: uuid.UUID, session: Session) -> ChainReport:
    """Read a chain, all its jobs, their blockers and its dependents in ``session``.

    Raises :class:`ChainNotFoundError` for an unknown id.
    """
    chain = client.get_chain(chain_id, session=session)
    jobs: list[Job[Any]] = []
    cursor: str | None = None
    while True:
        page = client.list_chain_jobs(chain_id, cursor=cursor, limit=MAX_PAGE_SIZE, session=session)
        jobs += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    blockers = {job.id: client.get_job_blockers(job.id, session=session) for job in jobs}
    dependents: list[Job[Any]] = []
    cursor = None
    while True:
        blocked = client.list_blocked_jobs(
            chain_id, order="asc", cursor=cursor, limit=MAX_PAGE_SIZE, session=session
        )
        dependents += blocked.items
        if blocked.next_cursor is None:
            break
        cursor = blocked.next_cursor
    return ChainReport(chain, jobs, blockers, dependents)


def missing_chain_message(
    client: Queuert, chain_id: uuid.UUID, where: str, session: Session
) -> str:
    """Why ``chain show`` found nothing; points at the chain when the id is a continuation's."""
    message = f"no chain {chain_id} in {where}."
    try:
        job = client.get_job(chain_id, session=session)
    except JobNotFoundError:
        return message
    return (
        f"{message} {chain_id} is job #{job.chain_index} ({job.type_name}) of chain "
        f"{job.chain_id}; a chain's id is its first job's id. Try: queuert-sa chain show "
        f"{job.chain_id}"
    )
