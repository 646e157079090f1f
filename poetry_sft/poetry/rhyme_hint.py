"""The domain half of rhyme-aware prompts: which 韵部 a poem rhymes in, and which characters to name.

A small model cannot learn which characters share a 平水韵 group from a group's name alone (the demo
model trained with 「押一先韵」 in its prompts still rhymed 3% of the time, ../FACTS.md), but it can learn to
end its even lines with characters the prompt lists. So a hint names the group and a few of its characters:
in training the poem's own rhyme characters among others of the group (shuffled, so position says
nothing), at generation a few of the group's commonest rhyme characters. The prompt text itself is
config/templates.py's RHYME_HINT; data/prompts.py puts the two together.

`rhyme_chars.json` holds each level group's commonest rhyme characters in the 321k-poem corpus
(`python -m bench.rhyme_chars` rebuilds it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path

from poetry_sft.poetry.critic import even_line_finals
from poetry_sft.poetry.prosody import _opencc, find_rhyme_group, level_rhyme_groups, rhyme_groups
from poetry_sft.poetry.text import split_lines

RHYME_CHARS_TABLE = Path(__file__).with_name("rhyme_chars.json")
_TONE_PREFIXES = ("上平聲", "下平聲", "上聲", "去聲", "入聲")
COMMON_POOL = 15  # generation lists characters drawn from the group's this-many commonest rhymes
DEFAULT_GROUPS = 10  # a title with no group asked for gets one of the this-many commonest groups


@functools.cache
def common_rhyme_chars(group: str) -> tuple[str, ...]:
    """A level-tone group's rhyme characters, commonest first (simplified, as the corpus writes them)."""
    table = json.loads(RHYME_CHARS_TABLE.read_text(encoding="utf-8"))["groups"]
    return tuple(table.get(group, ()))


def group_label(group: str) -> str:
    """下平聲七陽 -> 七阳: the name a poet uses, in simplified characters."""
    for prefix in _TONE_PREFIXES:
        group = group.removeprefix(prefix)
    return str(_opencc("t2s").convert(group))


@functools.cache
def level_group_labels() -> dict[str, str]:
    """Label -> full group name, for the 30 level-tone groups (一东 -> 上平聲一東)."""
    return {group_label(group): group for group in sorted(level_rhyme_groups())}


def find_level_group(name: str) -> str:
    """The level-tone group a user names (七阳, 阳, 下平聲七陽); ValueError naming the choices for an
    unknown or ambiguous name, and for an oblique (仄) group: rhyme-aware prompts ask for the level-tone
    rhymes of regulated verse."""
    group = find_rhyme_group(name)  # ValueError for unknown / ambiguous names
    if group not in level_rhyme_groups():
        raise ValueError(
            f"rhyme group {name!r} ({group}) is an oblique-tone (仄) group, but regulated verse and the "
            "rhyme-aware prompts rhyme in level-tone (平) groups: choose one of "
            + ", ".join(level_group_labels())
        )
    return group


def poem_rhyme_group(poem: str) -> str | None:
    """The level-tone group all even-line finals of the poem share (the first by name where polyphones
    leave several), or None where they share none."""
    finals = even_line_finals(poem)
    if len(finals) < 2:
        return None
    shared = frozenset.intersection(*(rhyme_groups(char) for char in finals)) & level_rhyme_groups()
    return min(shared) if shared else None


def poem_rhyme_chars(poem: str, group: str) -> list[str]:
    """The poem's rhyme characters in `group`, in order: even-line finals, and the first line's when it
    rhymes (首句入韵)."""
    lines = split_lines(poem)
    finals = [line[-1] for index, line in enumerate(lines) if index % 2 == 1 or index == 0]
    return list(dict.fromkeys(char for char in finals if group in rhyme_groups(char)))


def _rng(*parts: str) -> random.Random:
    digest = hashlib.sha256("\0".join(parts).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def hint_chars(group: str, count: int, *, own: Sequence[str] = (), seed: str = "") -> list[str]:
    """`count` characters of `group` to list in a prompt: the poem's `own` rhyme characters (all of
    them, even past `count`) and others of the group's commonest rhymes, shuffled by `seed` (the poem or
    the title) so that where a character stands says nothing."""
    rng = _rng(group, seed)
    pool = [char for char in common_rhyme_chars(group)[:COMMON_POOL] if char not in own]
    chars = list(own) + rng.sample(pool, min(max(count - len(own), 0), len(pool)))
    rng.shuffle(chars)
    return chars


def default_group(title: str) -> str:
    """A level-tone group for a title when none is asked for: one of the ten groups regulated verse rhymes
    in most (rhyme_chars.json's counts), picked by the title, so that different titles get different rhymes
    and the same title always the same one."""
    usage = json.loads(RHYME_CHARS_TABLE.read_text(encoding="utf-8"))["rhymes_per_group"]
    commonest = sorted(sorted(usage), key=lambda group: -usage[group])[:DEFAULT_GROUPS]
    return commonest[_rng("default", title).randrange(len(commonest))]
