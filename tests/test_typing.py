"""The static typing contract: pyright and mypy, both strict, over ``tests/typing/case_*.py``.

Each case file is ordinary (never executed) Python using the public API. A line
ending in ``# expect-error`` must get at least one error from *each* checker;
every other line must get none from either. The checkers run once each, in
parallel, over all case files; see docs/typing.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES_DIR = ROOT / "tests" / "typing"
CASE_FILES = sorted(CASES_DIR.glob("case_*.py"))
CHECKERS = ("pyright", "mypy")
PYTHON_VERSION = "3.11"
TIMEOUT_S = 240

MARKER = re.compile(r"#\s*expect-error\s*")
# Comments that would hide a checker's errors have no place in the cases.
SUPPRESSION = re.compile(r"#.*\b(type|pyright|mypy)\s*:\s*ignore", re.IGNORECASE)
MYPY_LINE = re.compile(
    r"^(?P<path>.+?):(?P<line>\d+): (?P<severity>error|warning|note): (?P<msg>.*)$"
)

#: (file, 1-based line) -> the checker's messages on that line.
Diagnostics = dict[tuple[Path, int], list[str]]


@dataclass
class CheckerRun:
    name: str
    diagnostics: Diagnostics = field(default_factory=dict[tuple[Path, int], list[str]])
    #: Output that is not an error on a case file line: crashes, config trouble, ...
    problems: list[str] = field(default_factory=list[str])

    def add(self, path: Path, line: int, message: str) -> None:
        path = path.resolve()
        if path in CASE_FILES:
            self.diagnostics.setdefault((path, line), []).append(message)
        else:
            self.problems.append(f"{path}:{line}: {message}")


@dataclass
class CaseFile:
    path: Path
    lines: list[str]
    expected: set[int]
    malformed: list[str]


def read_case(path: Path) -> CaseFile:
    """The lines marked ``# expect-error`` (found as comments, not as text in strings)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    expected: set[int] = set()
    malformed: list[str] = []
    with tokenize.open(path) as source:
        for token in tokenize.generate_tokens(source.readline):
            if token.type != tokenize.COMMENT:
                continue
            row = token.start[0]
            where = f"{path.name}:{row}"
            if SUPPRESSION.search(token.string):
                malformed.append(f"{where}: suppression comments are not allowed in cases")
            if "expect-error" not in token.string:
                continue
            if not MARKER.fullmatch(token.string):
                malformed.append(f"{where}: write the marker exactly as '# expect-error'")
            elif not token.line[: token.start[1]].strip():
                malformed.append(f"{where}: '# expect-error' must end the line it marks")
            else:
                expected.add(row)
    return CaseFile(path, lines, expected, malformed)


def compare(case: CaseFile, runs: Mapping[str, Diagnostics]) -> list[str]:
    """Failures for one case file: marked lines without an error, errors on unmarked lines."""
    failures = list(case.malformed)
    for checker, diagnostics in runs.items():
        for row in sorted(case.expected):
            if not diagnostics.get((case.path, row)):
                failures.append(
                    f"{case.path.name}:{row}: expected an error from {checker}, got none\n"
                    f"    {case.lines[row - 1].strip()}"
                )
        for (path, row), messages in sorted(diagnostics.items()):
            if path != case.path or row in case.expected:
                continue
            shown = "\n".join(f"    {checker}: {message}" for message in messages)
            failures.append(
                f"{case.path.name}:{row}: unexpected {checker} error\n"
                f"    {case.lines[row - 1].strip()}\n{shown}"
            )
    return failures


