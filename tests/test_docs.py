"""The README and docs/: every relative link points at a file of the repository, and the README's verb
table names every verb of `poetry-sft`. Reads Markdown only: offline, no model, a fraction of a second."""

import re
from pathlib import Path

import pytest

from poetry_sft.cli import VERBS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows) or ")"
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(page: Path) -> list[str]:
    """The link targets of a Markdown page, outside code blocks and code spans."""
    text = INLINE_CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return LINK.findall(text)


def is_relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) and not target.startswith("#")


def verb_table(text: str) -> list[str]:
    """The first column of the table whose header starts with `| verb |`."""
    table = re.search(r"^\| verb \|.*\n((?:\|.*\n?)*)", text, re.MULTILINE)
    return re.findall(r"^\| `([^`]+)` \|", table.group(1), re.MULTILINE) if table else []


def test_the_finders_find_links_and_verbs_and_skip_code(tmp_path: Path):
    sample = tmp_path / "sample.md"
    sample.write_text('[a](docs/a.md) ![b](b.png "t") `[c](c.md)`\n```\n[d](d.md)\n```\n[e](http://x)\n')
    assert links(sample) == ["docs/a.md", "b.png", "http://x"]
    other_table = "| make | x |\n|---|---|\n| `make` | y |\n\n"
    table = other_table + "| verb | what |\n|---|---|\n| `train` | t |\n| `plan` | p |\n"
    assert verb_table(table) == ["train", "plan"]
    assert is_relative("docs/a.md#part") and not is_relative("https://x") and not is_relative("#part")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve_to_files_of_the_repository(page: Path):
    broken = []
    for target in filter(is_relative, links(page)):
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists() or ROOT not in path.parents:
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to nothing in the repository: {broken}"


def test_every_docs_page_links_back_to_the_readme():
    for page in PAGES[1:]:
        assert "../README.md" in links(page), f"{page.relative_to(ROOT)} has no link back to the README"


def test_the_readme_links_every_docs_page():
    linked = {(ROOT / target.split("#", 1)[0]).resolve() for target in links(README) if is_relative(target)}
    unlinked = [str(page.relative_to(ROOT)) for page in PAGES[1:] if page.resolve() not in linked]
    assert not unlinked, f"the README's 'Where next' should link: {unlinked}"


def test_the_readme_verb_table_names_every_verb():
    rows = verb_table(README.read_text(encoding="utf-8"))
    missing = [verb for verb in VERBS if verb not in rows]
    assert not missing, f"add a row to the README's verb table for: {missing}"
    unknown = [verb for verb in rows if verb not in VERBS]
    assert not unknown, f"the README's verb table names verbs poetry-sft does not have: {unknown}"
