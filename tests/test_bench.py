"""The benchmarks run end to end on CPU with the tiny model (slow: one process per measured run)."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import PYTHON

from poetry_sft.paths import SAMPLE_POEMS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_hardware_measures_each_pair_and_the_seed_baseline(tmp_path: Path):
    poems = tmp_path / "poems.parquet"
    pd.read_json(SAMPLE_POEMS, lines=True).to_parquet(poems)
    out = tmp_path / "results.json"
    command = [PYTHON, "-m", "bench.bench_hardware", "--model", "tiny", "--steps", "2", "--rows", "200"]
    command += ["--pairs", "lora@8gb,qlora@4gb", "--poems", str(poems), "--out", str(out)]
    command += ["--batch", "2", "--accumulation", "1", "--eval-size", "8", "--repeats", "2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(out.read_text())
    assert [(r["run"], r["round"]) for r in results["runs"]] == [
        (name, round_) for round_ in (0, 1) for name in ("lora@8gb", "qlora@4gb", "seed baseline")
    ], "interleaved: every run once per round"
    for run in results["runs"]:
        assert "error" not in run, run
        assert run["tokens_per_s"] > 0 and run["eval_runtime_s"] > 0 and run["eval_loss"] > 0
        assert run["tokens_per_cpu_s"] == pytest.approx(run["trained_tokens"] / run["train_cpu_s"], rel=0.01)
        # batch 2 x 2 steps of real tokens: a poem is 20-300 tokens
        assert 4 * 20 <= run["trained_tokens"] <= 4 * 300
    rows = {r["run"]: r for r in results["summary"]}
    assert set(rows) == {"lora@8gb", "qlora@4gb", "seed baseline"}
    assert rows["seed baseline"]["x_baseline"] == 1.0 and rows["lora@8gb"]["rounds"] == 2
    assert "real tok/s" in result.stdout and "median of 2 round(s)" in result.stdout


def test_the_ratio_to_the_seed_is_the_median_of_each_round_s_ratio():
    from bench.bench_hardware import SEED, _summarise

    runs = [  # the machine is twice as slow in round 1: the ratio to that round's seed is unchanged
        {"run": "lora@8gb", "round": 0, "tokens_per_s": 300.0, "tokens_per_cpu_s": 200.0, "peak_gib": 3.0},
        {"run": SEED, "round": 0, "tokens_per_s": 100.0, "tokens_per_cpu_s": 50.0, "peak_gib": 6.0},
        {"run": "lora@8gb", "round": 1, "tokens_per_s": 150.0, "tokens_per_cpu_s": 200.0, "peak_gib": 3.2},
        {"run": SEED, "round": 1, "tokens_per_s": 50.0, "tokens_per_cpu_s": 40.0, "peak_gib": 6.0},
        {"run": "lora@8gb", "round": 2, "tokens_per_s": 240.0, "tokens_per_cpu_s": 180.0, "peak_gib": 3.1},
        {"run": SEED, "round": 2, "tokens_per_s": 60.0, "tokens_per_cpu_s": 60.0, "peak_gib": 6.0},
        {"run": "full@4gb", "round": 0, "error": "OOM"},
    ]
    rows = {r["run"]: r for r in _summarise(runs)}
    assert rows["lora@8gb"]["x_baseline"] == 3.0 and rows["lora@8gb"]["x_baseline_range"] == [3.0, 4.0]
    assert rows["lora@8gb"]["x_baseline_cpu"] == 4.0 and rows["lora@8gb"]["x_baseline_cpu_range"] == [
        3.0,
        5.0,
    ]
    assert rows["lora@8gb"]["tokens_per_s"] == 240.0 and rows["lora@8gb"]["peak_gib"] == 3.1
    assert rows[SEED]["x_baseline"] == 1.0 and rows["full@4gb"] == {
        "run": "full@4gb",
        "rounds": 1,
        "error": "OOM",
    }
