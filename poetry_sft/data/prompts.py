"""Prompts: the one place that says what a model is asked and how the chat is rendered.

Templates per prompt style, the fields they may use, the subject a generation request gives, keyword
picking, the chat rendering (Qwen3 template, thinking disabled), TRL's formatting function, and the
generation prompt. Data preparation, generation, the studio and config validation all use these, so
a poem is generated from exactly the prompt it was trained on.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

from poetry_sft.config.schema import DataConfig, PromptStyle
from poetry_sft.config.templates import PROMPT_SUBJECT, RHYME_HINT, prompt_fields, prompt_template
from poetry_sft.errors import ConfigError
from poetry_sft.paths import IMAGERY_WORDS
from poetry_sft.poetry import corpus_form, split_first_line
from poetry_sft.poetry.rhyme_hint import (
    default_group,
    find_level_group,
    group_label,
    hint_chars,
    poem_rhyme_chars,
    poem_rhyme_group,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

KEYWORD_SEPARATOR = "、"


# The Qwen3 chat template renders an empty <think></think> block before the answer when thinking is
# off; it belongs to the prompt (masked), so the model never learns to write <think> itself.
class ChatTemplateKwargs(TypedDict):
    enable_thinking: bool


CHAT_TEMPLATE_KWARGS: ChatTemplateKwargs = {"enable_thinking": False}


@functools.cache
def _imagery_pattern() -> re.Pattern:
    words = {
        word
        for line in IMAGERY_WORDS.read_text(encoding="utf-8").splitlines()
        for word in line.split("#")[0].split()
    }
    # Longest first: at one position the regex takes the first alternative that matches (明月, not 月).
    return re.compile("|".join(map(re.escape, sorted(words, key=len, reverse=True))))


def poem_keywords(content: str, limit: int = 3) -> str:
    """The imagery words (resources/imagery.txt) a poem uses, in order of first use, joined by 、.
    "" when it uses none."""
    found: list[str] = []
    for match in _imagery_pattern().finditer(content):
        if match[0] not in found:
            found.append(match[0])
            if len(found) == limit:
                break
    return KEYWORD_SEPARATOR.join(found)


def keywords_text(value: Any) -> str:
    """A keywords cell: a string, or a list of strings (joined by 、)."""
    if isinstance(value, (list, tuple)):
        return KEYWORD_SEPARATOR.join(v.strip() for v in value if isinstance(v, str) and v.strip())
    return value.strip() if isinstance(value, str) else ""


def rhyme_hint(group: str, chars: list[str]) -> str:
    """「押七阳韵，韵脚可用：乡、光、长、阳、香。」: the group's short name and the characters to end on."""
    return RHYME_HINT.format(group=group_label(group), chars=KEYWORD_SEPARATOR.join(chars))


def poem_rhyme_hint(content: str, count: int) -> str:
    """The hint a training poem gets: its own 韵部 and rhyme characters among others of the group
    (poetry/rhyme_hint.py says why); "" for a poem whose even lines share no level-tone group."""
    group = poem_rhyme_group(content)
    if group is None:
        return ""
    return rhyme_hint(group, hint_chars(group, count, own=poem_rhyme_chars(content, group), seed=content))


def asked_rhyme_group(cfg: DataConfig, subject: str, rhyme_group: str | None = None) -> str | None:
    """The level-tone group a generation prompt asks for: `rhyme_group` (七阳, 阳 or a full name), else
    one picked by the subject; None when the run does not use rhyme-aware prompts (data.rhyme_hint)."""
    if not cfg.rhyme_hint:
        return None
    if rhyme_group is None:
        return default_group(subject)
    try:
        return find_level_group(rhyme_group)
    except ValueError as err:
        raise ConfigError(f"--rhyme-group / generation.rhyme_group: {err}") from None


