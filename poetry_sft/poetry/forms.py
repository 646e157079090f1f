"""The forms of classical poems: one table, and everything about a form is derived from it.

Adding a form is one entry in `FORM_TABLE`: its shape (characters per line, lines) and whether the
平仄 rules of regulated verse (律句, defined for five- and seven-character lines in `prosody`) apply.
Classification, `--form` choices, constrained decoding and tone checks all read the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from poetry_sft.poetry.text import is_han, line_lengths, split_lines


@dataclass(frozen=True)
class Form:
    chars_per_line: int
    lines: int
    tonal: bool  # the 律句 patterns of `prosody` apply (five- and seven-character regulated verse)


FORM_TABLE: dict[str, Form] = {
    "五言绝句": Form(5, 4, tonal=True),
    "七言绝句": Form(7, 4, tonal=True),
    "五言律诗": Form(5, 8, tonal=True),
    "七言律诗": Form(7, 8, tonal=True),
    "六言绝句": Form(6, 4, tonal=False),  # 王维《田园乐》: shape only, its tone rules are not modelled
}
FORMS: tuple[str, ...] = tuple(FORM_TABLE)
"""The forms a poem can be asked for and checked against."""
OTHER_FORM = "other"

# A corpus holds far more than the regulated forms: the shapes the rest takes, for data selection
# (data.forms) and the form_theme prompt.
CORPUS_FORMS: tuple[str, ...] = (*FORMS, "五言诗", "七言诗", "长短句", "杂体诗")


def classify_form(poem: str) -> str:
    """One of `FORMS`, or `OTHER_FORM`: judged on shape only (line count, equal all-Chinese lines)."""
    lines = split_lines(poem)
    if not lines or len({len(line) for line in lines}) != 1:
        return OTHER_FORM
    if not all(is_han(char) for line in lines for char in line):
        return OTHER_FORM
    shape = (len(lines[0]), len(lines))
    return next(
        (name for name, form in FORM_TABLE.items() if (form.chars_per_line, form.lines) == shape), OTHER_FORM
    )


def check_form_name(form: str) -> str:
    """`form` if it names a form of the table; a ValueError naming the choices otherwise."""
    if form not in FORM_TABLE:
        raise ValueError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    return form


def corpus_form(content: str) -> str:
    """One of CORPUS_FORMS: a form of the table by shape, else 五言诗/七言诗 (equal lines), 长短句
    (lines of unequal length: 词 and 杂言), 杂体诗 (anything else)."""
    form = classify_form(content)
    if form != OTHER_FORM:
        return form
    lengths = set(line_lengths(content))
    if len(lengths) > 1:
        return "长短句"
    return {5: "五言诗", 7: "七言诗"}.get(next(iter(lengths), 0), "杂体诗")


def format_accuracy(poems: Sequence[str], requested_forms: str | Sequence[str]) -> float:
    """Fraction of poems whose shape is the form that was asked for (one form for all, or one each)."""
    forms = [requested_forms] * len(poems) if isinstance(requested_forms, str) else list(requested_forms)
    if len(forms) != len(poems):
        raise ValueError(f"{len(poems)} poems but {len(forms)} requested forms")
    if not poems:
        return 0.0
    hits = sum(classify_form(poem) == check_form_name(form) for poem, form in zip(poems, forms, strict=True))
    return hits / len(poems)
