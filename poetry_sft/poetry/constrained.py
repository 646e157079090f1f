"""Form-constrained decoding: the model chooses the words, the processor guarantees the form.

The output follows the training corpus layout, a couplet (联) per text line and no trailing newline:

    白日依山尽，黄河入海流。
    欲穷千里目，更上一层楼。<end token>

that is N Chinese characters, "，", N characters, "。", a newline between couplets, then the end
token. `couplet_newline=False` drops the newlines. Format accuracy is 1.0 by construction.

    prompt_length = inputs["input_ids"].shape[1]
    processor = FormConstrainedLogitsProcessor(tokenizer, "七言绝句", prompt_length)
    model.generate(**inputs, logits_processor=LogitsProcessorList([processor]), do_sample=True)

generate() applies custom processors before temperature/top-k/top-p, so sampling settings only
choose among the tokens the form allows.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from poetry_sft import poetry

_HAN_SLOT = "\0"  # in a layout: any one Chinese character


def _layout(form: str, couplet_newline: bool) -> str:
    shape = poetry.FORM_TABLE[poetry.check_form_name(form)]
    couplet = _HAN_SLOT * shape.chars_per_line + "，" + _HAN_SLOT * shape.chars_per_line + "。"
    return ("\n" if couplet_newline else "").join([couplet] * (shape.lines // 2))


def _shape(text: str) -> str:
    return "".join(_HAN_SLOT if poetry.is_han(char) else char for char in text)


class FormConstrainedLogitsProcessor(LogitsProcessor):
    """Allows only tokens that keep the generated text a prefix of the form's layout, then the end token.

    Decisions are per token, not per character: a token is allowed where each of its characters fits
    the layout (a Chinese character on a character slot, the exact punctuation elsewhere), so a
    multi-character token is used when it fits and can never overrun a line. Tokens that decode to a
    fragment of a character (byte-level pieces of rare characters) never fit, so characters that only
    exist as such fragments are not written.

    With `rhyme` (or a `rhyme_group`) the last characters of the even lines are restricted to one
    level-tone (平声) group of the 平水韵, as regulated verse requires, each a different character (no
    重韵): the first even line picks it
    (a polyphone keeps all its groups open until a later line narrows them), or `rhyme_group` fixes
    it (full name such as 下平聲七陽, or a unique ending such as 七阳 / 阳; an oblique group gives a
    仄韵 poem). If the vocabulary has no token that rhymes at a slot, that slot is left unrestricted
    rather than stalling generation.

    Only tokens after `prompt_length` are constrained; with left-padded batches that is the padded
    prompt width, `inputs["input_ids"].shape[1]`. The position in the layout is recomputed from
    `input_ids` at every step (a 七言律诗 is 67 characters), which stays right under beam
    reordering; per-token masks are precomputed once, so a step costs a few tensor lookups per row.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        form: str,
        prompt_length: int,
        *,
        rhyme: bool = False,
        rhyme_group: str | None = None,
        eos_token_id: int | None = None,
        couplet_newline: bool = True,
    ) -> None:
        self.form = poetry.check_form_name(form)
        self.prompt_length = prompt_length
        self.eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if self.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token_id; pass eos_token_id= explicitly")
        self.layout = _layout(self.form, couplet_newline)
        self.rhyme_slots = frozenset(i - 1 for i, char in enumerate(self.layout) if char == "。")
        self.rhyme_groups: frozenset[str] | None = None
        if rhyme_group is not None:
            self.rhyme_groups = frozenset({poetry.find_rhyme_group(rhyme_group)})
        elif rhyme:
            self.rhyme_groups = poetry.level_rhyme_groups()

        self._texts = tokenizer.batch_decode(
            [[token_id] for token_id in range(len(tokenizer))],
            skip_special_tokens=False,
            clean_up_tokenization_spaces=False,
        )
        fitting = self._tokens_by_shape()
        self._masks = self._layout_masks(fitting, len(self._texts))
        if self.rhyme_groups is not None:
            self._chars, self._char_at = self._characters_by_offset(fitting)
            self._index = {char: index + 1 for index, char in enumerate(self._chars)}  # as in _char_at
            self._rhyming_cache: dict[frozenset[str], torch.Tensor] = {}

    # -- precomputation -----------------------------------------------------------------------

    def _tokens_by_shape(self) -> dict[str, list[int]]:
        """Tokens that could appear somewhere in the layout, grouped by shape (e.g. two Chinese
        characters, or "。\\n")."""
        alphabet = set(self.layout)
        by_shape: dict[str, list[int]] = {}
        for token_id, text in enumerate(self._texts):
            shape = _shape(text)
            if text and _HAN_SLOT not in text and set(shape) <= alphabet:
                by_shape.setdefault(shape, []).append(token_id)
        return by_shape

    def _layout_masks(self, by_shape: dict[str, list[int]], vocab_size: int) -> torch.Tensor:
        """masks[position] = the tokens allowed once `position` characters of the layout are written."""
        masks = torch.zeros(len(self.layout) + 1, vocab_size, dtype=torch.bool)
        for position in range(len(self.layout)):
            rest = self.layout[position:]
            for shape, token_ids in by_shape.items():
                if rest.startswith(shape):
                    masks[position, token_ids] = True
            if not masks[position].any():
                needed = "a Chinese character" if rest[0] == _HAN_SLOT else repr(rest[0])
                raise ValueError(
                    f"the tokenizer has no token for {needed} at position {position} of {self.form}"
                )
        masks[len(self.layout), self.eos_token_id] = True
        return masks

    def _characters_by_offset(self, by_shape: dict[str, list[int]]) -> tuple[list[str], torch.Tensor]:
        """The distinct Chinese characters of fitting tokens, and char_at[offset, token] = 1 + index
        of the token's character at that offset (0 where it has none, which no rhyme rule touches)."""
        chars: dict[str, int] = {}
        longest = max(map(len, by_shape))
        char_at = torch.zeros(longest, len(self._texts), dtype=torch.long)
        for token_ids in by_shape.values():
            for token_id in token_ids:
                for offset, char in enumerate(self._texts[token_id]):
                    if poetry.is_han(char):
                        char_at[offset, token_id] = chars.setdefault(char, len(chars) + 1)
        return list(chars), char_at

    def _rhyming_chars(self, groups: frozenset[str]) -> torch.Tensor:
        """Over 1 + character index: True where the character rhymes in one of `groups` (and at 0)."""
        if groups not in self._rhyming_cache:
            rhyming = [True] + [bool(poetry.rhyme_groups(char) & groups) for char in self._chars]
            self._rhyming_cache[groups] = torch.tensor(rhyming, dtype=torch.bool)
        return self._rhyming_cache[groups]

    # -- per step -----------------------------------------------------------------------------

    def _walk(self, generated: list[int]) -> tuple[int, list[str]]:
        """How much of the layout the generated tokens cover, and the characters on rhyme slots."""
        position, rhyme_chars = 0, []
        for token_id in generated:
            if position >= len(self.layout):
                break  # the end token, then padding
            text = self._texts[token_id]
            rhyme_chars += [char for offset, char in enumerate(text) if position + offset in self.rhyme_slots]
            position += len(text)
        return min(position, len(self.layout)), rhyme_chars

    def _open_groups(self, rhyme_chars: list[str]) -> frozenset[str]:
        groups = self.rhyme_groups or frozenset()
        for char in rhyme_chars:
            # Empty only where a slot had to be left unrestricted; keep the earlier choice then.
            groups = (groups & poetry.rhyme_groups(char)) or groups
        return groups

    def _allowed(self, generated: list[int]) -> torch.Tensor:
        position, rhyme_chars = self._walk(generated)
        allowed = self._masks[position]
        if self.rhyme_groups is None:
            return allowed
        rhyming = self._rhyming_chars(self._open_groups(rhyme_chars))
        fresh = rhyming
        if used := [self._index[char] for char in rhyme_chars if char in self._index]:
            fresh = rhyming.clone()
            fresh[used] = False  # a rhyme character used once is not used again (重韵)
        # A new rhyme character where the vocabulary has one; else a repeated one; else no restriction.
        for chars in (fresh, rhyming):
            restricted = allowed
            for slot in self.rhyme_slots:
                offset = slot - position
                if 0 <= offset < len(self._char_at):
                    restricted = restricted & chars[self._char_at[offset]]
            if restricted.any():
                return restricted
        return allowed

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        width = min(scores.shape[-1], self._masks.shape[-1])
        allowed = torch.zeros(scores.shape, dtype=torch.bool)
        for row, generated in enumerate(input_ids[:, self.prompt_length :].tolist()):
            allowed[row, :width] = self._allowed(generated)[:width]
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))
