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
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {r["run"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"lora@8gb", "qlora@4gb", "seed baseline"}
    for row in rows.values():
        assert "error" not in row, row
        assert row["tokens_per_s"] > 0 and row["trained_tokens"] > 0 and row["peak_gib"] > 0
    assert rows["seed baseline"]["x_baseline"] == 1.0
    assert "real tok/s" in result.stdout
