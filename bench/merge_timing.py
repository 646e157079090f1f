"""Merge (and GGUF export) of a LoRA run at Qwen3-0.6B's shape on CPU: the seconds each part takes.

    python -m bench.merge_timing --out bench/results/merge_0.6b_cpu.json    # about 10 minutes on 2 cores

Trains a 2-step LoRA run of the random model with Qwen3-0.6B's exact shape (model=qwen3_0.6b_random:
28 layers, the 151,936-token vocabulary, tied embeddings, bf16 on disk as the Hub's model), batch 1, on
poems from poems.parquet. Then, each as its own process, as a user runs them:

1. `poetry-sft merge RUN` — the default: the merge and its cheap check (the logits of six prompts with a
   poem each, trained vs merged model);
2. `poetry-sft merge RUN --poems N` — the same, plus N greedy poems written by both models;
3. `poetry-sft export RUN --quant f16` (skip with --no-export).

Reports each command's wall seconds, the parts merge_check.json records, and the sizes on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_hardware import SHARED_POEMS, _poem_subset

TRAIN = [
    "model=qwen3_0.6b_random",
    "method=lora",
    "hardware=8gb",
    "hardware.per_device_train_batch_size=1",
    "hardware.gradient_accumulation_steps=1",
    "train.max_steps=2",
    "train.eval_steps=100000",
    "train.save_steps=100000",
    "data.eval_size=4",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poems", type=int, default=1, help="greedy poems for the second merge (default 1)")
    parser.add_argument("--no-export", action="store_true", help="skip the f16 GGUF export")
    parser.add_argument("--data", type=Path, default=SHARED_POEMS, help="poems.parquet")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"skip: {args.data} not found (pass --data path/to/poems.parquet)")

    with tempfile.TemporaryDirectory(prefix="merge_timing_") as tmp:
        work = Path(tmp)
        data = _poem_subset(args.data, 500, work / "poems.parquet")
        run = work / "run"
        results: dict = {"command": "python -m bench.merge_timing " + " ".join(sys.argv[1:])}
        results["train"] = _timed([*TRAIN, f"data.path={data}", f"run_dir={run}"])
        for name, extra in (("merge", []), (f"merge --poems {args.poems}", ["--poems", str(args.poems)])):
            out = work / name.replace(" ", "_")
            results[name] = _timed(["merge", str(run), "--out", str(out), *extra])
            results[name]["check"] = json.loads((out / "merge_check.json").read_text(encoding="utf-8"))
            results[name]["merged_MB"] = round(_size(out) / 1e6, 1)
        results["base_weights_MB"] = round(_size(_base_dir(run)) / 1e6, 1)
        if not args.no_export:
            results["export f16"] = _timed(
                ["export", str(run), "--quant", "f16", "--out", str(work / "gguf")]
            )
            results["export f16"]["gguf_MB"] = round(_size(work / "gguf", "*.gguf") / 1e6, 1)
    print(json.dumps(results, indent=2, ensure_ascii=False))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


def _timed(verb_args: list[str]) -> dict:
    load = os.getloadavg()[0]
    started = time.perf_counter()
    command = [sys.executable, "-m", "poetry_sft", *verb_args]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        sys.exit(f"{' '.join(verb_args[:2])} failed:\n{proc.stderr[-3000:]}")
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "load_avg_1min": [round(load, 2), round(os.getloadavg()[0], 2)],  # before, after
        "printed": proc.stdout.strip().splitlines()[-4:],
    }


def _base_dir(run: Path) -> Path:
    from poetry_sft.model.loading import resolve_model_path
    from poetry_sft.run.artifacts import load_run_config

    return Path(resolve_model_path(load_run_config(run).model))


def _size(folder: Path, pattern: str = "*.safetensors") -> int:
    return sum(f.stat().st_size for f in folder.glob(pattern))


if __name__ == "__main__":
    main()
