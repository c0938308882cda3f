"""The docs send readers only to places inside the repository: every relative link of
every Markdown file, every `#anchor` into a Markdown file, and every file path written
in backticks resolves. The contract is in the repository, never elsewhere."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\s]+)`")
# A backticked word is taken for a path when it names a file of one of these kinds, or
# starts with one of the repository's top-level folders.
PATH_SUFFIXES = (".md", ".py", ".ts", ".mjs", ".js", ".json", ".yaml", ".yml", ".sql", ".tf")
SKIP_PREFIXES = ("http://", "https://", "mailto:", "ws://", "wss://")
# Files a reader makes outside the repository, named as examples.
EXAMPLES = {"overlays/prod/kustomization.yaml"}


def markdown_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).exists()]


def top_folders() -> set[str]:
    return {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def text_outside_code_blocks(path: Path) -> str:
    kept, in_code = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code:
            kept.append(line)
    return "\n".join(kept)


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in LINK.findall(text_outside_code_blocks(path)):
        if target.startswith(SKIP_PREFIXES):
            continue
        file_part, _, anchor = target.partition("#")
        where = (path.parent / file_part).resolve() if file_part else path
        if not where.exists():
            problems.append(f"{target}: no such file")
        elif ROOT not in where.parents and where != ROOT:
            problems.append(f"{target}: outside the repository")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            problems.append(f"{target}: no heading #{anchor}")
    return problems


def broken_paths(path: Path, folders: set[str]) -> list[str]:
    problems = []
    for word in CODE.findall(text_outside_code_blocks(path)):
        word = re.sub(r":\d+$", "", word.rstrip(".,:;"))  # `relay/hub.py:173`
        if any(c in word for c in "{}<>*…|=$") or word.startswith(("/", *SKIP_PREFIXES)):
            continue  # a template, or a URL path such as `/openapi.json`
        first = word.split("/", 1)[0]
        # `relay/send` is an endpoint, `relay/` and `relay/hub.py` are places.
        looks_like_path = "/" in word and (
            word.endswith(PATH_SUFFIXES) or (first in folders and word.endswith("/"))
        )
        if not looks_like_path or word in EXAMPLES:
            continue
        candidates = [ROOT / word, path.parent / word]
        if not any(c.exists() for c in candidates):
            problems.append(f"`{word}`: no such file or folder")
    return problems


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_reference_resolves(doc: Path) -> None:
    problems = broken_links(doc) + broken_paths(doc, top_folders())
    assert not problems, f"{doc.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_no_document_outside_the_repository_is_cited() -> None:
    """The contract is docs/CONTRACT.md: no file names a specification that is not here."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    pattern = re.compile(r"\bSPEC(\.md|\s+(section\s+)?\d)")
    offenders = []
    for name in listed:
        path = ROOT / name
        if name.startswith("bench/results/") or not path.is_file():
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        offenders += [
            f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)
        ]
    assert not offenders, offenders
