"""The documentation site's sources, checked without MkDocs (no database).

The site itself is built by ``.ci/run`` with ``mkdocs build --strict`` (broken
links, anchors and docstring references fail there); these are the checks a
developer without the ``docs`` extra gets from ``pytest``.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from types import ModuleType

import queuert_sa as q

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_EXTRAS = re.compile(r"queuert_sa\[([\w,\s-]+)\]|pip install -e '?\.\[([\w,\s-]+)\]")


def _nav_pages() -> set[str]:
    # mkdocs.yml's nav entries are "- page.md" or "- Title: page.md"
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:") :]
    return set(re.findall(r"^\s*-\s+(?:[^:\n]+:\s+)?([\w./-]+\.md)\s*$", nav, re.M))


def test_every_docs_page_is_in_the_site_nav() -> None:
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    nav = _nav_pages()
    assert sorted(pages - nav) == [], "add these pages to nav in mkdocs.yml"
    assert sorted(nav - pages) == [], "nav in mkdocs.yml names pages that do not exist"


def test_install_commands_name_extras_that_exist() -> None:
    """Every ``pip install 'queuert_sa[x]'`` in the docs and examples installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = set(project["optional-dependencies"])
    sources = [ROOT / "README.md", *DOCS.rglob("*.md"), *(ROOT / "examples").glob("*.py")]
    named: dict[str, set[str]] = {}
    for source in sources:
        for match in _EXTRAS.finditer(source.read_text()):
            for extra in (match.group(1) or match.group(2)).split(","):
                named.setdefault(extra.strip(), set()).add(source.relative_to(ROOT).as_posix())
    assert "postgres" in named  # the pattern still finds the documented commands
    unknown = {extra: sorted(where) for extra, where in named.items() if extra not in extras}
    assert unknown == {}


def test_every_public_name_is_in_the_api_reference() -> None:
    """A name exported by ``queuert_sa`` has an entry (``::: queuert_sa.Name``) in docs/reference/."""
    reference = "\n".join(p.read_text() for p in (DOCS / "reference").glob("*.md"))
    documented_modules = set(re.findall(r"^::: (queuert_sa(?:\.\w+)*)\s*$", reference, re.M))
    covered = {
        name
        for module in documented_modules - {"queuert_sa"}
        if (ROOT / module.replace(".", "/")).with_suffix(".py").is_file()
        or (ROOT / module.replace(".", "/") / "__init__.py").is_file()  # a module, not a class
        for name in getattr(importlib.import_module(module), "__all__", ())
    }
    missing = [
        name
        for name in q.__all__
        if f"queuert_sa.{name}" not in documented_modules
        and name not in covered
        and not isinstance(getattr(q, name), ModuleType)
    ]
    assert missing == [], "add them to docs/reference/queuert_sa.md"


def test_ci_runs_the_readmes_test_command_and_fails_when_it_fails() -> None:
    """``.ci/run`` calls the README's test command verbatim, and a failing suite ends the run
    red: ``set -e`` alone does not stop at a failure inside an ``&&`` list."""
    readme = (ROOT / "README.md").read_text()
    command = next(
        line
        for line in readme.splitlines()
        if line.startswith("python3 -m venv") and "pytest" in line
    )
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(command))
    step = " ".join(line.rstrip("\\").strip() for line in lines[at : at + 2])
    assert re.fullmatch(re.escape(command) + r" \|\| \{ .*exit 1; \}", step), step
