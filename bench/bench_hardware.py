"""Peak memory and real-token throughput of every method x hardware pair, against the seed recipe.

Each pair trains N steps through the real command (`poetry-sft train ...`, one process per pair, so
no CUDA memory leaks between them) with `hardware.emulate_budget=true`: on a big GPU the process is
capped at the profile's VRAM, as on the consumer card. Data: real poem lengths from poems.parquet.

    python -m bench.bench_hardware                       # GPU: Qwen3-0.6B shape, real Qwen vocabulary
    python -m bench.bench_hardware --model tiny --steps 3 --rows 256   # CPU smoke run (what the test does)

Baseline = the seed recipe: fp32 full fine-tuning, every 1,000-row map batch padded to its longest,
labels = input_ids (prompt trained too), pad = eos, no packing. It runs on the same data and steps,
with no budget cap (it would not fit one); the ratio compares real (non-pad) tokens per second.
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

SHARED_POEMS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "poems.parquet"
SEED_PROMPT = "请创作一首古诗，主题关于{title}：\n"
PAIRS = ("qlora@4gb", "lora@4gb", "qlora@8gb", "lora@8gb", "full@8gb", "full@4gb")
# Dense bf16 peak of the GPUs this is likely to meet, TFLOP/s (vendor sheets; no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0, "4090": 165.0}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen3_0.6b_random", help="conf/model option")
    parser.add_argument("--pairs", default=",".join(PAIRS[:5]), help="method@hardware list")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=20_000, help="poems sampled from poems.parquet")
    parser.add_argument("--poems", type=Path, default=SHARED_POEMS)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--baseline-job", type=Path, help=argparse.SUPPRESS)  # internal: one baseline run
    args = parser.parse_args(argv)
    if args.baseline_job:
        return _baseline_job(args.baseline_job)
    if not args.poems.is_file():
        sys.exit(f"skip: {args.poems} not found (pass --poems path/to/poems.parquet)")

    work = Path(tempfile.mkdtemp(prefix="bench_hardware_"))
    data = _poem_subset(args.poems, args.rows, work / "poems.parquet")
    results = [_run_pair(pair, args, data, work) for pair in args.pairs.split(",")]
    if not args.no_baseline:
        results.append(_run_baseline(args, data, work))
    baseline = next((r for r in results if r["run"] == "seed baseline" and r.get("tokens_per_s")), None)
    for r in results:
        if baseline and r.get("tokens_per_s"):
            r["x_baseline"] = round(r["tokens_per_s"] / baseline["tokens_per_s"], 2)
    print(_table(results, args))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


def _poem_subset(source: Path, rows: int, target: Path) -> Path:
    import pandas as pd

    poems = pd.read_parquet(source, columns=["title", "content"])
    poems.sample(n=min(rows, len(poems)), random_state=0).to_parquet(target)
    return target


def _common_overrides(args: argparse.Namespace, data: Path) -> list[str]:
    return [
        f"model={args.model}",
        f"data.path={data}",
        "data.eval_size=64",
        f"train.max_steps={args.steps}",
        "train.logging_steps=5",
        "train.eval_steps=100000",
        "train.save_steps=100000",
        "hardware.emulate_budget=true",
    ]


def _run_pair(pair: str, args: argparse.Namespace, data: Path, work: Path) -> dict:
    method, hardware = pair.split("@")
    run_dir = work / pair.replace("@", "_")
    command = [sys.executable, "-m", "poetry_sft", f"method={method}", f"hardware={hardware}"]
    command += _common_overrides(args, data) + [f"run_dir={run_dir}"]
    return _collect(pair, command, run_dir / "metrics.json", args)


def _run_baseline(args: argparse.Namespace, data: Path, work: Path) -> dict:
    job = work / "baseline"
    job.mkdir()
    spec = {
        "overrides": _common_overrides(args, data)[:2] + ["method=full", "hardware=8gb"],
        "steps": args.steps,
    }
    (job / "spec.json").write_text(json.dumps(spec))
    command = [sys.executable, "-m", "bench.bench_hardware", "--baseline-job", str(job)]
    return _collect("seed baseline", command, job / "metrics.json", args)


def _collect(name: str, command: list[str], metrics_file: Path, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    row: dict = {"run": name, "wall_s": round(time.perf_counter() - started, 1)}
    if proc.returncode != 0 or not metrics_file.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        row["error"] = "OOM" if "OutOfMemory" in proc.stderr else " | ".join(tail)[-300:]
        return row
    metrics = json.loads(metrics_file.read_text())
    row.update({k: metrics.get(k) for k in ("tokens_per_s", "trained_tokens", "train_runtime_s")})
    row["peak_gib"] = metrics.get("peak_gpu_reserved_gib", metrics.get("peak_cpu_rss_gib"))
    row["peak_allocated_gib"] = metrics.get("peak_gpu_allocated_gib")
    row["plan_gib"] = metrics.get("planned_peak_gib")
    row["mfu"] = _mfu(metrics, name)
    return row


def _mfu(metrics: dict, name: str) -> float | None:
    """Model FLOPs utilisation: 6N per token for full training, 4N for a frozen base (no weight grads)."""
    import torch

    if not torch.cuda.is_available() or not metrics.get("tokens_per_s") or not metrics.get("model_params"):
        return None
    device = torch.cuda.get_device_name(0)
    peak = next((tflops for key, tflops in PEAK_TFLOPS.items() if key in device), None)
    if peak is None:
        return None
    per_token = (6 if name.startswith("full") or name == "seed baseline" else 4) * metrics["model_params"]
    return round(metrics["tokens_per_s"] * per_token / (peak * 1e12), 3)


def _table(results: list[dict], args: argparse.Namespace) -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    lines = [
        f"bench_hardware: model={args.model}, {args.steps} steps, {args.rows} poems, device={device}",
        _row("run", "peak GiB", "plan GiB", "plan err", "real tok/s", "x seed", "MFU"),
    ]
    for r in results:
        if "error" in r:
            lines.append(f"{r['run']:<15}  failed: {r['error']}")
            continue
        err = (
            f"{(r['plan_gib'] - r['peak_gib']) / r['peak_gib']:+.0%}"
            if r.get("plan_gib") and r["peak_gib"]
            else "-"
        )
        lines.append(
            _row(
                r["run"],
                _fmt(r["peak_gib"], ".2f"),
                _fmt(r.get("plan_gib"), ".2f"),
                err,
                _fmt(r["tokens_per_s"], ".0f"),
                _fmt(r.get("x_baseline"), ".2f"),
                _fmt(r["mfu"], ".1%"),
            )
        )
    lines.append(
        "peak = torch.cuda.max_memory_reserved (CPU: process peak RSS); real tok/s counts non-pad tokens"
    )
    return "\n".join(lines)


def _row(*cells: str) -> str:
    widths = (15, 10, 10, 10, 12, 8, 7)
    return cells[0].ljust(widths[0]) + "".join(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _baseline_job(job: Path) -> None:
    """The seed recipe, reproduced: what poetry_sft replaced, measured on the same data and steps."""
    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from poetry_sft import atomic
    from poetry_sft.config.compose import run_config
    from poetry_sft.config.schema import Precision
    from poetry_sft.model.loading import load_model, load_tokenizer, resolve_model_path
    from poetry_sft.train.sft import model_params, peak_memory, sft_config

    spec = json.loads((job / "spec.json").read_text())

    overrides = spec["overrides"] + [f"train.max_steps={spec['steps']}", "train.precision=fp32"]
    overrides += [
        "train.logging_steps=5",
        "train.eval_steps=100000",
        "train.save_steps=100000",
        "data.eval_size=64",
    ]
    cfg = run_config(overrides)
    cfg.train.precision = Precision.fp32
    path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(path)
    tokenizer.pad_token = tokenizer.eos_token  # the seed's choice: the model never learns to stop
    # The seed read the rows as they are (no cleaning) and prompted with one plain template.
    train_set = Dataset.from_parquet(cfg.data.path).select_columns(["title", "content"]).shuffle(seed=0)

    def tokenize(batch: dict) -> dict:  # padded to the longest of each 1,000-row map batch
        texts = [
            SEED_PROMPT.format(title=t) + c for t, c in zip(batch["title"], batch["content"], strict=True)
        ]
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=cfg.hardware.max_length)
        encoded["labels"] = [list(ids) for ids in encoded["input_ids"]]
        return encoded

    tokenized: Dataset = train_set.map(
        tokenize, batched=True, batch_size=1000, remove_columns=["title", "content"]
    )
    args = sft_config(cfg, job)
    args.bf16 = args.fp16 = False
    args.eval_strategy = "no"
    args.dataset_kwargs = {"skip_prepare_dataset": True}
    model = load_model(cfg, path).float()
    trainer = SFTTrainer(model=model, args=args, train_dataset=tokenized, processing_class=tokenizer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    real = int(trainer.state.num_input_tokens_seen)
    atomic.write_json(
        job / "metrics.json",
        {
            "tokens_per_s": round(real / seconds, 1),
            "trained_tokens": real,
            "train_runtime_s": round(seconds, 2),
            "model_params": model_params(model),
            **peak_memory(),
        },
    )


if __name__ == "__main__":
    main()
