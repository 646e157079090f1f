"""Poetry metrics: what a poet checks, where the training loss says nothing.

Every function takes plain strings (poems in simplified or traditional characters, one 联 or one 句
per text line) and returns plain numbers, so the same code scores generations in a training
callback, in `poetry-sft score`, in the studio and in `bench/bench_metrics.py`.
Shapes come from `forms`, rhyme and tone from `prosody`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from poetry_sft.poetry.critic import critique, mean_critique, rhyme_part
from poetry_sft.poetry.forms import OTHER_FORM, check_form_name, classify_form, format_accuracy
from poetry_sft.poetry.prosody import check_tones, rhyme_rate
from poetry_sft.poetry.text import (
    CHINESE_PUNCTUATION,
    THINK_CLOSE,
    THINK_OPEN,
    is_han,
    split_lines,
    strip_thinking,
)

if TYPE_CHECKING:
    from poetry_sft.poetry.copying import CopyIndex

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


def distinct_finals(poems: Sequence[str]) -> float:
    """Distinct characters among the even lines' last characters (the rhyme slots) / all of them, over the
    whole set. Low means every poem rhymes on the same few characters: a model (or a reward) that found one
    rhyme and uses it everywhere scores near 0 however well each poem rhymes."""
    finals = [line[-1] for poem in poems for line in split_lines(poem)[1::2]]
    return len(set(finals)) / len(finals) if finals else 0.0


def repeated_line_rate(poems: Sequence[str]) -> float:
    """Fraction of lines that repeat an earlier line of the same poem (the looping failure)."""
    repeats = total = 0
    for poem in poems:
        lines = split_lines(poem)
        repeats += len(lines) - len(set(lines))
        total += len(lines)
    return repeats / total if total else 0.0


# ---------------------------------------------------------------------------------------------
# Hygiene


def think_leak_rate(texts: Sequence[str]) -> float:
    """Fraction of generations that contain a <think> or </think> tag: the chat template's thinking
    scaffold leaking into what should be a bare poem."""
    leaks = sum(THINK_OPEN in text or THINK_CLOSE in text for text in texts)
    return leaks / len(texts) if texts else 0.0


def eos_termination_rate(stopped_at_eos: Sequence[bool]) -> float:
    """Fraction of generations that ended with the end token rather than running out of budget."""
    return sum(map(bool, stopped_at_eos)) / len(stopped_at_eos) if stopped_at_eos else 0.0


def non_chinese_rate(texts: Sequence[str]) -> float:
    """Fraction of visible characters that are neither Chinese characters nor Chinese punctuation."""
    visible = [char for text in texts for char in text if not char.isspace()]
    foreign = sum(not is_han(char) and char not in CHINESE_PUNCTUATION for char in visible)
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
    critic_weights: Mapping[str, float] | None = None,
    titles: Sequence[str | None] | None = None,
    rhyme_groups: Sequence[str | None] | None = None,
) -> dict[str, float | int | None]:
    """All metrics for a set of generations, as a flat JSON-serialisable dict.

    `poems` are raw generations: <think> blocks count towards `think_leak_rate` and are removed
    before anything else is scored. `requested_forms` is one form for all, or one per poem (None
    where nothing was asked). With `critic_weights` the prosody critic's mean score and parts
    (critic_score, critic/<part>; `titles` for its title-copy penalty); with `rhyme_groups` (the group
    each rhyme-aware prompt asked for) `asked_rhyme_rate`, the share of those poems whose even lines
    all rhyme in the asked group. A metric that cannot be measured (no form requested, no regulated
    poem, no end-token flags, no reference, no critic) is None rather than missing, so reports keep
    their columns.
    """
    if isinstance(requested_forms, str) or requested_forms is None:
        requested_forms = [requested_forms] * len(poems)
    if len(requested_forms) != len(poems):
        raise ValueError(f"{len(poems)} poems but {len(requested_forms)} requested forms")
    if stopped_at_eos is not None and len(stopped_at_eos) != len(poems):
        raise ValueError(f"{len(poems)} poems but {len(stopped_at_eos)} end-token flags")

    for name, given in (("titles", titles), ("rhyme groups", rhyme_groups)):
        if given is not None and len(given) != len(poems):
            raise ValueError(f"{len(poems)} poems but {len(given)} {name}")
    answers = [strip_thinking(poem) for poem in poems]
    asked = [(answer, group) for answer, group in zip(answers, rhyme_groups or [], strict=False) if group]
    forms = [classify_form(answer) for answer in answers]
    tones = [report for report in map(check_tones, answers) if report is not None]
    shaped = [
        (answer, check_form_name(want)) for answer, want in zip(answers, requested_forms, strict=True) if want
    ]
    critiques = (
        [
            critique(poem, critic_weights, form=form, title=title, stopped_at_eos=stop)
            for poem, form, title, stop in zip(
                poems,
                requested_forms,
                titles or [None] * len(poems),
                stopped_at_eos if stopped_at_eos is not None else [None] * len(poems),
                strict=True,
            )
        ]
        if critic_weights is not None
        else None
    )
    return {
        "n_poems": len(poems),
        "format_accuracy": format_accuracy(*zip(*shaped, strict=True)) if shaped else None,
        "regulated_form_rate": _mean([form != OTHER_FORM for form in forms]),
        "rhyme_rate": rhyme_rate(answers) if answers else None,
        "asked_rhyme_rate": _mean([rhyme_part(a, group) == 1.0 for a, group in asked]) if asked else None,
        "n_regulated": len(tones),
        "tone_compliance": (
            sum(r.compliant for r in tones) / sum(r.constrained for r in tones) if tones else None
        ),
        "tone_pass_rate": _mean([r.passed for r in tones]),
        "gu_ping_rate": _mean([bool(r.gu_ping_lines) for r in tones]),
        "san_ping_wei_rate": _mean([bool(r.san_ping_wei_lines) for r in tones]),
        "distinct_1": distinct_n(answers, 1) if answers else None,
        "distinct_2": distinct_n(answers, 2) if answers else None,
        "distinct_finals": distinct_finals(answers) if answers else None,
        "repeated_line_rate": repeated_line_rate(answers) if answers else None,
        "think_leak_rate": think_leak_rate(poems) if poems else None,
        "non_chinese_rate": non_chinese_rate(answers) if answers else None,
        "eos_termination_rate": eos_termination_rate(stopped_at_eos) if stopped_at_eos else None,
        "ngram_copy_rate": reference.ngram_copy_rate(answers) if reference else None,
        "line_copy_rate": reference.line_copy_rate(answers) if reference else None,
        **mean_critique(critiques or []),
    }
