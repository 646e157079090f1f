"""Peak memory and real-token throughput of every method x hardware pair, against the seed recipe.

Each pair trains N steps through the real command (`poetry-sft train ...`, one process per pair, so
no CUDA memory leaks between them) with `hardware.emulate_budget=true`: on a big GPU the process is
capped at the profile's VRAM, as on the consumer card. Data: real poem lengths from poems.parquet.

    python -m bench.bench_hardware                       # GPU: Qwen3-0.6B shape, real Qwen vocabulary
    python -m bench.bench_hardware --cpu-real-shape --out bench/results/cpu_real_shape.json
                                                         # CPU, 0.6B shape, batch 1, 3 rounds (~11 min)
    python -m bench.bench_hardware --model tiny --steps 3 --rows 256   # CPU smoke run (what the test does)

Every run, ours and the seed's, follows one evaluation policy: it evaluates once, at its last step, on
`--eval-size` held-out poems, and saves a checkpoint there; tokens/s is measured on the training loop
alone (train/clock.py: evaluations and checkpoint saves left out), and the evaluation's seconds are
reported beside it. `--repeats R` runs every pair and the seed R times, interleaved (one round is each
run once), and reports medians; the ratio to the seed is the median of each round's ratio, so load that
drifts between rounds cancels out. On CPU the runs wait passively (OMP_WAIT_POLICY=PASSIVE, see
`_run_environment`): spinning threads made the training time grow with other jobs' load.

Baseline = the seed recipe: fp32 full fine-tuning, every 1,000-row map batch padded to its longest,
labels = input_ids (prompt trained too), pad = eos, no packing; otherwise full@<hardware>'s settings
(optimizer, checkpointing, batch). It runs on the same data and steps, with no budget cap (it would not
fit one); the ratio compares real (non-pad) tokens per second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED_POEMS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "poems.parquet"
SEED_PROMPT = "请创作一首古诗，主题关于{title}：\n"
PAIRS = ("qlora@4gb", "lora@4gb", "qlora@8gb", "lora@8gb", "full@8gb", "full@4gb")
SEED = "seed baseline"
# --cpu-real-shape: Qwen3-0.6B's shape on a 2-core CPU, 11 minutes at load 5 (docs/real-size.md). Batch 1 and
# no accumulation: the 8gb profile's 8 x 4 = 32 poems a step would make every step 32 times as long.
CPU_REAL_SHAPE = {
    "model": "qwen3_0.6b_random",
    "pairs": "full@8gb,lora@8gb,qlora@8gb,dora@8gb",
    "steps": 2,
    "rows": 2000,
    "batch": 1,
    "accumulation": 1,
    "eval_size": 4,
    "repeats": 3,
}
# Dense bf16 peak of the GPUs this is likely to meet, TFLOP/s (vendor sheets; no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0, "4090": 165.0}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen3_0.6b_random", help="conf/model option")
    parser.add_argument("--pairs", default=",".join(PAIRS[:5]), help="method@hardware list")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=20_000, help="poems sampled from poems.parquet")
    parser.add_argument("--batch", type=int, help="per-device batch size (default: each profile's)")
    parser.add_argument(
        "--accumulation", type=int, help="gradient accumulation steps (default: the profile's)"
    )
    parser.add_argument("--eval-size", type=int, default=64, help="held-out poems of the final evaluation")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every run, interleaved; medians")
    parser.add_argument(
        "--cpu-real-shape",
        action="store_true",
        help="the CPU benchmark at Qwen3-0.6B's shape: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in CPU_REAL_SHAPE.items())
        + " (flags given as well win)",
    )
    parser.add_argument("--poems", type=Path, default=SHARED_POEMS)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--baseline-job", type=Path, help=argparse.SUPPRESS)  # internal: one baseline run
    if argv is None:
        argv = sys.argv[1:]
    if "--cpu-real-shape" in argv:
        parser.set_defaults(**CPU_REAL_SHAPE)
    args = parser.parse_args(argv)
    if args.baseline_job:
        return _baseline_job(args.baseline_job)
    if not args.poems.is_file():
        sys.exit(f"skip: {args.poems} not found (pass --poems path/to/poems.parquet)")

    work = Path(tempfile.mkdtemp(prefix="bench_hardware_"))
    data = _poem_subset(args.poems, args.rows, work / "poems.parquet")
    started = time.perf_counter()
    runs = []
    for round_ in range(args.repeats):  # interleaved: every run once per round
        for pair in args.pairs.split(","):
            runs.append({**_run_pair(pair, args, data, work / f"round{round_}"), "round": round_})
        if not args.no_baseline:
            runs.append({**_run_baseline(args, data, work / f"round{round_}"), "round": round_})
    shutil.rmtree(work, ignore_errors=True)
    summary = _summarise(runs)
    print(_table(summary, args))
    if args.out:
        results = {
            "command": "python -m bench.bench_hardware " + " ".join(argv),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "device": _device(),
            "cpu_threads": _torch_threads(),
            "omp_wait_policy": _run_environment().get("OMP_WAIT_POLICY"),
            "total_wall_s": round(time.perf_counter() - started, 1),
            "total_cpu_s": _children_cpu_seconds(),  # the runs' CPU seconds: the wall time on an idle core
            "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
            "summary": summary,
            "runs": runs,
        }
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


def _summarise(runs: list[dict]) -> list[dict]:
    """Per run name: medians over the rounds, and the median of each round's ratio to that round's seed."""
    names = list(dict.fromkeys(r["run"] for r in runs))
    summary = []
    for name in names:
        rows = [r for r in runs if r["run"] == name]
        done = [r for r in rows if "error" not in r]
        if not done:
            summary.append({"run": name, "rounds": len(rows), "error": rows[-1]["error"]})
            continue
        row: dict = {"run": name, "rounds": len(done)}
        for key in ("tokens_per_s", "tokens_per_cpu_s", "train_runtime_s", "train_cpu_s", "eval_runtime_s"):
            values = [r[key] for r in done if r.get(key) is not None]
            row[key] = round(statistics.median(values), 3) if values else None
        for key in ("wall_s", "peak_gib", "mfu"):
            values = [r[key] for r in done if r.get(key) is not None]
            row[key] = round(statistics.median(values), 3) if values else None
        for key in ("trained_tokens", "plan_gib", "peak_allocated_gib"):
            row[key] = done[-1].get(key)
        for speed, suffix in (("tokens_per_s", ""), ("tokens_per_cpu_s", "_cpu")):
            seeds = {r["round"]: r[speed] for r in runs if r["run"] == SEED and r.get(speed)}
            ratios = [r[speed] / seeds[r["round"]] for r in done if r.get(speed) and r["round"] in seeds]
            row[f"x_baseline{suffix}"] = round(statistics.median(ratios), 2) if ratios else None
            row[f"x_baseline{suffix}_range"] = (
                [round(min(ratios), 2), round(max(ratios), 2)] if ratios else None
            )
        summary.append(row)
    return summary


def _children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(usage.ru_utime + usage.ru_stime, 1)


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _poem_subset(source: Path, rows: int, target: Path) -> Path:
    import pandas as pd

    poems = pd.read_parquet(source, columns=["title", "content"])
    poems.sample(n=min(rows, len(poems)), random_state=0).to_parquet(target)
    return target


def _common_overrides(args: argparse.Namespace, data: Path) -> list[str]:
    """Ours and the seed's: the same data, steps and batch; one evaluation (at the last step: the eval and
    save intervals are past the end, and Trainer evaluates and saves at the last step by itself)."""
    overrides = [
        f"model={args.model}",
        f"data.path={data}",
        f"data.eval_size={args.eval_size}",
        f"train.max_steps={args.steps}",
        "train.logging_steps=5",
        "train.eval_steps=100000",
        "train.save_steps=100000",
    ]
    if args.batch:
        overrides.append(f"hardware.per_device_train_batch_size={args.batch}")
    if args.accumulation:
        overrides.append(f"hardware.gradient_accumulation_steps={args.accumulation}")
    return overrides


def _run_pair(pair: str, args: argparse.Namespace, data: Path, work: Path) -> dict:
    method, hardware = pair.split("@")
    run_dir = work / pair.replace("@", "_")
    command = [sys.executable, "-m", "poetry_sft", f"method={method}", f"hardware={hardware}"]
    command += _common_overrides(args, data) + ["hardware.emulate_budget=true", f"run_dir={run_dir}"]
    return _collect(pair, command, run_dir / "metrics.json", args)


def _run_baseline(args: argparse.Namespace, data: Path, work: Path) -> dict:
    job = work / "baseline"
    job.mkdir(parents=True)
    spec = {"overrides": _common_overrides(args, data) + ["method=full", "hardware=8gb"]}
    (job / "spec.json").write_text(json.dumps(spec))
    command = [sys.executable, "-m", "bench.bench_hardware", "--baseline-job", str(job)]
    return _collect(SEED, command, job / "metrics.json", args)


def _collect(name: str, command: list[str], metrics_file: Path, args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=_run_environment())
    row: dict = {"run": name, "wall_s": round(time.perf_counter() - started, 1)}
    row["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # before, after
    if proc.returncode != 0 or not metrics_file.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        row["error"] = "OOM" if "OutOfMemory" in proc.stderr else " | ".join(tail)[-300:]
        return row
    metrics = json.loads(metrics_file.read_text())
    shutil.rmtree(metrics_file.parent, ignore_errors=True)  # its checkpoint and model: GBs at the 0.6B shape
    keys = ("tokens_per_s", "trained_tokens", "train_runtime_s", "train_cpu_s", "eval_runtime_s")
    row.update({k: metrics.get(k) for k in (*keys, "checkpoint_save_s", "eval_loss")})
    if metrics.get("train_cpu_s"):  # CPU seconds of the training loop: what the other jobs' load leaves alone
        row["tokens_per_cpu_s"] = round(metrics["trained_tokens"] / metrics["train_cpu_s"], 2)
    row["peak_gib"] = metrics.get("peak_gpu_reserved_gib", metrics.get("peak_cpu_rss_gib"))
    row["peak_allocated_gib"] = metrics.get("peak_gpu_allocated_gib")
    row["plan_gib"] = metrics.get("planned_peak_gib")
    row["mfu"] = _mfu(metrics, name)
    return row


def _run_environment() -> dict[str, str]:
    """Offline, and on CPU OpenMP's waiting threads asleep. torch's threads wait for each other at the end of
    every parallel region; by default they spin while they wait, and on a machine shared with other jobs a
    descheduled thread keeps the others spinning: the training time and its CPU seconds then grow with the
    other jobs' load, several times over. Passive waiting keeps both close to the work done."""
    import torch

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if not torch.cuda.is_available():
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


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


