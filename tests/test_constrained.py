"""Form-constrained decoding on a tiny random Qwen3 and a local character tokenizer (no downloads).

A random model proposes arbitrary tokens, so every valid poem it writes is the processor's doing.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import re  # noqa: E402
from collections.abc import Iterable  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    BatchEncoding,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers import RepetitionPenaltyLogitsProcessor as RepetitionPenalty  # noqa: E402

from poetry_sft import poetry  # noqa: E402
from poetry_sft.poetry.constrained import FormConstrainedLogitsProcessor  # noqa: E402

POEMS = [  # character source for the vocabulary; 尤 rhymes (流 楼 悠 洲 愁 舟 ...) are among them
    "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
    "昔人已乘黄鹤去，此地空余黄鹤楼。黄鹤一去不复返，白云千载空悠悠。",
    "晴川历历汉阳树，芳草萋萋鹦鹉洲。日暮乡关何处是，烟波江上使人愁。",
    "朝辞白帝彩云间，千里江陵一日还。两岸猿声啼不住，轻舟已过万重山。",
    "风急天高猿啸哀，渚清沙白鸟飞回。无边落木萧萧下，不尽长江滚滚来。",
    "国破山河在，城春草木深。感时花溅泪，恨别鸟惊心。",
]
MULTI_CHAR_TOKENS = ["白日", "黄河入海", "千里", "海流。", "。\n", "，\n"]
NON_VERSE_TOKENS = ["a", "ab", " ", "!", " 山", "山a", "\n\n"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A WordLevel vocabulary: ~400 single characters, some multi-character tokens and some junk."""
    chars = sorted({char for poem in POEMS for char in poem if poetry.is_han(char)})
    chars += [chr(code) for code in range(0x4E00, 0x4F00) if chr(code) not in chars]
    tokens = [*SPECIAL_TOKENS, "，", "。", "\n", *chars, *MULTI_CHAR_TOKENS, *NON_VERSE_TOKENS]
    model = models.WordLevel({token: i for i, token in enumerate(tokens)}, unk_token="<|endoftext|>")
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )


@pytest.fixture(scope="module")
def model(tokenizer: PreTrainedTokenizerFast) -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen3ForCausalLM(config).eval()


def token_ids(tokenizer: PreTrainedTokenizerFast, tokens: Iterable[str]) -> list[int]:
    vocab = tokenizer.get_vocab()
    return [vocab[token] for token in tokens]


def prompts(tokenizer: PreTrainedTokenizerFast) -> BatchEncoding:
    """Two left-padded prompts that themselves contain Chinese text and punctuation."""
    rows = [["<|im_start|>", "山", "，"], ["<|im_start|>", "黄", "河", "入", "海", "流", "。", "\n", "a"]]
    return tokenizer.pad({"input_ids": [token_ids(tokenizer, row) for row in rows]}, return_tensors="pt")


def generate(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    form: str,
    seed: int,
    extra: list[LogitsProcessor] | None = None,
    rhyme: bool = False,
    rhyme_group: str | None = None,
) -> tuple[list[str], torch.Tensor]:
    """Sampled poems (decoded without special tokens) and the generated ids."""
    inputs = prompts(tokenizer)
    prompt_length = inputs["input_ids"].shape[1]
    processor = FormConstrainedLogitsProcessor(
        tokenizer, form, prompt_length, rhyme=rhyme, rhyme_group=rhyme_group
    )
    torch.manual_seed(seed)
    output = model.generate(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        logits_processor=LogitsProcessorList([*(extra or []), processor]),
        do_sample=True,
        top_k=0,
        max_new_tokens=120,
        num_return_sequences=3,
    )
    assert isinstance(output, torch.Tensor)
    generated = output[:, prompt_length:]
    return tokenizer.batch_decode(generated, skip_special_tokens=True), generated


