"""How close is each GGUF export to the merged model? Prints max |Δlogit| and greedy agreement per quant.

    python -m bench.export_roundtrip [RUN]     # default: trains the tiny test run of tests/test_export.py

Without RUN it trains that run (tiny Qwen3 with the qwen_small BPE vocabulary, head size 128, 40 LoRA
steps that memorise four quatrains; about a minute on CPU) into a temporary directory. Each quant is
exported, loaded back with transformers' GGUF reader, and compared with the merged HF model on the
prompts of four titles: the largest logit difference over every position, and how many greedy poems
(40 tokens) are identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TITLES = ["静夜思", "春晓", "相思", "登鹳雀楼"]
QUATRAINS = [  # tests/conftest.py's POEMS
    {"title": "静夜思", "content": "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"},
    {"title": "登鹳雀楼", "content": "白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。"},
    {"title": "春晓", "content": "春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。"},
    {"title": "相思", "content": "红豆生南国，春来发几枝。\n愿君多采撷，此物最相思。"},
]
TEST_RUN = [  # tests/conftest.py tiny_overrides + tests/test_export.py BPE_MODEL and MEMORISE
    "model=tiny", "method=lora", "hardware=8gb", "data.eval_size=4", "data.deduplicate=false",
    "hardware.per_device_train_batch_size=4", "hardware.gradient_accumulation_steps=1",
    "hardware.max_length=96", "train.max_steps=40", "train.logging_steps=10", "train.eval_steps=1000",
    "train.save_steps=1000", "model.random_init.vocabulary=qwen_small", "model.random_init.head_dim=128",
    "method.learning_rate=2e-2", "method.target_modules=[all-linear]", "method.r=16",
]  # fmt: skip


def train_test_run(root: Path) -> Path:
    from poetry_sft.config.compose import run_config
    from poetry_sft.train.sft import train

    poems = root / "poems.jsonl"
    rows = [{**p, "author": "李白"} for p in QUATRAINS] * 8
    poems.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    train(run_config([*TEST_RUN, f"data.path={poems}"]), root / "run")
    return root / "run"


def measure(run_dir: Path, root: Path) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from poetry_sft.data.prompts import generation_prompt
    from poetry_sft.evaluate.generate import generate_poems
    from poetry_sft.ship.export import QUANTS, export_run
    from poetry_sft.ship.merge import merged_model

    model, tokenizer, cfg, _ = merged_model(run_dir, compare=False)
    greedy = dataclasses.replace(cfg.generation, do_sample=False, max_new_tokens=40, form=None)
    ours = [p.content for p in generate_poems(model, tokenizer, TITLES, cfg.data, greedy, constrain=False)]
    rows = []
    for quant in QUANTS:
        result = export_run(run_dir, quant=quant, out=root / quant)
        loaded = AutoModelForCausalLM.from_pretrained(result.out, gguf_file=result.gguf_file.name).eval()
        diff = scale = 0.0
        with torch.no_grad():
            for title in TITLES:
                ids = tokenizer(generation_prompt(tokenizer, cfg.data, title), return_tensors="pt").input_ids
                a, b = model(input_ids=ids).logits, loaded(input_ids=ids).logits
                diff, scale = max(diff, (a - b).abs().max().item()), max(scale, a.abs().max().item())
        poems = generate_poems(loaded, tokenizer, TITLES, cfg.data, greedy, constrain=False)
        same = sum(x == p.content for x, p in zip(ours, poems, strict=True))
        rows.append(
            {
                "quant": quant,
                "MiB": round(result.gguf_file.stat().st_size / 2**20, 2),
                "max_abs_logit_diff": round(diff, 4),
                "logit_scale": round(scale, 2),
                "greedy_poems_identical": f"{same}/{len(TITLES)}",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, help="a finished run (default: train the test run)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("POETRY_SFT_CACHE", str(Path(tmp) / "cache"))
        run_dir = args.run or train_test_run(Path(tmp))
        rows = measure(run_dir, Path(tmp) / "exports")
    print(f"\nGGUF round trip vs the merged model ({run_dir.name}; transformers' GGUF reader)")
    print("| quant | MiB | max abs logit diff | logit scale | greedy poems identical |")
    print("|---|---|---|---|---|")
    for r in rows:
        cells = (r["quant"], r["MiB"], r["max_abs_logit_diff"], r["logit_scale"], r["greedy_poems_identical"])
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
