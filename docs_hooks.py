"""Build helpers of the documentation site (``mkdocs.yml`` loads this file twice).

As an MkDocs hook: the guides link to files of the repository outside
``docs/`` (``[examples/quickstart.py](../examples/quickstart.py)``), which
read well on a code host but are outside the site. Each linked file (or
directory) gets a generated page under ``source/`` showing it, and the link
is pointed there; a link to a file that does not exist is left alone, so that
``mkdocs build --strict`` fails on it.

As a griffe extension (``SphinxRoles``): docstrings name other objects in
Sphinx roles (``:class:`Queuert```, ``:meth:`start_chain```), which pyright
and editors show as they are. On the site they become cross-references, so an
unknown name fails the strict build too.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from griffe import Docstring, Extension, Object
from mkdocs.structure.files import File, Files, InclusionLevel

ROOT = Path(__file__).resolve().parent
SOURCE_DIR = "source"

_OUTSIDE_LINK = re.compile(r"\]\(((?:\.\./)+[^)\s#]+)(#[^)\s]*)?\)")
_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):`(~?)([\w.]+)`")
_LANGUAGES = {".py": "python", ".ini": "ini", ".mako": "mako", ".toml": "toml"}


def _repo_path(page_uri: str, link: str) -> str | None:
    """The repository path a docs page's relative link points to, if outside docs/."""
    joined = posixpath.normpath(posixpath.join("docs", posixpath.dirname(page_uri), link))
    if joined.startswith(("docs/", "../")) or not (ROOT / joined).exists():
        return None
    return joined


def _shown_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.stat().st_size
    )


def _source_page(repo_path: str) -> str:
    parts = [f"# `{repo_path}`\n"]
    for file in _shown_files(ROOT / repo_path):
        language = _LANGUAGES.get(file.suffix, "text")
        name = file.relative_to(ROOT).as_posix()
        parts.append(f'```{language} title="{name}"\n{file.read_text().rstrip()}\n```\n')
    return "\n".join(parts)


def _linked_paths(files: Files) -> set[str]:
    found: set[str] = set()
    for file in files.documentation_pages():
        text = Path(file.abs_src_path or "").read_text()
        for match in _OUTSIDE_LINK.finditer(text):
            repo_path = _repo_path(file.src_uri, match.group(1))
            if repo_path is not None:
                found.add(repo_path)
    return found


def on_files(files: Files, config: Any) -> Files:
    for repo_path in sorted(_linked_paths(files)):
        files.append(
            File.generated(
                config,
                f"{SOURCE_DIR}/{repo_path}.md",
                content=_source_page(repo_path),
                inclusion=InclusionLevel.NOT_IN_NAV,
            )
        )
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    page_uri: str = page.file.src_uri

    def point_at_source_page(match: re.Match[str]) -> str:
        repo_path = _repo_path(page_uri, match.group(1))
        if repo_path is None:
            return match.group(0)
        target = posixpath.relpath(
            f"{SOURCE_DIR}/{repo_path}.md", posixpath.dirname(page_uri) or "."
        )
        return f"]({target}{match.group(2) or ''})"

    return _OUTSIDE_LINK.sub(point_at_source_page, markdown)


def _read_comment_docstring(attribute: Object) -> None:
    """Give a module attribute the ``#:`` comment above it as its docstring (as Sphinx does)."""
    if attribute.lineno is None or not isinstance(attribute.filepath, Path):
        return
    lines = attribute.filepath.read_text().splitlines()[: attribute.lineno - 1]
    comment: list[str] = []
    while lines and lines[-1].lstrip().startswith("#:"):
        comment.insert(0, lines.pop().lstrip()[2:].strip())
    if comment:
        attribute.docstring = Docstring(
            "\n".join(comment), lineno=attribute.lineno, parent=attribute
        )


class SphinxRoles(Extension):
    """Turn ``:class:`X``` in docstrings into the cross-reference ``[`X`][X]``.

    Also reads the ``#:`` comment above a module attribute as its docstring.
    """

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is None and obj.is_attribute:
            _read_comment_docstring(obj)
        if obj.docstring is None:
            return

        def cross_reference(match: re.Match[str]) -> str:
            short, target = match.group(1), match.group(2)
            title = target.rsplit(".", 1)[-1] if short else target
            return f"[`{title}`][{target}]"

        obj.docstring.value = _ROLE.sub(cross_reference, obj.docstring.value)
