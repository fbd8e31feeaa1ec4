"""Every relative link in the README and the guides under docs/ points at a file that exists, and every
``#anchor`` at a heading of the file it names (GitHub's heading ids). Links to web addresses are not fetched."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

#: Guides written on another branch and linked from here already: a link to one passes while the file is absent,
#: and is checked like any other once it exists. Empty this once they have landed.
PENDING: set[Path] = set()
#: ``[text](target)`` and ``![alt](target)``; the target ends at whitespace (a title may follow) or ``)``.
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """The file's lines outside fenced code blocks, numbered from 1, with inline code spans blanked (a link-like
    text inside backticks is code, not a link)."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, re.sub(r"`[^`]*`", lambda m: " " * len(m.group()), line)))
    return lines


def heading_ids(path: Path) -> set[str]:
    """The ids GitHub gives the headings of a Markdown file: lower case, punctuation dropped (letters, digits,
    ``_`` and ``-`` kept), spaces to ``-``, and ``-1``, ``-2``... on repeats."""
    ids: set[str] = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if not match:
            continue
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # a link in a heading keeps its text
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        unique, repeat = slug, 0
        while unique in ids:
            repeat += 1
            unique = f"{slug}-{repeat}"
        ids.add(unique)
    return ids


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of ``path`` whose file or anchor does not exist, as ``file:line: target (why)`` with
    ``file`` relative to ``root``."""
    problems = []
    for number, line in _prose_lines(path):
        for match in LINK.finditer(line):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)}:{number}: {target}"
            if not resolved.exists():
                if resolved in PENDING:
                    continue
                problems.append(f"{where} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in heading_ids(resolved):
                problems.append(f"{where} (no heading with id {anchor!r} in {resolved.name})")
    return problems


def test_the_documents_are_found():
    names = {str(p.relative_to(ROOT)) for p in DOCUMENTS}
    assert "README.md" in names and "docs/contracts.md" in names


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_a_broken_link_and_a_broken_anchor_are_reported(tmp_path):
    (tmp_path / "guide.md").write_text("# A guide — with `code`\n\n## Same\n\n## Same\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](guide.md#a-guide--with-code) [ok](guide.md#same-1) [web](https://example.org/x.md)\n"
        "`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n"
        "[gone](missing.md) ![img](missing.png) [bad](guide.md#nope) [self](#nope)\n",
        encoding="utf-8",
    )
    assert [p.split(": ", 1)[1] for p in broken_links(page, tmp_path)] == [
        "missing.md (no such file)",
        "missing.png (no such file)",
        "guide.md#nope (no heading with id 'nope' in guide.md)",
        "#nope (no heading with id 'nope' in page.md)",
    ]
