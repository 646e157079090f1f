"""Characters and lines: what counts as a Chinese character, where a line ends, the think tags.

The one definition of each, for the metrics, the form table, data cleaning, constrained decoding and
the studio. Plain strings in, plain values out; nothing here knows about models or training.
"""

from __future__ import annotations

import re

# CJK ideographs: the unified block, extension A, compatibility ideographs, extensions B-G.
HAN_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF), (0x20000, 0x3134F))
HAN_CLASS = "".join(f"{chr(low)}-{chr(high)}" for low, high in HAN_RANGES)
"""The ranges as the inside of a regex character class: re.compile(f"[{HAN_CLASS}]")."""

# Generations come in two layouts (a 联 per text line as in the corpus, or a 句 per text line), with
# full- or half-width punctuation; splitting on all of them gives the same lines either way.
LINE_END_PUNCTUATION = "，。？！；、,.?!;"
_LINE_BREAK = re.compile(f"[{re.escape(LINE_END_PUNCTUATION)}\n]+")
_FIRST_LINE = re.compile(f"^(.+?[{re.escape(LINE_END_PUNCTUATION.replace('、', ''))}])\\s*(.+)$", re.DOTALL)
# Quotation marks and spaces are not characters of the verse.
_NOT_VERSE = re.compile(r"[\s“”‘’「」『』《》\"']")
CHINESE_PUNCTUATION = frozenset("，。？！；：、“”‘’「」『』《》（）…—·")

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def is_han(char: str) -> bool:
    """True for a CJK ideograph (a character that can stand in a line of verse)."""
    return any(low <= ord(char) <= high for low, high in HAN_RANGES)


def split_lines(poem: str) -> list[str]:
    """The lines (句) of a poem, with punctuation, quotes and spaces removed."""
    parts = (_NOT_VERSE.sub("", part) for part in _LINE_BREAK.split(poem))
    return [part for part in parts if part]


def line_lengths(poem: str) -> list[int]:
    """Characters per line."""
    return [len(line) for line in split_lines(poem)]


def split_first_line(content: str) -> tuple[str, str] | None:
    """(first line with its punctuation, the rest), or None for a poem of one line."""
    match = _FIRST_LINE.match(content)
    return (match[1], match[2]) if match and split_lines(match[2]) else None


def strip_thinking(text: str) -> str:
    """The answer without any <think> block (closed or not), so form is scored on the poem alone."""
    if THINK_CLOSE in text:
        text = text.rsplit(THINK_CLOSE, 1)[1]
    return text.split(THINK_OPEN, 1)[0].strip()