def layout_pattern(form: str) -> re.Pattern[str]:
    chars_per_line, n_lines = poetry.FORM_TABLE[form].chars_per_line, poetry.FORM_TABLE[form].lines
    line = f"[\u4e00-\u9fff]{{{chars_per_line}}}"
    return re.compile("\n".join([f"{line}，{line}。"] * (n_lines // 2)))


def assert_ends_with_eos(generated: torch.Tensor, tokenizer: PreTrainedTokenizerFast) -> None:
    for row in generated.tolist():
        while row and row[-1] == tokenizer.pad_token_id:
            row.pop()
        assert row[-1] == tokenizer.eos_token_id
        assert tokenizer.eos_token_id not in row[:-1]


@pytest.mark.parametrize("form", poetry.FORMS)
def test_random_model_writes_the_requested_form(
    model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, form: str
) -> None:
    poems, generated = generate(model, tokenizer, form, seed=0)
    assert len(poems) == 6
    for poem in poems:
        assert layout_pattern(form).fullmatch(poem), poem
    assert poetry.format_accuracy(poems, form) == 1.0
    assert_ends_with_eos(generated, tokenizer)


class PreferMultiCharacterTokens(LogitsProcessor):
    """Pushes multi-character tokens to the top, so they are taken wherever the form allows them."""

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = token_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        scores[:, self.token_ids] += 1000.0
        return scores


def test_multi_character_tokens_are_used_only_where_they_fit(
    model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast
) -> None:
    preferred = PreferMultiCharacterTokens(token_ids(tokenizer, MULTI_CHAR_TOKENS + NON_VERSE_TOKENS))
    poems, generated = generate(model, tokenizer, "七言绝句", seed=1, extra=[preferred])
    names = {token_id: token for token, token_id in tokenizer.get_vocab().items()}
    used = {names[token_id] for token_id in generated.flatten().tolist()}
    assert {"白日", "黄河入海", "千里", "。\n"} <= used  # "海流。" never fits a 7-character line start
    assert not used & set(NON_VERSE_TOKENS)
    for poem in poems:
        assert layout_pattern("七言绝句").fullmatch(poem), poem
    assert_ends_with_eos(generated, tokenizer)


def test_masks_follow_the_layout(tokenizer: PreTrainedTokenizerFast) -> None:
    processor = FormConstrainedLogitsProcessor(tokenizer, "五言绝句", prompt_length=0)
    names = {token_id: token for token, token_id in tokenizer.get_vocab().items()}

    def allowed_after(*tokens: str) -> set[str]:
        allowed = processor._allowed(token_ids(tokenizer, tokens))
        return {names[token_id] for token_id in allowed.nonzero().flatten().tolist()}

    four = ("白日", "依", "山")
    assert "尽" in allowed_after(*four)
    assert not allowed_after(*four) & {"白日", "黄河入海", "，", "a", " 山", "<|im_end|>"}
    assert allowed_after(*four, "尽") == {"，"}  # not "，\n": the newline comes after the couplet
    three_more = (*four, "尽", "，", "黄", "河", "入")
    assert {"海", "海流。", "白日", "千里"} <= allowed_after(*three_more)
    assert "黄河入海" not in allowed_after(*three_more)
    assert allowed_after(*three_more, "海流。") == {"\n"}
    whole_poem = (*three_more, "海流。", "\n", *four, "尽", "，", *four, "尽", "。")
    assert allowed_after(*whole_poem) == {"<|im_end|>"}


def test_even_lines_rhyme_in_the_group_the_first_even_line_chose(
    model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast
) -> None:
    poems, _ = generate(model, tokenizer, "五言律诗", seed=2, rhyme=True)
    for poem in poems:
        finals = [line[-1] for line in poetry.split_lines(poem)[1::2]]
        shared = frozenset.intersection(*map(poetry.rhyme_groups, finals))
        assert shared & poetry.level_rhyme_groups(), poem


def test_rhyme_characters_are_not_repeated_where_the_vocabulary_has_others(
    model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast
) -> None:
    """重韵 (the same rhyme character twice) is a fault: the decoder picks a new one when it can."""
    poems, _ = generate(model, tokenizer, "七言律诗", seed=4, rhyme_group="尤")  # 尤 has several here
    for poem in poems:
        finals = [line[-1] for line in poetry.split_lines(poem)[1::2]]
        assert len(set(finals)) == len(finals), poem
    assert poetry.rhyme_rate(poems) == 1.0


def test_a_given_rhyme_group_is_kept(model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast) -> None:
    poems, _ = generate(model, tokenizer, "七言绝句", seed=3, rhyme_group="尤")
    for poem in poems:
        for line in poetry.split_lines(poem)[1::2]:
            assert "下平聲十一尤" in poetry.rhyme_groups(line[-1]), poem


def test_bad_requests_are_refused_with_the_reason(tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ValueError, match="choose one of 五言绝句"):
        FormConstrainedLogitsProcessor(tokenizer, "绝句", prompt_length=0)
    with pytest.raises(ValueError, match="rhyme group '一'"):
        FormConstrainedLogitsProcessor(tokenizer, "五言绝句", prompt_length=0, rhyme_group="一")
    backend = Tokenizer(models.WordLevel({"<|im_end|>": 0, "山": 1, "。": 2}, unk_token="<|im_end|>"))
    no_comma = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>")
    with pytest.raises(ValueError, match="no token for '，' at position 5 of 五言绝句"):
        FormConstrainedLogitsProcessor(no_comma, "五言绝句", prompt_length=0)


def test_the_punctuation_sparing_penalty_leaves_line_ends_alone(tokenizer):
    from poetry_sft.poetry.penalty import PunctuationExemptRepetitionPenalty, punctuation_token_ids

    exempt = punctuation_token_ids(tokenizer)
    texts = {tokenizer.convert_ids_to_tokens(i) for i in exempt}
    assert {"，", "。", "。\n", "，\n"} <= texts and "海流。" not in texts and "山" not in texts
    comma, shan = tokenizer.convert_tokens_to_ids("，"), tokenizer.convert_tokens_to_ids("山")
    seen = torch.tensor([[shan, comma, shan, comma]])  # both already in the text: both would be penalised
    scores = torch.full((1, len(tokenizer)), 2.0)
    spared = PunctuationExemptRepetitionPenalty(1.5, exempt)(seen, scores.clone())
    plain = LogitsProcessorList([RepetitionPenalty(1.5)])(seen, scores.clone())
    assert spared[0, comma] == 2.0 and plain[0, comma] == pytest.approx(2.0 / 1.5)  # the line may end
    assert spared[0, shan] == pytest.approx(2.0 / 1.5) == plain[0, shan].item()  # 山 still discouraged
    untouched = [i for i in range(len(tokenizer)) if i not in (comma, shan)]
    assert torch.equal(spared[0, untouched], scores[0, untouched])
