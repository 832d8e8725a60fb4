"""The staged-payment and approval examples run as documented and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, f"examples/{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_staged_payment_example_charges_once_across_a_retry() -> None:
    out = run_example("staged_payment.py").stdout
    assert "attempt 1 failed: TimeoutError: gateway timed out" in out
    assert "job pending, order status 'charging' (written by prepare, kept)" in out
    assert "order 1: paid, payment id pay_0001_4200" in out
    assert "gateway calls: 2, charges: 1" in out
    assert "completed, output {'order_id': 1, 'payment_id': 'pay_0001_4200'}" in out


def test_approval_example_waits_for_a_person_then_a_worker_finishes() -> None:
    out = run_example("approval.py").stdout
    assert "request 1: waiting for a person (request-refund pending)" in out
    assert "request 1: approved; the worker finished the chain" in out
    assert (
        "request 1: completed at issue-refund, output {'approved': True, 'refund_id': 're_0001'}"
        in out
    )
    assert (
        "request 2: completed at request-refund, output {'approved': False, 'refund_id': None}"
        in out
    )
    assert "completed_by of a step a person completed: None" in out
    assert "second decision refused: JobAlreadyCompletedError" in out
    assert "decisions recorded: 2" in out


def test_examples_leave_no_database_file_behind() -> None:
    # Both use a SQLite file in a temporary directory, not the working directory.
    before = set(ROOT.glob("*.db")) | set((ROOT / "examples").glob("*.db"))
    run_example("staged_payment.py")
    run_example("approval.py")
    after = set(ROOT.glob("*.db")) | set((ROOT / "examples").glob("*.db"))
    assert after == before
