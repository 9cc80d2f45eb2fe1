"""The docs (README.md, docs/*.md, deploy/README.md) against the repository (pure, no JVM, no broker):
every relative link points to a file that exists, and to a heading of it when it names an anchor; every
`riskstream` command the docs show is a subcommand of the CLI, with flags it accepts; every `make` target
they show is in the Makefile."""

from __future__ import annotations

import argparse
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED = [*DOCS, ROOT / "deploy" / "README.md"]

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`([^`]+)`")
COMMAND = re.compile(r"(?:^|[\s/(])riskstream\s+([a-z][a-z-]*)(.*)", re.S)
MAKE = re.compile(r"(?:^|\s)make\s+([a-z][\w-]*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def split(path: Path) -> tuple[str, list[str]]:
    """The page's prose (fenced blocks blanked out) and the lines of its fenced blocks."""
    prose, code, fenced = [], [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            prose.append("")
            continue
        (code if fenced else prose).append(line)
        if fenced:
            prose.append("")
    assert not fenced, f"{path.relative_to(ROOT)}: a fenced block is never closed"
    return "\n".join(prose), code


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    prose, _ = split(path)
    seen: dict[str, int] = {}
    out = set()
    for line in prose.splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        s = slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return frozenset(out)


def code_texts(path: Path) -> list[str]:
    """Every inline code span (it may wrap a line) and every line of a fenced block, comments cut off."""
    prose, code = split(path)
    texts = [m.group(1).replace("\\|", "|") for m in CODE_SPAN.finditer(prose)]
    texts += [line.split(" #", 1)[0] for line in code if not line.lstrip().startswith("#")]
    return texts


@pytest.mark.parametrize("page", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    prose, _ = split(page)
    prose = CODE_SPAN.sub("", prose)
    broken = []
    for target in LINK.findall(prose):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
        elif not str(dest).startswith(str(ROOT)):
            broken.append(f"{target}: outside the repository")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme_and_the_index():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    for page in DOCS[1:]:
        assert f"(docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
        if page.name != "README.md":
            assert f"({page.name}" in index, f"docs/README.md does not link {page.name}"


@lru_cache(maxsize=None)
def subcommands() -> dict[str, frozenset[str]]:
    from riskstream.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: frozenset(p._option_string_actions) for name, p in sub.choices.items()}


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_riskstream_commands_and_flags_exist(page):
    wrong = []
    for text in code_texts(page):
        for m in COMMAND.finditer(text):
            name, rest = m.group(1), m.group(2)
            if name not in subcommands():
                wrong.append(f"`riskstream {name}` is not a subcommand")
                continue
            rest = rest.split("riskstream ", 1)[0]
            wrong += [f"`riskstream {name}` has no flag {f}" for f in FLAG.findall(rest)
                      if f not in subcommands()[name]]
    assert not wrong, f"{page.relative_to(ROOT)}: " + "; ".join(wrong)


def test_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", makefile, re.M))
    named = {(page.name, t) for page in DOCS for text in code_texts(page) for t in MAKE.findall(text)}
    assert {t for _, t in named} >= {"demo", "test"}, "the README's two commands are gone"
    missing = sorted(f"{p}: make {t}" for p, t in named if t not in targets)
    assert not missing, f"not Makefile targets: {missing}"
