"""The bad-input matrix for `poetry-sft train`: config keys, values, run directories and processes.

Every case must be GOOD: exit code != 0, no traceback, stderr ends in one paragraph (after any log lines)
that names the bad key or value and the fix, and nothing in the working directory is created or touched.
All of them fail at preflight, before any model or data loads.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import POEMS, PYTHON, tiny_overrides


@dataclass
class Case:
    id: str
    overrides: list[str]
    words: list[str]  # each must appear in the error paragraph
    run_dir: str = "runs/bad"  # relative to the case's working directory
    setup: str | None = None  # what the working directory holds before the launch (see _prepare)
    env: dict[str, str] = field(default_factory=dict)
    default_run_dir: bool = False  # leave run_dir out of the command (the timestamped default)
    slow: bool = False  # imports transformers.trainer_utils (and with it peft and bitsandbytes) to check


CASES = [
    # config keys
    Case("group-option", ["method=qlroa"], ["method=qlroa", "Did you mean method=qlora?"]),
    Case("hardware-option", ["hardware=3gb"], ["hardware=3gb", "4gb, 6gb, 8gb"]),
    Case("recipe-option", ["recipe=dmo"], ["recipe=dmo", "recipe=demo"]),
    Case("misspelled-key", ["method.lora_rank=8"], ["method.lora_rank", "Did you mean method.r?"]),
    Case("appended-key", ["+train.lerning_rate=1"], ["train.lerning_rate", "method.learning_rate"]),
    Case("appended-method-key", ["+method.lora_rnk=4"], ["method.lora_rnk", "lora_alpha"]),
    Case("appended-top-key", ["+foo=1"], ["unknown config key foo", "generation, hardware"]),
    Case("unquoted-chinese", ["data.prompt_template=写一首诗"], ["quote it", "'写一首诗'"]),
    # values
    Case("rank-zero", ["method.r=0"], ["method.r=0", "positive"]),
    Case("negative-lr", ["method.learning_rate=-1e-4"], ["method.learning_rate=-0.0001", "positive"]),
    Case("warmup-ratio", ["train.warmup_ratio=1.5"], ["train.warmup_ratio=1.5", "[0, 1)"]),
    Case("scheduler", ["train.lr_scheduler_type=cosin"], ["lr_scheduler_type='cosin'", "cosine"]),
    Case("report-to-unknown", ["train.report_to=tensorbord"], ["'tensorbord'", "tensorboard"], slow=True),
    Case("target-modules", ["method.target_modules=[q_proj,v_prj]"], ["v_prj", "did you mean v_proj?"]),
    Case("save-steps-negative", ["train.save_steps=-1"], ["train.save_steps=-1", "positive"]),
    Case("eval-steps-zero", ["train.eval_steps=0"], ["train.eval_steps=0"]),
    Case("logging-steps-zero", ["train.logging_steps=0"], ["train.logging_steps=0"]),
    Case("max-steps", ["train.max_steps=-5"], ["train.max_steps=-5", "-1"]),
    Case(
        "max-steps-zero", ["train.max_steps=0"], ["train.max_steps=0", "-1 (train.num_train_epochs) or > 0"]
    ),
    Case("absurd-lr", ["method.learning_rate=1e9"], ["method.learning_rate=1e+09 must be at most 1"]),
    Case(
        "pass-through-type",
        ["+trainer.neftune_noise_alpha=abc"],
        ["trainer.neftune_noise_alpha='abc' must be a number", "trainer.neftune_noise_alpha=0.5"],
    ),
    Case("prompt-without-title", ["data.prompt_template='写一首诗'"], ["{title}", "ignore its title"]),
    Case("data-path-missing", ["data.path=missing/poems.jsonl"], ["data.path=missing/poems.jsonl", "sample"]),
    Case("model-path-missing", ["model=qwen3_0.6b", "model.name_or_path=./no-model"], ["./no-model"]),
    Case("attention-unknown", ["model.attn_implementation=flash"], ["flash", "attn_implementation=sdpa"]),
    # run directories
    Case("run-dir-not-a-run", [], ["not a poetry_sft run", "notes.txt"], run_dir="mine", setup="user_folder"),
    Case("run-dir-dot", [], ["not a poetry_sft run", "notes.txt"], run_dir=".", setup="user_files_here"),
    Case("run-dir-is-a-file", [], ["is a file"], run_dir="notes.txt", setup="user_files_here"),
    Case("run-dir-finished", [], ["already holds a finished run"], run_dir="done", setup="finished_run"),
    # processes
    Case("run-dir-in-use", [], ["is training there", "kill"], run_dir="busy", setup="live_lock"),
    Case(
        "distributed-unnamed-run-dir",
        [],
        ["several processes", "run_dir=runs/<name>"],
        env={"WORLD_SIZE": "2", "RANK": "0"},
        default_run_dir=True,
    ),
]
if not importlib.util.find_spec("wandb"):
    CASES.append(Case("report-to-not-installed", ["train.report_to=wandb"], ["wandb", "pip install wandb"]))


def _flash_attention_usable() -> bool:
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


@pytest.fixture(scope="module")
def poems(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad_input") / "poems.jsonl"
    rows = [{**poem, "author": "李白"} for poem in POEMS] * 8
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def _prepare(setup: str | None, cwd: Path, sleeper_pid: int) -> None:
    if setup in ("user_folder", "user_files_here"):
        folder = cwd / "mine" if setup == "user_folder" else cwd
        folder.mkdir(exist_ok=True)
        (folder / "notes.txt").write_text("mine", encoding="utf-8")
        (folder / "config.yaml").write_text("learning_rate: 1\n", encoding="utf-8")
    elif setup == "finished_run":
        (cwd / "done").mkdir()
        (cwd / "done" / "metrics.json").write_text('{"eval_loss": 1.0}')
    elif setup == "live_lock":
        (cwd / "busy").mkdir()
        owner = {"pid": sleeper_pid, "hostname": socket.gethostname(), "started": "2026-12-01T10:00:00"}
        (cwd / "busy" / ".poetry_sft.lock").write_text(json.dumps(owner))
        (cwd / "busy" / "config.yaml").write_text("model: {}\nmethod: {}\nhardware: {}\ndata: {}\n")


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def error_paragraph(stderr: str) -> str:
    """The error, after the log lines that may precede it; asserts that nothing else is there."""
    lines = stderr.rstrip("\n").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("poetry_sft: error:")]
    assert len(starts) == 1, f"expected one error:\n{stderr}"
    before = [line for line in lines[: starts[0]] if line.strip()]
    assert all(line.startswith("[") for line in before), f"only log lines may precede the error:\n{stderr}"
    paragraph = lines[starts[0] :]
    assert all(line.strip() for line in paragraph), f"the error is one paragraph:\n{stderr}"
    return "\n".join(paragraph)


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES]
)
def test_bad_input_is_refused_with_the_fix_and_nothing_written(
    case: Case, poems: Path, tmp_path: Path, sleeper
):
    cwd = tmp_path / "work"
    cwd.mkdir()
    _prepare(case.setup, cwd, sleeper.pid)
    before = _snapshot(cwd)
    entries_before = sorted(p.name for p in cwd.iterdir())
    replaced = {o.split("=")[0].lstrip("+") for o in case.overrides}  # Hydra refuses a group given twice
    overrides = [o for o in tiny_overrides("lora", poems) if o.split("=")[0] not in replaced]
    overrides += case.overrides
    if not case.default_run_dir:
        overrides.append(f"run_dir={case.run_dir}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", **case.env}
    command = [PYTHON, "-m", "poetry_sft", *overrides]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    paragraph = error_paragraph(result.stderr)
    assert "Fix" in paragraph, paragraph
    for word in case.words:
        assert word in paragraph, paragraph
    assert sorted(p.name for p in cwd.iterdir()) == entries_before, "a file or directory was created"
    assert _snapshot(cwd) == before, "a file was written"


@pytest.mark.skipif("_flash_attention_usable()")
def test_flash_attention_without_its_package_or_a_gpu_is_refused_at_preflight(poems: Path, tmp_path: Path):
    overrides = [*tiny_overrides("lora", poems), "model.attn_implementation=flash_attention_2", "run_dir=r"]
    result = subprocess.run(
        [PYTHON, "-m", "poetry_sft", *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    paragraph = error_paragraph(result.stderr)
    assert "flash_attention_2" in paragraph and "Fix: model.attn_implementation=sdpa" in paragraph
    assert "Generating train split" not in result.stderr  # refused before the data was prepared
    assert not (tmp_path / "r").exists()
