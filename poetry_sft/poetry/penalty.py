"""A repetition penalty that leaves punctuation alone.

transformers' repetition penalty divides the logit of every token already in the text (prompt
included) by `penalty`. A poem repeats ，and 。 on every line by design, so the plain penalty
pushes the model, more with every line, away from ending a line where it should: towards lines that
run long and poems that never reach the end token. This processor applies transformers' own
`RepetitionPenaltyLogitsProcessor` and then restores the logits of punctuation-only tokens, so only
characters and words are discouraged from repeating. `bench/repetition_penalty.py` measures the
difference on a trained run (the numbers are in the README's generation section).
"""

from __future__ import annotations

import functools

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase, RepetitionPenaltyLogitsProcessor

from poetry_sft.poetry.text import CHINESE_PUNCTUATION, LINE_END_PUNCTUATION

_PUNCTUATION = frozenset(CHINESE_PUNCTUATION | set(LINE_END_PUNCTUATION) | set("\n :!?"))


@functools.lru_cache(maxsize=8)
def punctuation_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """Ids of the tokens whose text is punctuation and line breaks only (，  。\\n  ？ ...)."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return tuple(i for i, text in enumerate(texts) if text and set(text) <= _PUNCTUATION)


class PunctuationExemptRepetitionPenalty(LogitsProcessor):
    """transformers' repetition penalty, except for the tokens in `exempt_ids`."""

    def __init__(self, penalty: float, exempt_ids: tuple[int, ...]) -> None:
        self.penalty = RepetitionPenaltyLogitsProcessor(penalty)
        self.exempt = torch.tensor(exempt_ids, dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        exempt = self.exempt.to(scores.device)
        kept = scores[:, exempt].clone()
        scores = self.penalty(input_ids, scores)
        scores[:, exempt] = kept
        return scores
