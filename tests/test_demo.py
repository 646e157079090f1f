"""The demo recipe shows a poet being born: untrained vs trained, side by side, with scores and a curve."""

import json
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON

from poetry_sft.evaluate.showcase import CURVE_FILE, SHOWCASE_FILE, side_by_side

HEADINGS = ("untrained / 训练前", "trained / 训练后", "trained, 五言绝句 + rhyme")


def _demo(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "poetry_sft", "recipe=demo", f"run_dir={run_dir}", *overrides],
        capture_output=True,
        text=True,
        timeout=1800,
    )


def _scores(run_dir: Path) -> dict:
    return json.loads((run_dir / "eval_report.json").read_text(encoding="utf-8"))["scores"]


def test_side_by_side_counts_wide_characters_twice():
    text = side_by_side([("a", "床前明月光，\n疑是地上霜。"), ("b", "xy")], width=14)
    first, second, third = text.splitlines()
    assert first.index("b") == 16 and second == "床前明月光，    xy"  # 12 columns + 2 of padding + 2 between
    assert third == "疑是地上霜。"


def test_a_short_demo_ends_with_the_showcase(tmp_path: Path):
    run_dir = tmp_path / "demo"
    short = ["train.max_steps=60", "train.eval_steps=30", "train.save_steps=30", "train.logging_steps=10"]
    short += ["data.max_samples=600", "generation.eval_titles=['春夜喜雨','登高','静夜思','江雪']"]
    done = _demo(run_dir, *short)
    assert done.returncode == 0, done.stderr[-3000:]
    for heading in HEADINGS:
        assert heading in done.stdout
    assert "stops by itself at <|im_end|>" in done.stdout and "untrained" in done.stdout
    assert (run_dir / SHOWCASE_FILE).read_text(encoding="utf-8").count("《") == 3
    assert (run_dir / CURVE_FILE).read_bytes().startswith(b"\x89PNG")
    history = json.loads((run_dir / "log_history.json").read_text(encoding="utf-8"))
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_the_demo_recipe_beats_the_untrained_model_on_layout_and_stopping(tmp_path: Path):
    done = _demo(tmp_path / "demo")
    assert done.returncode == 0, done.stderr[-3000:]
    scores = _scores(tmp_path / "demo")
    base, tuned = scores["base"], scores["finetuned"]
    assert tuned["n_poems"] >= 20
    assert tuned["regulated_form_rate"] > base["regulated_form_rate"]
    assert tuned["eos_termination_rate"] > base["eos_termination_rate"]
