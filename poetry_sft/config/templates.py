"""What a prompt may say: the default template per prompt style, the {fields} a template may use, and
the subject a generation request gives (the title, the first line, the keywords).

Plain strings checked at config time (config/checks.py) and filled in by data/prompts.py, which renders
them with a tokenizer's chat template.
"""

from __future__ import annotations

import string

from poetry_sft.config.schema import DataConfig, PromptStyle

PROMPT_TEMPLATES: dict[PromptStyle, str] = {
    PromptStyle.title: "以《{title}》为题，写一首古诗。",
    PromptStyle.first_line: "续写这首古诗，首句是：{first_line}",
    PromptStyle.form_theme: "以「{title}」为主题，写一首{form}。",
    PromptStyle.keywords: "以「{keywords}」为意象，写一首古诗。",
}
PROMPT_FIELDS = ("title", "author", "dynasty", "form", "first_line", "keywords")
# What a generation request gives for each style (the rest of the prompt is filled in by name).
PROMPT_SUBJECT = {
    PromptStyle.title: "title",
    PromptStyle.first_line: "first_line",
    PromptStyle.form_theme: "title",
    PromptStyle.keywords: "keywords",
}


def prompt_template(cfg: DataConfig) -> str:
    return cfg.prompt_template if cfg.prompt_template is not None else PROMPT_TEMPLATES[cfg.prompt_style]


def prompt_fields(template: str) -> set[str]:
    """The {fields} a user-message template uses; ValueError for unknown ones or broken braces."""
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    if unknown := fields - set(PROMPT_FIELDS):
        raise ValueError(
            f"unknown field(s) {sorted(unknown)}; use {', '.join('{' + f + '}' for f in PROMPT_FIELDS)}"
        )
    return fields


# Rhyme-aware prompts (data.rhyme_hint): appended to the user message of poems that rhyme, and at
# generation. {group} is the group's short name (七阳), {chars} a few of its characters joined by 、.
RHYME_HINT = "押{group}韵，韵脚可用：{chars}。"
