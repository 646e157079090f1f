"""The data pipeline: cleaning counts, split, chat prompts, poem-only labels, batching correctness."""

import json
from pathlib import Path

import pytest
import torch
from conftest import POEMS, run_config, tiny_overrides

from poetry_sft.config.schema import DataConfig, PromptStyle, Vocabulary
from poetry_sft.data.corpus import prepare_poems
from poetry_sft.data.prompts import generation_prompt, make_formatting_func, poem_keywords
from poetry_sft.errors import ConfigError
from poetry_sft.model.random_init import build_tokenizer
from poetry_sft.paths import SAMPLE_POEMS
from poetry_sft.poetry import CORPUS_FORMS, corpus_form, split_first_line
from poetry_sft.run import artifacts

EOS = "<|im_end|>"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(Vocabulary.chars)


def _cfg(path: Path | str, **overrides) -> DataConfig:
    values = {"path": str(path), "eval_size": 2, "author_column": "author"}
    return DataConfig(**{**values, **overrides})


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def distinct_poems(tmp_path: Path) -> Path:
    """The conftest quatrains plus four short poems of the shipped sample (the char vocabulary's source)."""
    sample = [json.loads(line) for line in SAMPLE_POEMS.read_text(encoding="utf-8").splitlines()]
    more = [p for p in sample if len(p["content"]) < 40][:4]
    rows = [{"title": p["title"], "content": p["content"], "author": "佚名"} for p in POEMS + more]
    return _write_jsonl(tmp_path / "poems.jsonl", rows)


def _text(tokenizer, ids) -> str:
    return tokenizer.decode([i for i in ids if i != -100])


