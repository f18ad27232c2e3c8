"""The README and the docs pages stay true: every relative link reaches a file (and, for a page,
a heading), every `make` target and `buffered-stream` command they name exists, and the README
stays the short entry point it is meant to be."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from buffered_stream.cli import build_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for heading in re.findall(r"(?m)^#+ (.+)$", page.read_text()):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found


def without_code(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    for target in LINK.findall(without_code(page.read_text())):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page.name}: no heading #{anchor} in {resolved.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_named_exists(page: Path) -> None:
    text = page.read_text()
    makefile = (REPO_ROOT / "Makefile").read_text()
    for target in set(re.findall(r"`make ([a-z][a-z-]*)", text)):
        assert re.search(rf"^{target}:", makefile, re.M), f"{page.name}: make {target} is not a target"
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    for command in set(re.findall(r"`buffered-stream ([a-z][a-z-]*)", text)):
        assert command in subcommands, f"{page.name}: buffered-stream {command} is not a command"


def test_the_readme_is_an_entry_point() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme, f"docs/{page.name} is not linked from the README"
