"""Poems in, prompt texts out: loading (Hub or local files), column mapping, train/eval split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from poetry_sft.config import DataConfig
from poetry_sft.errors import ConfigError, ResourceNotFoundError
from poetry_sft.paths import SAMPLE_POEMS

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

# datasets builder for each local file type
_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def load_poems(cfg: DataConfig, seed: int) -> tuple[Dataset, Dataset]:
    """(train, eval) with columns `title` and `content`, shuffled with `seed`, no poem in both."""
    dataset = _load_raw(cfg)
    missing = [c for c in (cfg.title_column, cfg.content_column) if c not in dataset.column_names]
    if missing:
        raise ConfigError(
            f"data set '{cfg.path}' has no column {', '.join(map(repr, missing))}; it has "
            f"{dataset.column_names}. Fix: map the columns, e.g. data.title_column=<name> "
            "data.content_column=<name>"
        )
    dataset = dataset.select_columns([cfg.title_column, cfg.content_column])
    dataset = dataset.rename_columns({cfg.title_column: "title", cfg.content_column: "content"})
    dataset = dataset.filter(lambda row: bool(row["content"]) and isinstance(row["content"], str))
    dataset = dataset.shuffle(seed=seed)
    if cfg.max_samples is not None:
        dataset = dataset.select(range(min(cfg.max_samples, len(dataset))))
    eval_size = int(cfg.eval_size) if cfg.eval_size >= 1 else cfg.eval_size
    if isinstance(eval_size, int) and eval_size >= len(dataset):
        raise ConfigError(
            f"data.eval_size={eval_size} leaves no training rows out of {len(dataset)}: "
            "lower data.eval_size or raise data.max_samples"
        )
    split = dataset.train_test_split(test_size=eval_size, seed=seed, shuffle=False)
    return split["train"], split["test"]


def _load_raw(cfg: DataConfig) -> Dataset:
    from datasets import load_dataset

    path = SAMPLE_POEMS if cfg.path == "sample" else Path(cfg.path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in _BUILDERS)
        if not files or len({_BUILDERS[p.suffix] for p in files}) > 1:
            raise ConfigError(
                f"data.path={cfg.path} must hold files of one type ({', '.join(_BUILDERS)}); found "
                f"{[p.name for p in files] or 'none'}"
            )
        return load_dataset(_BUILDERS[files[0].suffix], data_files=[str(p) for p in files], split="train")
    if path.is_file():
        if path.suffix not in _BUILDERS:
            raise ConfigError(
                f"data.path={cfg.path}: unsupported file type; use one of {', '.join(_BUILDERS)}"
            )
        return load_dataset(_BUILDERS[path.suffix], data_files=str(path), split="train")
    if path.suffix in _BUILDERS:
        raise ConfigError(f"data.path={cfg.path}: no such file (looked in {path.resolve().parent})")
    try:
        return load_dataset(cfg.path, split=cfg.split)
    except Exception as err:  # the Hub raises a dozen types for "not reachable" / "no such data set"
        raise ResourceNotFoundError(
            f"could not load the data set '{cfg.path}' (split '{cfg.split}'): {str(err).splitlines()[0]}\n"
            "  It is neither a local file/directory nor reachable on the Hugging Face Hub (offline? typo?).\n"
            "  Fix: point at a local copy, data.path=path/to/poems.parquet (or .jsonl/.csv, with title and "
            "content columns), or use the shipped sample: data=sample"
        ) from err


def generation_prompt(tokenizer: PreTrainedTokenizerBase, cfg: DataConfig, title: str) -> str:
    """The text a model sees before writing the poem for `title`: exactly the training prompt."""
    return cfg.prompt_template.format(title=title)


def make_formatting_func(prompt_template: str) -> Callable[[dict], str]:
    """Prompt + poem as one text; SFTTrainer appends the tokenizer's eos so the model learns to stop."""

    def formatting_func(example: dict) -> str:
        return prompt_template.format(title=example["title"]) + example["content"]

    return formatting_func