def find_tool(name: str) -> str:
    """The checker next to this interpreter (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed: the typing tests need pyright and mypy "
            "(dev dependencies: pip install -e '.[dev]').",
            pytrace=False,
        )
    return found


def pyright_command(tmp: Path) -> list[str]:
    config = tmp / "pyrightconfig.json"
    config.write_text(
        json.dumps(
            {
                "typeCheckingMode": "strict",
                "pythonVersion": PYTHON_VERSION,
                # This checkout's package, whatever is installed.
                "extraPaths": [str(ROOT)],
            }
        ),
        encoding="utf-8",
    )
    return [
        find_tool("pyright"),
        "--outputjson",
        "--pythonpath",
        sys.executable,
        "--project",
        str(config),
        *map(str, CASE_FILES),
    ]


def mypy_command(tmp: Path) -> list[str]:
    # An empty config: the project's [tool.mypy] packages= must not apply here.
    config = tmp / "mypy.ini"
    config.write_text("[mypy]\n", encoding="utf-8")
    return [
        find_tool("mypy"),
        "--config-file",
        str(config),
        "--strict",
        "--python-version",
        PYTHON_VERSION,
        "--python-executable",
        sys.executable,
        "--cache-dir",
        str(tmp / "mypy_cache"),
        # queuert_sa is checked by the project's own mypy run; report the cases only.
        "--follow-imports",
        "silent",
        "--show-error-codes",
        "--show-absolute-path",
        "--no-error-summary",
        "--no-pretty",
        "--no-color-output",
        *map(str, CASE_FILES),
    ]


def parse_pyright(stdout: str, returncode: int) -> CheckerRun:
    run = CheckerRun("pyright")
    if returncode not in (0, 1):
        run.problems.append(f"pyright exited with {returncode}:\n{stdout}")
        return run
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        run.problems.append(f"pyright printed no JSON report:\n{stdout}")
        return run
    for diagnostic in report.get("generalDiagnostics", []):
        if diagnostic.get("severity") not in ("error", "warning"):
            continue  # "information", e.g. a reveal_type left in a case
        message = diagnostic.get("message", "")
        if diagnostic.get("rule"):
            message += f" ({diagnostic['rule']})"
        if "file" not in diagnostic or "range" not in diagnostic:
            run.problems.append(message)
            continue
        run.add(Path(diagnostic["file"]), diagnostic["range"]["start"]["line"] + 1, message)
    analyzed = report.get("summary", {}).get("filesAnalyzed")
    if analyzed != len(CASE_FILES):
        run.problems.append(f"pyright analyzed {analyzed} files, expected {len(CASE_FILES)}")
    return run


def parse_mypy(stdout: str, returncode: int) -> CheckerRun:
    run = CheckerRun("mypy")
    if returncode not in (0, 1):
        run.problems.append(f"mypy exited with {returncode}:\n{stdout}")
        return run
    for text in stdout.splitlines():
        match = MYPY_LINE.match(text)
        if match is None:
            if text.strip():
                run.problems.append(f"unrecognised mypy output: {text}")
        elif match["severity"] != "note":  # notes only elaborate on an error
            run.add(Path(match["path"]), int(match["line"]), match["msg"])
    return run


@pytest.fixture(scope="module")
def checker_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CheckerRun]:
    tmp = tmp_path_factory.mktemp("typing")
    commands = {"pyright": pyright_command(tmp), "mypy": mypy_command(tmp)}
    env = {**os.environ, "MYPYPATH": str(ROOT), "PYRIGHT_PYTHON_IGNORE_WARNINGS": "1"}
    procs = {
        name: subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, command in commands.items()
    }
    runs: dict[str, CheckerRun] = {}
    try:
        for name, proc in procs.items():
            try:
                stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} did not finish within {TIMEOUT_S} s", pytrace=False)
            parse = parse_pyright if name == "pyright" else parse_mypy
            runs[name] = parse(stdout, proc.returncode)
            if stderr.strip() and runs[name].problems:
                runs[name].problems.append(f"{name} stderr:\n{stderr}")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return runs


def test_there_are_cases() -> None:
    assert CASE_FILES, f"no case_*.py files in {CASES_DIR}"
    assert any(read_case(path).expected for path in CASE_FILES)


@pytest.mark.parametrize("checker", CHECKERS)
def test_checker_ran_cleanly(checker_runs: dict[str, CheckerRun], checker: str) -> None:
    problems = checker_runs[checker].problems
    assert not problems, f"{checker} did not run cleanly:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", CASE_FILES, ids=[path.name for path in CASE_FILES])
def test_case(checker_runs: dict[str, CheckerRun], path: Path) -> None:
    case = read_case(path)
    failures = compare(case, {name: run.diagnostics for name, run in checker_runs.items()})
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)


def test_compare_reports_missing_and_unexpected_errors(tmp_path: Path) -> None:
    """The comparison itself: a vanished expected error and a stray error both fail."""
    path = tmp_path / "case_demo.py"
    path.write_text(
        "a: int = 1\n"
        "b: int = 'x'  # expect-error\n"
        "c = '# expect-error'  # a marker inside a string does not count\n"
        "d: int = 2  #expect-error: extra\n",
        encoding="utf-8",
    )
    case = read_case(path)
    assert case.expected == {2}
    assert case.malformed == ["case_demo.py:4: write the marker exactly as '# expect-error'"]
    both = {"pyright": {(path, 2): ["bad"]}, "mypy": {(path, 2): ["bad"]}}
    assert compare(case, both) == case.malformed
    vanished = {"pyright": {(path, 2): ["bad"]}, "mypy": {}}
    assert any("expected an error from mypy" in f for f in compare(case, vanished))
    stray = {**both, "pyright": {(path, 2): ["bad"], (path, 1): ["stray"]}}
    assert any("unexpected pyright error" in f for f in compare(case, stray))
