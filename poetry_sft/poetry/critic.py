"""The prosody critic: one score per poem, with its parts, from the rules of classical verse alone.

Never a language model: every part is a rule of this package's domain (forms, the 平水韵 table, the 律句
patterns), bounded in [0, 1], and graded where a rule allows it, so that a weak model's poems still
differ in score (a binary "rhymes or not" gives a model that rhymes 3% of the time almost no signal).

    parts (higher is better)
      form        the form asked for (or, when none was asked, the closest regulated form): 1 for the
                  exact shape, else 0.8 x the share of lines of the right length in the right places
      rhyme       the largest share of even-line finals in one level-tone (平声) group, or in the
                  group asked for (rhyme_group)
      level_end   the share of even lines that end in a surely level-tone character (a rhyme needs one)
      tones       平仄 compliance of a tonal regulated poem at the positions the rules fix (0 otherwise)
    penalties (higher is worse)
      repetition  repeated lines, and characters past their second use (不不不不)
      non_chinese visible characters that are neither Chinese characters nor Chinese punctuation
      no_eos      the poem did not stop at the end token (cut off by the token budget)
      title_copy  lines that contain the whole title

    score = (sum of weight x part - sum of weight x penalty) / sum of the parts' weights

so a perfect poem scores 1 and the score can go below 0. The weights are the run's `critic.*` config
(defaults and their reasons: `CriticConfig` in poetry_sft/config/schema.py); this module holds no
defaults, so one place does. Best-of-N selection, the rejection-sampling and GRPO stages, the score
command and the studio all call `critique`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from poetry_sft.poetry.forms import FORM_TABLE, OTHER_FORM, check_form_name, classify_form
from poetry_sft.poetry.prosody import LEVEL, char_tones, check_tones, level_rhyme_groups, rhyme_groups
from poetry_sft.poetry.text import CHINESE_PUNCTUATION, is_han, split_lines, strip_thinking

PARTS = ("form", "rhyme", "level_end", "tones")
PENALTIES = ("repetition", "non_chinese", "no_eos", "title_copy")
WEIGHT_NAMES = PARTS + PENALTIES
EXACT_FORM, NEAR_FORM = 1.0, 0.8  # an exact shape beats any near miss


@dataclass(frozen=True)
class Critique:
    """A poem's score and every part and penalty behind it (all parts and penalties in [0, 1])."""

    score: float
    parts: dict[str, float]

    def as_dict(self) -> dict[str, float | dict[str, float]]:
        return {"score": round(self.score, 4), "parts": {k: round(v, 4) for k, v in self.parts.items()}}


def check_weights(weights: Mapping[str, float]) -> list[str]:
    """What is wrong with a weights mapping (every name of WEIGHT_NAMES, each >= 0, a part > 0)."""
    problems = []
    if missing := [name for name in WEIGHT_NAMES if name not in weights]:
        problems.append(f"missing weights {missing}")
    if unknown := sorted(set(weights) - set(WEIGHT_NAMES)):
        problems.append(f"unknown weights {unknown}; the critic's are {', '.join(WEIGHT_NAMES)}")
    if negative := [f"{k}={v}" for k, v in weights.items() if not v >= 0]:
        problems.append(f"weights must be >= 0 (a penalty is already subtracted): {', '.join(negative)}")
    if not any(weights.get(name, 0) > 0 for name in PARTS):
        problems.append(f"at least one of {', '.join(PARTS)} needs a weight > 0")
    return problems


# ---------------------------------------------------------------------------------------------
# Parts


def _shape_score(lines: list[str], form: str) -> float:
    shape = FORM_TABLE[form]
    if not lines:
        return 0.0
    right = sum(len(line) == shape.chars_per_line and all(map(is_han, line)) for line in lines[: shape.lines])
    return NEAR_FORM * right / max(shape.lines, len(lines))


def form_part(poem: str, form: str | None = None) -> float:
    """1 for the exact shape of `form` (any regulated form when None), else 0.8 x the share of lines
    that have the right length in the right places (extra or missing lines count against it)."""
    found = classify_form(poem)
    if form is not None:
        check_form_name(form)
        if found == form:
            return EXACT_FORM
        return _shape_score(split_lines(poem), form)
    if found != OTHER_FORM:
        return EXACT_FORM
    lines = split_lines(poem)
    return max(_shape_score(lines, name) for name in FORM_TABLE)


