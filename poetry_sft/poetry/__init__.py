"""The poetry domain: characters and lines, forms, rhyme and tone, metrics, constrained decoding.

A leaf: nothing here imports the training machinery (config, data, models, trainers), so the same
code judges a poem in a training callback, the score command, the studio and the benchmarks.

    text         Han ranges, line punctuation, line splitting, think tags
    forms        the form table (adding a form is one entry) and shape classification
    prosody      the 平水韵 table, rhyme, 平仄 of regulated verse
    metrics      diversity, hygiene, and score_poems (all of them at once)
    copying      CopyIndex: verbatim overlap with a corpus (imported on its own: numpy)
    constrained  a transformers logits processor that enforces a form (imported on its own: torch)
    penalty      a repetition penalty that spares punctuation (imported on its own: torch)

The names most callers need are importable from here: `from poetry_sft import poetry` (no numpy,
no torch: the config checks import it).
"""

from poetry_sft.poetry.forms import (
    CORPUS_FORMS,
    FORM_TABLE,
    FORMS,
    OTHER_FORM,
    Form,
    check_form_name,
    classify_form,
    corpus_form,
    format_accuracy,
)
from poetry_sft.poetry.metrics import (
    distinct_n,
    eos_termination_rate,
    non_chinese_rate,
    repeated_line_rate,
    score_poems,
    think_leak_rate,
)
from poetry_sft.poetry.prosody import (
    LEVEL,
    OBLIQUE,
    ToneReport,
    char_tones,
    check_tones,
    find_rhyme_group,
    level_rhyme_groups,
    required_tones,
    rhyme_group_names,
    rhyme_groups,
    rhyme_rate,
    rhymes,
    sticking_and_opposition,
    tone_patterns,
)
from poetry_sft.poetry.text import (
    CHINESE_PUNCTUATION,
    HAN_CLASS,
    HAN_RANGES,
    THINK_CLOSE,
    THINK_OPEN,
    is_han,
    line_lengths,
    split_first_line,
    split_lines,
    strip_thinking,
)

__all__ = [
    "CHINESE_PUNCTUATION",
    "CORPUS_FORMS",
    "FORMS",
    "FORM_TABLE",
    "HAN_CLASS",
    "HAN_RANGES",
    "LEVEL",
    "OBLIQUE",
    "OTHER_FORM",
    "THINK_CLOSE",
    "THINK_OPEN",
    "Form",
    "ToneReport",
    "char_tones",
    "check_form_name",
    "check_tones",
    "classify_form",
    "corpus_form",
    "distinct_n",
    "eos_termination_rate",
    "find_rhyme_group",
    "format_accuracy",
    "is_han",
    "level_rhyme_groups",
    "line_lengths",
    "non_chinese_rate",
    "repeated_line_rate",
    "required_tones",
    "rhyme_group_names",
    "rhyme_groups",
    "rhyme_rate",
    "rhymes",
    "score_poems",
    "split_first_line",
    "split_lines",
    "sticking_and_opposition",
    "strip_thinking",
    "think_leak_rate",
    "tone_patterns",
]