def _table(summary: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"bench_hardware: model={args.model}, {args.steps} steps, batch {args.batch or 'per profile'} x "
        f"{args.accumulation or 'per profile'}, {args.rows} poems, {args.eval_size} eval poems, "
        f"median of {args.repeats} round(s), device={_device()}",
        _row(
            "run",
            "peak GiB",
            "plan GiB",
            "plan err",
            "real tok/s",
            "x seed",
            "tok/CPU-s",
            "x seed CPU",
            "eval s",
            "MFU",
        ),
    ]
    for r in summary:
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
                _fmt(r["tokens_per_s"], ".0f" if (r["tokens_per_s"] or 0) >= 100 else ".2f"),
                _fmt(r.get("x_baseline"), ".2f"),
                _fmt(r.get("tokens_per_cpu_s"), ".2f"),
                _fmt(r.get("x_baseline_cpu"), ".2f"),
                _fmt(r.get("eval_runtime_s"), ".1f"),
                _fmt(r["mfu"], ".1%"),
            )
        )
    lines.append(
        "peak = torch.cuda.max_memory_reserved (CPU: process peak RSS); real tok/s counts non-pad tokens of "
        "the training loop (no evaluation, no checkpoint save), per wall and per CPU second of its process; "
        "x seed = median of the rounds' ratios"
    )
    return "\n".join(lines)


