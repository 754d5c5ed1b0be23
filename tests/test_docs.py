"""The README and docs/*.md: the README stays an introduction, and what the docs cite exists.

Every `minidept/...` path that README.md or a page of docs/ names must be in the repository,
and every relative link must reach a file (and, with `#anchor`, one of its headings), so a
move of code or a renamed section shows up here instead of in a reader's dead end.
"""

import itertools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

PATH = re.compile(r"minidept/[A-Za-z0-9_.{},/*-]*")
CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def expand(path: str) -> list[str]:
    """`minidept/{a,b}.py` -> [`minidept/a.py`, `minidept/b.py`]."""
    parts = re.split(r"\{([^{}]*)\}", path)
    choices = [part.split(",") if i % 2 else [part] for i, part in enumerate(parts)]
    return ["".join(combination) for combination in itertools.product(*choices)]


def cited_paths(text: str) -> set[str]:
    """The `minidept/...` paths a page names: inside `code` anywhere, and outside it where the
    token is plainly a path (ends in `.py` or `/`); "minidept/peer" in a ratio is no path."""
    found = set()
    for span in CODE.findall(text):
        found.update(match.rstrip(".,:;") for match in PATH.findall(span))
    for match in PATH.findall(CODE.sub("", text)):
        match = match.rstrip(".,:;")
        if match.endswith((".py", "/")):
            found.add(match)
    return {path for cited in found for path in expand(cited)}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.lstrip("#").strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {slug(line) for line in text.splitlines() if line.startswith("#")}


def test_readme_is_an_introduction_of_at_most_200_lines():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the manual belongs in docs/usage.md"


def test_the_path_finder_finds_paths_and_only_paths():
    text = ("see `minidept/methods.py`, minidept/loop.py and `minidept/{run,tools}/` or minidept/tools/bench/; "
            "time minidept/peer <= 0.9")
    assert cited_paths(text) == {"minidept/methods.py", "minidept/loop.py", "minidept/run/", "minidept/tools/",
                                 "minidept/tools/bench/"}
    assert "minidept/methods.py" in cited_paths(README.read_text(encoding="utf-8"))
    assert slug("## 8. Where minidept differs, `and why`") == "8-where-minidept-differs-and-why"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_cited_minidept_path_exists(page):
    missing = sorted(path for path in cited_paths(page.read_text(encoding="utf-8"))
                     if "*" not in path and not (ROOT / path).exists())
    assert not missing, f"{page.name} cites paths that are not in the repository: {missing}"


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` whose file, or whose `#anchor` in a markdown file, does not exist."""
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):          # https:, mailto: ...
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
            broken.append(target)
    return broken


def test_the_link_checker_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## The run folder\n")
    page = tmp_path / "page.md"
    page.write_text("[a](other.md#the-run-folder) [b](other.md#gone) [c](missing.md) [d](https://x.org/y) "
                    "[e](#here)\n\n## Here\n")
    assert broken_links(page) == ["other.md#gone", "missing.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_reaches_a_file_and_heading(page):
    broken = broken_links(page)
    assert not broken, f"{page.name} links to missing files or headings: {broken}"