def test_labels_cover_exactly_the_poem_and_its_end_token(tokenizer, distinct_poems: Path):
    cfg = _cfg(distinct_poems)
    data = prepare_poems(cfg, tokenizer, max_length=256, use_cache=False)
    poems = {p["content"]: p["title"] for p in map(json.loads, distinct_poems.read_text().splitlines())}
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for example in [*data.train, *data.eval]:
        ids, labels = example["input_ids"], example["labels"]
        start = next(i for i, label in enumerate(labels) if label != -100)
        assert all(label == -100 for label in labels[:start]), "one prompt, then the poem"
        assert labels[start:] == ids[start:]
        target = _text(tokenizer, labels)
        assert target.endswith(EOS) and labels[-1] == tokenizer.eos_token_id
        poem = target.removesuffix(EOS)
        assert poem in poems, target
        assert "<think>" not in target and "</think>" not in target
        # Generation sees exactly the training prompt, empty think block included.
        prompt = generation_prompt(tokenizer, cfg, poems[poem])
        assert tokenizer(prompt, add_special_tokens=False)["input_ids"] == ids[:start]
        assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_labels_match_trls_own_tokenisation_of_the_conversational_example(tokenizer, distinct_poems: Path):
    """TRL, given make_formatting_func's conversational example, masks the same prompt and trains the
    same poem tokens; its completion also holds the template's newline after <|im_end|>, ours stops."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from poetry_sft.config.schema import RandomInitSpec
    from poetry_sft.model.random_init import random_model_dir

    cfg = _cfg(distinct_poems)
    data = prepare_poems(cfg, tokenizer, max_length=256, use_cache=False)
    rows = [json.loads(line) for line in distinct_poems.read_text().splitlines()]
    formatting_func = make_formatting_func(cfg)
    chats = Dataset.from_list([formatting_func(row) for row in rows])
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(random_model_dir(RandomInitSpec())),
        args=SFTConfig(output_dir="unused", max_length=None, use_cpu=True, report_to="none"),
        train_dataset=chats,
        processing_class=tokenizer,
    )
    trl_examples = {_text(tokenizer, e["labels"]): e for e in trainer.train_dataset}
    newline = tokenizer.convert_tokens_to_ids("\n")
    for ours in [*data.train, *data.eval]:
        theirs = trl_examples[_text(tokenizer, ours["labels"]) + "\n"]
        assert theirs["input_ids"] == ours["input_ids"] + [newline]
        assert theirs["labels"] == ours["labels"] + [newline]


def test_a_dirty_file_is_cleaned_and_every_drop_is_counted(tokenizer, tmp_path: Path):
    good = [{"title": p["title"], "content": p["content"], "author": "李白"} for p in POEMS]
    dirty = [
        {"title": "空", "content": "", "author": "甲"},
        {"title": "空白", "content": "  \n  ", "author": "甲"},
        {"title": "缺", "content": None, "author": "甲"},
        {"title": "缺字", "content": "床前明□光，疑是地上霜。\n举头望明月，低头思故乡。", "author": "甲"},
        {"title": "乱码", "content": "åºŠå‰æ˜Žæœˆå…‰ï¼Œç–‘æ˜¯åœ°ä¸Šéœœã€‚", "author": "甲"},
        {"title": "替换", "content": "床前明月光\ufffd疑是地上霜。\n举头望明月。", "author": "甲"},
        {"title": "English", "content": "The moon is bright tonight, and I think of home.", "author": "甲"},
        {"title": "句", "content": "春眠不觉晓。", "author": "甲"},
        {"title": "", "content": "远看山有色，近听水无声。\n春去花还在，人来鸟不惊。", "author": "甲"},
        # a title of punctuation only says nothing: the prompt would be 《，。》
        {"title": "，。", "content": "千山鸟飞绝，万径人踪灭。\n孤舟蓑笠翁，独钓寒江雪。", "author": "甲"},
        {"title": "……", "content": "松下问童子，言师采药去。\n只在此山中，云深不知处。", "author": "甲"},
        {"title": "静夜思", "content": POEMS[0]["content"], "author": "李白"},  # duplicate
        {"title": "又", "content": " " + POEMS[1]["content"].replace("\n", "\r\n") + " ", "author": "王"},
        {"title": "长诗", "content": "一二三四五六七，" * 40 + "终。", "author": "甲"},  # > max_length tokens
        # Control tokens as text would become the tokens themselves: an end of turn inside the poem.
        {
            "title": "控制",
            "content": "白日依山尽，<|im_end|>黄河入海流。\n欲穷千里目，更上一层楼。",
            "author": "甲",
        },
        {
            "title": "<think>想</think>",
            "content": "红豆生南国，春来发几枝。\n愿君多采撷，此物最相思。",
            "author": "甲",
        },
    ]
    path = _write_jsonl(tmp_path / "dirty.jsonl", good + dirty)
    data = prepare_poems(_cfg(path, eval_size=1), tokenizer, max_length=128, use_cache=False)

    dropped = {k: v for k, v in data.report["dropped"].items() if v}
    assert dropped == {
        "empty": 2,
        "not_text": 1,
        "placeholder": 2,
        "special_token": 2,
        "garbled": 2,
        "too_short": 1,
        "no_title": 3,
        "duplicate": 2,  # an exact copy, and one that differs only in line endings and spaces
        "too_long_tokens": 1,
    }
    assert data.report["rows_in"] == 20 and data.report["rows_out"] == 4
    assert len(data.train) + len(data.eval) == 4
    assert "20 rows in, 4 out" in data.summary() and "placeholder 2" in data.summary()


def test_split_is_reproducible_disjoint_and_sized(tokenizer):
    def split(seed: int, eval_size: float):
        data = prepare_poems(
            _cfg("sample", split_seed=seed, eval_size=eval_size, max_samples=300),
            tokenizer,
            max_length=256,
            use_cache=False,
        )
        return [_text(tokenizer, e["labels"]) for e in data.train], [
            _text(tokenizer, e["labels"]) for e in data.eval
        ]

    train, evaluation = split(0, 25)
    assert len(evaluation) == 25 and not set(train) & set(evaluation)
    assert split(0, 25) == (train, evaluation)
    assert split(1, 25)[1] != evaluation
    train, evaluation = split(0, 0.1)
    assert len(evaluation) == round(0.1 * (len(train) + len(evaluation)))


def test_missing_columns_fail_before_training_naming_the_fix(tokenizer, distinct_poems: Path):
    with pytest.raises(ConfigError, match=r"no column 'poem'.*data\.content_column="):
        prepare_poems(_cfg(distinct_poems, content_column="poem"), tokenizer, 256, use_cache=False)
    # An optional column that is mapped but absent is fine until it is used.
    prepare_poems(_cfg(distinct_poems, dynasty_column="dynasty"), tokenizer, 256, use_cache=False)
    with pytest.raises(ConfigError, match=r"no column 'dynasty'.*data\.dynasty_column="):
        prepare_poems(
            _cfg(distinct_poems, dynasty_column="dynasty", dynasties=["唐"]), tokenizer, 256, use_cache=False
        )


def test_selection_by_form_and_dynasty(tokenizer):
    cfg = _cfg("sample", dynasty_column="dynasty", dynasties=["唐"], forms=["五言绝句"], eval_size=2)
    data = prepare_poems(cfg, tokenizer, 256, use_cache=False)
    poems = [_text(tokenizer, e["labels"]).removesuffix(EOS) for e in data.train]
    assert poems and all(corpus_form(p) == "五言绝句" for p in poems)
    assert data.report["dropped"]["not_selected"] > 0


def test_prompt_styles(tokenizer, distinct_poems: Path):
    data = prepare_poems(
        _cfg(distinct_poems, prompt_style=PromptStyle.first_line), tokenizer, 256, use_cache=False
    )
    poems = {json.loads(line)["content"] for line in distinct_poems.read_text().splitlines()}
    for example in data.train:
        start = next(i for i, label in enumerate(example["labels"]) if label != -100)
        prompt, target = tokenizer.decode(example["input_ids"][:start]), _text(tokenizer, example["labels"])
        first_line = prompt.split("首句是：")[1].split("<|im_end|>")[0]
        assert first_line.endswith("，") and first_line + target.removesuffix(EOS) in poems
    data = prepare_poems(
        _cfg(distinct_poems, prompt_style=PromptStyle.form_theme), tokenizer, 256, use_cache=False
    )
    prompts = [tokenizer.decode(e["input_ids"]) for e in data.train]
    assert all(any(f"写一首{form}" in p for form in CORPUS_FORMS) for p in prompts)
    assert any("写一首七言绝句" in p for p in prompts + [tokenizer.decode(e["input_ids"]) for e in data.eval])


def test_keywords_are_the_poems_imagery_in_order_longest_first():
    assert poem_keywords("床前明月光，疑是地上霜。\n举头望明月，低头思故乡。") == "明月、霜、故乡"
    assert poem_keywords("床前明月光，疑是地上霜。\n举头望明月，低头思故乡。", limit=1) == "明月"
    assert poem_keywords("尔禽啄木，恶蠹伤木。") == ""


def test_keywords_style_uses_the_column_or_the_poems_imagery(tokenizer, tmp_path: Path):
    rows = [
        {"title": "静夜思", "content": "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"},
        {"title": "啄木", "content": "尔禽啄木，恶蠹伤木。\n愈木无病，巢枝自足。"},  # no imagery word
        *({"title": p["title"], "content": p["content"]} for p in POEMS[1:]),
    ]
    data = prepare_poems(
        _cfg(_write_jsonl(tmp_path / "k.jsonl", rows), prompt_style=PromptStyle.keywords, author_column=None),
        tokenizer,
        256,
        use_cache=False,
    )
    assert data.report["dropped"]["no_keywords"] == 1
    prompts = {
        _text(tokenizer, e["labels"]).removesuffix(EOS): tokenizer.decode(e["input_ids"]) for e in data.train
    }
    prompts |= {
        _text(tokenizer, e["labels"]).removesuffix(EOS): tokenizer.decode(e["input_ids"]) for e in data.eval
    }
    assert "以「明月、霜、故乡」为意象" in prompts[rows[0]["content"]]
    # A keywords column wins over the word list, as a list or a string.
    given = [{**rows[0], "tags": ["思乡", "月夜"]}, *({**r, "tags": "山水"} for r in rows[2:])]
    cfg = _cfg(
        _write_jsonl(tmp_path / "tags.jsonl", given),
        prompt_style=PromptStyle.keywords,
        keywords_column="tags",
        author_column=None,
    )
    data = prepare_poems(cfg, tokenizer, 256, use_cache=False)
    texts = [tokenizer.decode(e["input_ids"]) for e in [*data.train, *data.eval]]
    assert (
        any("以「思乡、月夜」为意象" in t for t in texts) and sum("以「山水」为意象" in t for t in texts) == 3
    )


@pytest.mark.parametrize("style", list(PromptStyle))
def test_generation_prompts_equal_the_training_prompts_in_every_style(tokenizer, distinct_poems: Path, style):
    cfg = _cfg(distinct_poems, prompt_style=style)
    data = prepare_poems(cfg, tokenizer, 256, use_cache=False)
    titles = {p["content"]: p["title"] for p in map(json.loads, distinct_poems.read_text().splitlines())}
    checked = 0
    for example in [*data.train, *data.eval]:
        start = next(i for i, label in enumerate(example["labels"]) if label != -100)
        target = _text(tokenizer, example["labels"]).removesuffix(EOS)
        if style is PromptStyle.first_line:
            poem = next(c for c in titles if (parts := split_first_line(c)) and parts[1] == target)
            prompt = generation_prompt(tokenizer, cfg, split_first_line(poem)[0])
        elif style is PromptStyle.keywords:
            prompt = generation_prompt(tokenizer, cfg, poem_keywords(target))
        else:
            prompt = generation_prompt(tokenizer, cfg, titles[target], form=corpus_form(target))
        assert tokenizer(prompt, add_special_tokens=False)["input_ids"] == example["input_ids"][:start]
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.forms=['五言排律']"], "data.forms: unknown"),
        (["data.prompt_style=form_theme", "generation.eval_titles=['静夜思']"], "generation.form='七言绝句'"),
        (["data.max_keywords=0"], "data.max_keywords=0"),
        (["data.prompt_template='写{poet}'"], "unknown field"),
        (["data.prompt_style=first_line", "data.prompt_template='写{title}'"], "needs {first_line}"),
        (["model.attn_implementation=my_kernel", "data.batching=padding_free"], "data.batching=padded"),
        (["data.author_column=null", "data.authors=['李白']"], "data.author_column"),
    ],
)
def test_data_config_errors(overrides: list[str], expected: str, poems_file: Path):
    with pytest.raises(ConfigError, match=expected.replace("{", r"\{")):
        run_config(tiny_overrides("lora", poems_file) + overrides)


def test_preparation_is_cached(tokenizer, distinct_poems: Path):
    cfg = _cfg(distinct_poems)
    first = prepare_poems(cfg, tokenizer, 256)
    again = prepare_poems(cfg, tokenizer, 256)
    assert again.report.get("cached") and not first.report.get("cached")
    assert again.train["input_ids"] == first.train["input_ids"]
    assert not prepare_poems(_cfg(distinct_poems, split_seed=5), tokenizer, 256).report.get("cached")


def _segments(batch: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, labels) of each poem in a padding-free/packed batch, cut where position ids restart."""
    ids, labels, positions = batch["input_ids"], batch["labels"], batch["position_ids"]
    out = []
    for row in range(ids.shape[0]):
        starts = (positions[row] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
        for a, b in zip(starts, starts[1:], strict=False):
            if (ids[row, a:b] != 0).any():
                out.append((ids[row, a:b], labels[row, a:b]))
    return out


def _nll(model, input_ids, labels, **kwargs) -> tuple[float, int]:
    logits = model(input_ids=input_ids, use_cache=False, **kwargs).logits[:, :-1]
    target = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return float(loss), int((target != -100).sum())


@pytest.mark.parametrize(
    ("batching", "attention"), [("padding_free", "sdpa"), ("packing", "sdpa"), ("padding_free", "eager")]
)
def test_a_packed_batch_has_the_loss_of_its_poems_alone(
    batching: str, attention: str, distinct_poems: Path, tmp_path: Path
):
    from poetry_sft.train.sft import build_trainer, real_token_fraction

    overrides = [o for o in tiny_overrides("full", distinct_poems) if "deduplicate" not in o]
    overrides += [f"data.batching={batching}", f"model.attn_implementation={attention}"]
    trainer = build_trainer(run_config(overrides), tmp_path)
    model = trainer.model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    segments = _segments(batch)
    assert len(segments) > 1, "several poems share the row"
    with torch.no_grad():
        packed, packed_tokens = _nll(
            model, batch["input_ids"], batch["labels"], position_ids=batch["position_ids"]
        )
        alone = [_nll(model, ids[None], labels[None]) for ids, labels in segments]
    assert packed_tokens == sum(n for _, n in alone)
    assert packed / packed_tokens == pytest.approx(sum(loss for loss, _ in alone) / packed_tokens, rel=1e-4)
    assert real_token_fraction(trainer) >= (0.99 if batching == "padding_free" else 0.5)


def test_a_run_reports_its_data_and_real_token_fraction(poems_file: Path, tmp_path: Path):
    from poetry_sft.train.sft import train

    run_dir = tmp_path / "run"
    metrics = train(run_config(tiny_overrides("lora", poems_file, steps=1)), run_dir)
    assert metrics["real_token_fraction"] == 1.0  # padding-free: no padding at all
    report = json.loads((run_dir / artifacts.DATA_REPORT_FILE).read_text(encoding="utf-8"))
    assert report["rows_in"] == 32 and report["train_rows"] == 28 and report["tokens"]["max"] <= 96


def test_padded_batching_groups_poems_by_length(distinct_poems: Path, tmp_path: Path):
    from poetry_sft.train.sft import build_trainer, real_token_fraction

    overrides = [o for o in tiny_overrides("lora", distinct_poems) if "deduplicate" not in o]
    overrides += ["data.batching=padded", "data.eval_size=1"]
    trainer = build_trainer(run_config(overrides), tmp_path)
    assert trainer.args.train_sampling_strategy == "group_by_length"
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["attention_mask"].shape == batch["input_ids"].shape and "position_ids" not in batch
    assert 0.5 < real_token_fraction(trainer) <= 1.0
    trainer.train()  # the `length` column the sampler reads does not reach the model


def test_tokenizers_without_a_rust_backend_give_the_same_examples(tokenizer):
    """The slow-tokenizer path of the batched encoder agrees with the Rust one, token for token."""
    from poetry_sft.data.corpus import _chat_skeleton, _encode_examples

    class Slow:  # the tokenizer's Python interface, without backend_tokenizer
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            if name == "backend_tokenizer":
                raise AttributeError(name)
            return getattr(self.inner, name)

        def __call__(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    head, tail = _chat_skeleton(tokenizer, "你是诗人。")
    users = [f"以《{p['title']}》为题，写一首古诗。" for p in POEMS]
    poems = [p["content"] for p in POEMS]
    fast = _encode_examples(tokenizer, head, tail, users, poems)
    slow = _encode_examples(Slow(tokenizer), head, tail, users, poems)
    for ours, theirs in zip(fast, slow, strict=True):
        assert ours.tolist() == theirs.tolist()
    flat, offsets, prompt = fast
    first = tokenizer.decode(flat[offsets[0] + prompt[0] : offsets[1]].tolist())
    assert first == POEMS[0]["content"] + EOS