def prompt_subject(style: PromptStyle, row: dict[str, Any], max_keywords: int = 3) -> str:
    """What a generation request gives for this row (PROMPT_SUBJECT): its title, first line or keywords.
    The rejection-sampling and GRPO stages ask their model for poems on the training rows' subjects."""
    content = row["content"]
    if style is PromptStyle.first_line:
        parts = split_first_line(content)
        return parts[0] if parts else ""
    if style is PromptStyle.keywords:
        return keywords_text(row.get("keywords")) or poem_keywords(content, max_keywords)
    return row.get("title") or ""


def user_and_completion(
    template: str, style: PromptStyle, row: dict[str, Any], max_keywords: int = 3, hint_count: int = 0
) -> tuple[str, str]:
    """The user message and the poem of a training row. `hint_count` > 0: rhyme-aware prompts naming that
    many characters (data.rhyme_hint_chars)."""
    content = row["content"]
    hint = poem_rhyme_hint(content, hint_count) if hint_count else ""
    fields = {
        "title": row.get("title", ""),
        "author": row.get("author", ""),
        "dynasty": row.get("dynasty", ""),
    }
    if "{form}" in template:
        fields["form"] = row.get("form") or corpus_form(content)
    if "{keywords}" in template:
        fields["keywords"] = keywords_text(row.get("keywords")) or poem_keywords(content, max_keywords)
    if style is PromptStyle.first_line:
        parts = split_first_line(content)
        if parts is None:
            raise ValueError(f"a one-line poem cannot be continued: {content!r}")
        fields["first_line"], content = parts
    return template.format(**fields) + hint, content


def _messages(system_prompt: str, user: str) -> list[dict[str, str]]:
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": user}]


def rhyme_hint_count(cfg: DataConfig) -> int:
    """Characters a rhyme hint lists; 0 when the run's prompts carry none."""
    return cfg.rhyme_hint_chars if cfg.rhyme_hint else 0


def make_formatting_func(cfg: DataConfig) -> Callable[[dict], dict]:
    """A poem row -> TRL's conversational prompt-completion example: the question and the poem."""
    template = prompt_template(cfg)

    def formatting_func(row: dict) -> dict:
        user, completion = user_and_completion(
            template, cfg.prompt_style, row, cfg.max_keywords, rhyme_hint_count(cfg)
        )
        return {
            "prompt": _messages(cfg.system_prompt, user),
            "completion": [{"role": "assistant", "content": completion}],
            "chat_template_kwargs": CHAT_TEMPLATE_KWARGS,
        }

    return formatting_func


def chat_prompt(tokenizer: PreTrainedTokenizerBase, system_prompt: str, user: str) -> str:
    """The rendered chat up to where the assistant's answer starts (thinking disabled)."""
    if not tokenizer.chat_template:
        raise ConfigError(
            f"the tokenizer of '{tokenizer.name_or_path}' has no chat template; poetry_sft renders prompts "
            "with it. Fix: use a chat model's tokenizer (e.g. Qwen/Qwen3-0.6B) or set tokenizer.chat_template"
        )
    rendered = tokenizer.apply_chat_template(
        _messages(system_prompt, user), tokenize=False, add_generation_prompt=True, **CHAT_TEMPLATE_KWARGS
    )
    assert isinstance(rendered, str)  # tokenize=False: the text, not ids
    return rendered


# ---------------------------------------------------------------------------------------------
# Control tokens: text that a tokenizer would read as chat structure


def control_token_pattern(tokenizer: PreTrainedTokenizerBase) -> re.Pattern | None:
    """The tokenizer's added tokens (<|im_end|>, <|im_start|>, <|endoftext|>, <think>...) as text: the
    tokenizer splits them out before anything else, so in a poem, a title or any prompt text they would
    become the control tokens themselves. The one definition: training drops rows holding them, generation
    refuses titles holding them (refuse_control_tokens)."""
    added = sorted({t.content for t in tokenizer.added_tokens_decoder.values()}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, added))) if added else None