def _row(*cells: str) -> str:
    widths = (15, 10, 10, 10, 12, 8, 11, 12, 8, 7)
    return cells[0].ljust(widths[0]) + "".join(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _baseline_job(job: Path) -> None:
    """The seed recipe, reproduced: what poetry_sft replaced, measured on the same data and steps and under
    the same evaluation policy (one evaluation at the last step on as many held-out rows, and a checkpoint
    there; both left out of the training time, as in our runs)."""
    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from poetry_sft import atomic
    from poetry_sft.config.compose import run_config
    from poetry_sft.config.schema import Precision
    from poetry_sft.model.loading import load_model, load_tokenizer, resolve_model_path
    from poetry_sft.train.clock import TrainingClock
    from poetry_sft.train.sft import model_params, peak_memory, sft_config

    spec = json.loads((job / "spec.json").read_text())
    cfg = run_config(spec["overrides"] + ["train.precision=fp32"])
    cfg.train.precision = Precision.fp32
    path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(path)
    tokenizer.pad_token = tokenizer.eos_token  # the seed's choice: the model never learns to stop
    # The seed read the rows as they are (no cleaning) and prompted with one plain template.
    rows = Dataset.from_parquet(cfg.data.path).select_columns(["title", "content"]).shuffle(seed=0)

    def tokenize(batch: dict) -> dict:  # padded to the longest of each 1,000-row map batch
        texts = [
            SEED_PROMPT.format(title=t) + c for t, c in zip(batch["title"], batch["content"], strict=True)
        ]
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=cfg.hardware.max_length)
        encoded["labels"] = [list(ids) for ids in encoded["input_ids"]]
        return encoded

    tokenized: Dataset = rows.map(
        tokenize, batched=True, batch_size=1000, remove_columns=["title", "content"]
    )
    eval_rows = int(cfg.data.eval_size)
    held_out = tokenized.select(range(eval_rows))  # the seed held nothing out: as many rows as ours do
    train_set = tokenized.select(range(eval_rows, len(tokenized)))
    args = sft_config(cfg, job)  # eval_strategy "steps" past the end: Trainer evaluates at the last step
    args.bf16 = args.fp16 = False
    args.dataset_kwargs = {"skip_prepare_dataset": True}
    model = load_model(cfg, path).float()
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=held_out, processing_class=tokenizer
    )
    clock = TrainingClock()
    trainer.add_callback(clock)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    real = int(trainer.state.num_input_tokens_seen)
    evaluations = [h for h in trainer.state.log_history if "eval_loss" in h]
    atomic.write_json(
        job / "metrics.json",
        {
            "tokens_per_s": round(real / clock.train_seconds, 1),
            "trained_tokens": real,
            "train_runtime_s": round(clock.train_seconds, 2),
            "train_cpu_s": round(clock.train_cpu_seconds, 2),
            "eval_runtime_s": round(clock.eval_seconds, 2),
            "checkpoint_save_s": round(clock.save_seconds, 2),
            "eval_loss": evaluations[-1]["eval_loss"] if evaluations else None,
            "evaluations": len(evaluations),
            "model_params": model_params(model),
            **peak_memory(),
        },
    )


if __name__ == "__main__":
    main()
