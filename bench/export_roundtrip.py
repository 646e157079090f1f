"""How close is each GGUF export to the merged model? Prints max |Δlogit| and greedy agreement per quant.

    python -m bench.export_roundtrip [RUN]     # default: trains the tiny test run of tests/test_export.py

Without RUN it trains that run (tiny Qwen3 with the qwen_small BPE vocabulary, head size 128, 40 LoRA
steps that memorise four quatrains; about a minute on CPU) into a temporary directory. Each quant is
exported, loaded back with transformers' GGUF reader, and compared with the merged HF model on the
prompts of four titles: the largest logit difference over every position, and how many greedy poems
(40 tokens) are identical.

    python -m bench.export_roundtrip --llama-cpp [RUN]   # also through llama.cpp itself

With `--llama-cpp` each GGUF is also loaded by llama.cpp (llama-cpp-python, built from source: see
docs/real-size.md) and compared the same way: its logits at every position of the four prompts, and its
greedy poems. llama.cpp runs with weight repacking off (`llama_cpp_model`): with it on, q8_0 crashes in
the AMX repack on CPUs that have AMX.
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


def llama_cpp_model(gguf_file: Path, n_ctx: int = 512, logits_all: bool = False):
    """llama.cpp's model through llama-cpp-python, with weight repacking off (llama-cli's --no-repack).
    llama-cpp-python 0.3.36 has no option for it (an unknown keyword such as use_extra_bufts=False is
    silently ignored), so its default model parameters are wrapped while the model loads."""
    import llama_cpp
    from llama_cpp import llama_cpp as lib

    defaults = lib.llama_model_default_params

    def no_repack():
        params = defaults()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = no_repack
    try:
        return llama_cpp.Llama(model_path=str(gguf_file), n_ctx=n_ctx, logits_all=logits_all, verbose=False)
    finally:
        lib.llama_model_default_params = defaults


def llama_cpp_greedy(llm, prompt_ids: list[int], end_id: int, max_tokens: int, penalty: float, last_n: int):
    """Greedy token ids from llama.cpp's own samplers (repeat penalty over the last `last_n` tokens, then
    greedy), fed as llama-server and llama-completion feed them: the prompt's tokens first, so that the
    penalty window holds prompt and poem as transformers' does."""
    from llama_cpp import llama_cpp as lib

    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    lib.llama_sampler_chain_add(
        chain, lib.llama_sampler_init_penalties(llm.n_vocab(), last_n, penalty, 0.0, 0.0)
    )
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
    try:
        for token in prompt_ids:
            lib.llama_sampler_accept(chain, token)
        llm.reset()
        llm.eval(prompt_ids)
        out: list[int] = []
        while len(out) < max_tokens:
            token = lib.llama_sampler_sample(chain, llm.ctx, -1)  # samples and accepts
            if token == end_id:
                break
            out.append(token)
            llm.eval([token])
        return out
    finally:
        lib.llama_sampler_free(chain)


def measure(run_dir: Path, root: Path, with_llama_cpp: bool = False) -> list[dict]:
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
        row = {
            "quant": quant,
            "MiB": round(result.gguf_file.stat().st_size / 2**20, 2),
            "max_abs_logit_diff": round(diff, 4),
            "logit_scale": round(scale, 2),
            "greedy_poems_identical": f"{same}/{len(TITLES)}",
        }
        if with_llama_cpp:
            row.update(_through_llama_cpp(result.gguf_file, model, tokenizer, cfg, ours))
        rows.append(row)
    return rows


def _through_llama_cpp(gguf_file: Path, model, tokenizer, cfg, ours: list[str]) -> dict:
    """The same comparison with llama.cpp reading the file: logits at every prompt position, greedy poems."""
    import numpy as np
    import torch

    from poetry_sft.data.prompts import generation_prompt

    llm = llama_cpp_model(gguf_file, logits_all=True)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    diff, same = 0.0, 0
    for title, poem in zip(TITLES, ours, strict=True):
        ids = tokenizer(generation_prompt(tokenizer, cfg.data, title)).input_ids
        llm.reset()
        llm.eval(ids)
        theirs = np.asarray(llm.scores[: len(ids)])
        with torch.no_grad():
            hf = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
        diff = max(diff, float(np.abs(hf - theirs[:, : hf.shape[1]]).max()))
        # the penalty over the whole text, as transformers applies it (ours: 40 new tokens)
        window = len(ids) + 40
        greedy = llama_cpp_greedy(llm, ids, end, 40, penalty=cfg.generation.repetition_penalty, last_n=window)
        same += tokenizer.decode(greedy) == poem
    return {
        "llama_cpp_max_abs_logit_diff": round(diff, 4),
        "llama_cpp_greedy_identical": f"{same}/{len(TITLES)}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, help="a finished run (default: train the test run)")
    parser.add_argument("--llama-cpp", action="store_true", help="also through llama.cpp (llama-cpp-python)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("POETRY_SFT_CACHE", str(Path(tmp) / "cache"))
        run_dir = args.run or train_test_run(Path(tmp))
        rows = measure(run_dir, Path(tmp) / "exports", args.llama_cpp)
    readers = "transformers' GGUF reader" + (" and llama.cpp" if args.llama_cpp else "")
    print(f"\nGGUF round trip vs the merged model ({run_dir.name}; {readers})")
    columns = ["quant", "MiB", "max_abs_logit_diff", "logit_scale", "greedy_poems_identical"]
    if args.llama_cpp:
        columns += ["llama_cpp_max_abs_logit_diff", "llama_cpp_greedy_identical"]
    print("| " + " | ".join(c.replace("_", " ") for c in columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
