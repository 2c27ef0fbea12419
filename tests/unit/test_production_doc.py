"""docs/production.md is a checklist of links: every one must lead somewhere real."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "production.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(markdown: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", markdown.read_text(), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def links() -> list[str]:
    return [link for link in LINK.findall(PAGE.read_text()) if "://" not in link]


def test_the_page_covers_the_checklist() -> None:
    """Each topic the page promises has its section."""
    sections = anchors(PAGE)
    for topic in ("secrets", "sizing", "probes-and-grace-periods", "alerts", "backups",
                  "upgrade-order", "day-one-what-to-watch"):  # fmt: skip
        assert topic in sections
    assert any(section.startswith("broker") for section in sections)


@pytest.mark.parametrize("link", links())
def test_every_link_leads_to_a_file_and_heading(link: str) -> None:
    """The file exists and, when the link names a heading, the file has it."""
    target, _, anchor = link.partition("#")
    path = (PAGE.parent / target).resolve() if target else PAGE
    assert path.is_file(), link
    if anchor:
        assert anchor in anchors(path), link