def even_line_finals(poem: str) -> list[str]:
    """The last character of each even line (2nd, 4th, ...): where regulated verse rhymes."""
    return [line[-1] for line in split_lines(poem)[1::2]]


def rhyme_part(poem: str, rhyme_group: str | None = None) -> float:
    """The largest share of even lines whose finals are different characters of one level-tone group (or
    of `rhyme_group`, a full group name such as 下平聲七陽). 0 for a poem with fewer than two even lines. A
    polyphone counts in each of its groups; a final repeated (重韵) counts once, so "秋…秋" earns 1/2."""
    finals = even_line_finals(poem)
    if len(finals) < 2:
        return 0.0
    distinct = set(finals)
    groups = [rhyme_groups(char) for char in distinct]
    candidates = {rhyme_group} if rhyme_group else set().union(*groups) & level_rhyme_groups()
    if not candidates:
        return 0.0
    return max(sum(group in char_groups for char_groups in groups) for group in candidates) / len(finals)


def level_end_part(poem: str) -> float:
    """The share of even lines ending in a character that can only be read level (平): a rhyme of
    regulated verse needs one, so even a poem that does not rhyme yet gets credit for the right tone."""
    finals = even_line_finals(poem)
    return sum(char_tones(char) == {LEVEL} for char in finals) / len(finals) if finals else 0.0


def tones_part(poem: str) -> float:
    """平仄 compliance (prosody.check_tones) of a tonal regulated poem; 0 where there is no pattern."""
    report = check_tones(poem)
    return report.compliance if report is not None else 0.0


# ---------------------------------------------------------------------------------------------
# Penalties


def repetition_penalty(poem: str) -> float:
    """The larger of: the share of lines that repeat an earlier line, and the share of characters
    used past their second time in the poem (real poems repeat a word now and then; loops don't)."""
    lines = split_lines(poem)
    chars = [char for line in lines for char in line]
    if not chars:
        return 0.0
    repeated_lines = (len(lines) - len(set(lines))) / len(lines)
    excess = sum(max(0, count - 2) for count in Counter(chars).values()) / len(chars)
    return max(repeated_lines, excess)


def non_chinese_penalty(poem: str) -> float:
    visible = [char for char in poem if not char.isspace()]
    foreign = sum(not is_han(char) and char not in CHINESE_PUNCTUATION for char in visible)
    return foreign / len(visible) if visible else 0.0


def title_copy_penalty(poem: str, title: str | None) -> float:
    """The share of lines that contain the whole title (its Chinese characters, two or more)."""
    core = "".join(filter(is_han, title or ""))
    lines = split_lines(poem)
    if len(core) < 2 or not lines:
        return 0.0
    return sum(core in line for line in lines) / len(lines)


# ---------------------------------------------------------------------------------------------
# The critic


def critique(
    poem: str,
    weights: Mapping[str, float],
    *,
    form: str | None = None,
    rhyme_group: str | None = None,
    title: str | None = None,
    stopped_at_eos: bool | None = None,
) -> Critique:
    """Score one generation. `<think>` blocks are removed first (as score_poems does); `stopped_at_eos`
    None (unknown, e.g. a poem from a file) costs nothing."""
    answer = strip_thinking(poem)
    parts = {
        "form": form_part(answer, form),
        "rhyme": rhyme_part(answer, rhyme_group),
        "level_end": level_end_part(answer),
        "tones": tones_part(answer),
        "repetition": repetition_penalty(answer),
        "non_chinese": non_chinese_penalty(answer),
        "no_eos": 1.0 if stopped_at_eos is False else 0.0,
        "title_copy": title_copy_penalty(answer, title),
    }
    gained = sum(weights[name] * parts[name] for name in PARTS)
    lost = sum(weights[name] * parts[name] for name in PENALTIES)
    return Critique((gained - lost) / sum(weights[name] for name in PARTS), parts)


def mean_critique(critiques: Sequence[Critique]) -> dict[str, float | None]:
    """critic_score and critic/<part> means over a set of poems (None for an empty set)."""
    if not critiques:
        return {"critic_score": None, **{f"critic/{name}": None for name in WEIGHT_NAMES}}
    n = len(critiques)
    means: dict[str, float | None] = {"critic_score": sum(c.score for c in critiques) / n}
    for name in WEIGHT_NAMES:
        means[f"critic/{name}"] = sum(c.parts[name] for c in critiques) / n
    return means