# The chat template's control-token forms, whatever the tokenizer: <|im_end|>, <|im_start|>, <think>... Text
# like this in a prompt would end or forge a chat turn (the studio checks what users type against it).
CHAT_CONTROL_TEXT = re.compile(r"<\|[^<>]*\|>|</?think>")


def refuse_control_tokens(tokenizer: PreTrainedTokenizerBase | None, what: str, texts: list[str]) -> None:
    """ConfigError for the first of `texts` (what: "--title", "generation.eval_titles"...) holding the text
    of a control token: generation would read it as the token (`<|im_end|>` ends the user's turn). Without
    a tokenizer (before one is loaded) the chat template's forms only (CHAT_CONTROL_TEXT)."""
    pattern = control_token_pattern(tokenizer) if tokenizer is not None else None
    for text in texts:
        tokens = set(pattern.findall(text)) if pattern else set()
        if found := sorted(tokens | set(CHAT_CONTROL_TEXT.findall(text))):
            raise ConfigError(
                f"{what} {text!r} holds {', '.join(found)}: the text of the tokenizer's control token(s), "
                "which the model would read as the tokens themselves (<|im_end|> ends the prompt's turn, "
                "<think> opens reasoning), not as text. Training drops such poems and titles for the same "
                f"reason (data_report.json: special_token).\n  Fix: remove {', '.join(found)} from it."
            )


def generation_prompt(
    tokenizer: PreTrainedTokenizerBase,
    cfg: DataConfig,
    subject: str,
    form: str | None = None,
    *,
    rhyme_group: str | None = None,
    **fields: str,
) -> str:
    """The text a model sees before writing a poem: exactly the training prompt.

    `subject` is what the style asks for (PROMPT_SUBJECT): the title (title, form_theme), the first line
    (first_line) or the keywords (keywords, e.g. "明月、孤舟"). form_theme also needs `form`; custom
    templates take their other fields as keywords: author=..., dynasty=... A data.rhyme_hint run's prompt
    also names a 韵部 (`rhyme_group`, else one picked by the subject: asked_rhyme_group) and a few of its
    commonest rhyme characters.
    """
    template = prompt_template(cfg)
    values = {PROMPT_SUBJECT[cfg.prompt_style]: subject, **({"form": form} if form else {}), **fields}
    for name, value in values.items():
        refuse_control_tokens(tokenizer, "the " + name.replace("_", " "), [value])
    if missing := sorted(prompt_fields(template) - set(values)):
        how = {"form": "--form / generation.form"}
        raise ConfigError(
            f"data.prompt_style={cfg.prompt_style} prompts need {', '.join(missing)} besides the "
            f"{PROMPT_SUBJECT[cfg.prompt_style]}: give {', '.join(how.get(m, f'{m}=...') for m in missing)}"
        )
    user = template.format(**values)
    if group := asked_rhyme_group(cfg, subject, rhyme_group):
        user += rhyme_hint(group, hint_chars(group, cfg.rhyme_hint_chars, seed=subject))
    return chat_prompt(tokenizer, cfg.system_prompt, user)


# What the README, the model cards and the export README show a person typing to ask for a poem.
EXAMPLE_SUBJECTS = {"title": "春夜喜雨", "first_line": "好雨知时节，", "keywords": "明月、孤舟"}


def example_request(cfg: DataConfig) -> str:
    """The user message that asks this run's model for a poem as it was trained (with a rhyme hint in a
    data.rhyme_hint run): what a person types into Ollama, llama.cpp or LM Studio."""
    field = PROMPT_SUBJECT[cfg.prompt_style]
    subject = EXAMPLE_SUBJECTS[field]
    try:
        user = prompt_template(cfg).format(form="五言绝句", **{field: subject})
    except KeyError:  # a custom template naming {author}/{dynasty}
        user = "以《春夜喜雨》为题，写一首古诗。"
    if group := asked_rhyme_group(cfg, subject):
        user += rhyme_hint(group, hint_chars(group, cfg.rhyme_hint_chars, seed=subject))
    return user
