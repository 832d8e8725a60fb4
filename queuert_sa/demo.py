"""The demo chain, end to end: a sign-up that provisions an account and sends a welcome e-mail.

Read this module top to bottom as a tutorial; ``queuert-sa demo`` runs it on an
embedded SQLite file. It shows the three things queuert_sa is for:

1. **Start work in your own transaction.** The ``Account`` row and the chain's
   first job are written in ONE transaction: both commit, or neither exists.
2. **Chain steps.** ``signup`` continues with ``provision-account``, which
   continues with ``send-welcome-email``, whose output is the chain's output.
3. **Complete atomically.** Each handler writes to the database through
   ``attempt.session``; those writes commit together with the job's completion
   (and the next job), so a crash never leaves "provisioned, but the job still
   pending" or "job done, but the write lost".

Use it from code as well::

    from queuert_sa.demo import run_demo
    chain = run_demo("demo.db")
    print(chain.output)   # {"sent_to": "ada@example.com", "message_id": "..."}
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from sqlalchemy import DateTime, Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import queuert_sa as q

__all__ = [
    "DEADLINE",
    "Account",
    "AccountIn",
    "Base",
    "WelcomeOut",
    "build_worker",
    "job_types",
    "provision_account",
    "run_demo",
    "send_welcome_email",
    "signup",
    "wait_for_chain",
]

#: How long :func:`run_demo` waits for the chain before giving up.
DEADLINE = dt.timedelta(seconds=30)


# --- 1. The application's own model ---------------------------------------------
#
# An ordinary SQLAlchemy model with its own DeclarativeBase and table; queuert's
# tables live on ``queuert_sa.metadata`` next to it in the same database.


class Base(DeclarativeBase):
    pass


class Account(Base):
    """A customer account; the handlers fill in the last two columns."""

    __tablename__ = "demo_account"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(100))
    provisioned_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    welcome_message_id: Mapped[str | None] = mapped_column(String(64))


# --- 2. Job types: what each step takes and returns -------------------------------
#
# Types refer to their successors by name; the registry checks the names when a
# ``Queuert`` is built, so a typo fails at start-up.


class AccountIn(TypedDict):
    account_id: int


class WelcomeOut(TypedDict):
    sent_to: str
    message_id: str


job_types = q.JobTypes()
signup = job_types.entry("signup", input=AccountIn, continues_with=["provision-account"])
provision_account = job_types.define(
    "provision-account", input=AccountIn, continues_with=["send-welcome-email"]
)
send_welcome_email = job_types.define("send-welcome-email", input=AccountIn, output=WelcomeOut)


# --- 3. Handlers: one per type, each in its attempt's transaction -----------------


def build_worker(queuert: q.Queuert, *, out: Callable[[str], None] = print) -> q.Worker:
    """A worker with the three demo handlers; each step reports through ``out``.

    The reports are registered with :func:`queuert_sa.hooks.on_commit`, so a
    step is printed only once its transaction has committed: an attempt that
    fails and is retried prints nothing.
    """
    worker = queuert.worker(
        poll_interval=dt.timedelta(seconds=1),
        backoff=q.Backoff(initial=dt.timedelta(seconds=1), maximum=dt.timedelta(seconds=5)),
    )

    def report(attempt: q.Attempt[Any, Any], line: str) -> None:
        q.hooks.on_commit(attempt.session, lambda: out(line))

    @worker.handler(signup)
    def handle_signup(attempt: q.Attempt[AccountIn, None]) -> q.Outcome:
        account = attempt.session.get_one(Account, attempt.input["account_id"])
        account.email = account.email.strip().lower()
        report(attempt, f"[1/3] signup: account {account.id} ({account.email}) signed up")
        return attempt.continue_with(provision_account, {"account_id": account.id})

    @worker.handler(provision_account)
    def handle_provision(attempt: q.Attempt[AccountIn, None]) -> q.Outcome:
        account = attempt.session.get_one(Account, attempt.input["account_id"])
        # Commits with this job's completion and the next job, or not at all.
        account.provisioned_at = dt.datetime.now(dt.UTC)
        report(attempt, f"[2/3] provision-account: account {account.id} provisioned")
        return attempt.continue_with(send_welcome_email, {"account_id": account.id})

    @worker.handler(send_welcome_email)
    def handle_welcome(attempt: q.Attempt[AccountIn, WelcomeOut]) -> q.Outcome:
        account = attempt.session.get_one(Account, attempt.input["account_id"])
        # A real mailer would get the job id as its idempotency key, so a retry
        # after a crash between "sent" and "committed" does not send twice.
        message_id = f"msg-{attempt.job.id.hex[-12:]}"
        account.welcome_message_id = message_id
        report(
            attempt,
            f"[3/3] send-welcome-email: sent to {account.email} (message id {message_id})",
        )
        return attempt.complete({"sent_to": account.email, "message_id": message_id})

    return worker


# --- 4. Waiting for a chain ------------------------------------------------------


def wait_for_chain(
    queuert: q.Queuert, chain_id: uuid.UUID, *, timeout: dt.timedelta = DEADLINE
) -> q.Chain[Any, Any]:
    """Return the chain once it is completed; ``TimeoutError`` after ``timeout``.

    The chain-completed notification wakes us as soon as the last step
    commits; notifications are hints, so the database is checked as well
    (every half second at the latest).
    """
    completed = threading.Event()
    subscription = queuert.notify.listen_chain_completed(chain_id, lambda _id: completed.set())
    try:
        deadline = time.monotonic() + timeout.total_seconds()
        while True:
            chain = queuert.get_chain(chain_id)
            if chain.is_completed:
                return chain
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                job = queuert.get_job(chain.current_job_id)
                last_error = (job.last_attempt_error or "none").strip().splitlines()[-1]
                raise TimeoutError(
                    f"chain {chain_id} did not complete within {timeout.total_seconds():g} s: "
                    f"its current job is {job.type_name!r} ({job.status}, attempt "
                    f"{job.attempt}); last error: {last_error}"
                )
            completed.wait(min(remaining, 0.5))
    finally:
        subscription.close()


# --- 5. The whole demo -------------------------------------------------------------


def run_demo(
    db_path: str | None = None, *, out: Callable[[str], None] = print
) -> q.Chain[Any, Any]:
    """Run the sign-up chain on a SQLite file and return the completed chain.

    Args:
        db_path: The SQLite file to use (created if missing). Defaults to
            ``demo.db`` in a new temporary directory, which is left in place so
            the tables can be inspected afterwards.
        out: Where progress lines go. Defaults to ``print``; called from the
            worker's thread for the steps.

    Raises:
        TimeoutError: The chain did not complete within :data:`DEADLINE`.
    """
    if db_path is None:
        db_path = str(Path(tempfile.mkdtemp(prefix="queuert-sa-demo-")) / "demo.db")
    out(f"database: {db_path}")

    engine = create_engine(f"sqlite:///{db_path}")
    # Building the client first prepares the engine (SQLite: WAL, real
    # transactions) before any connection is opened.
    queuert = q.Queuert(engine, job_types)
    worker = build_worker(queuert, out=out)
    try:
        # Scripts and tests create tables directly; production uses Alembic.
        q.metadata.create_all(engine)
        Base.metadata.create_all(engine)

        # The business transaction: the account and the chain commit together.
        with Session(engine) as session, session.begin():
            account = Account(email="  Ada@Example.com ", name="Ada Lovelace")
            session.add(account)
            session.flush()  # assigns account.id
            account_id = account.id
            chain = queuert.start_chain(session, signup, {"account_id": account_id})
        out(f"started chain {chain.id} ({signup.name}) for account {account_id}")

        worker.start()
        try:
            done = wait_for_chain(queuert, chain.id)
        finally:
            worker.stop()

        with Session(engine) as session:
            stored = session.get_one(Account, account_id)
            out(
                f"account {stored.id}: email={stored.email} "
                f"provisioned_at={stored.provisioned_at} "
                f"welcome_message_id={stored.welcome_message_id}"
            )
        out(f"chain {done.id}: status={done.status} output={json.dumps(done.output)}")
        return done
    finally:
        engine.dispose()
