"""Interrupted runs resume from their newest complete checkpoint; finished runs are never retrained."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PYTHON, run_config, tiny_overrides
from omegaconf import OmegaConf

from poetry_sft import artifacts
from poetry_sft.errors import RunDirError
from poetry_sft.training import train


def _fake_checkpoint(run_dir: Path, step: int, state: str | None) -> Path:
    path = run_dir / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    if state is not None:
        (path / "trainer_state.json").write_text(state)
    return path


def test_half_written_checkpoints_are_never_picked(poems_file: Path, tmp_path: Path):
    cfg = run_config(tiny_overrides("lora", poems_file))
    artifacts.save_run_config(cfg, tmp_path)
    whole = _fake_checkpoint(tmp_path, 2, json.dumps({"global_step": 2}))
    _fake_checkpoint(tmp_path, 4, None)  # killed before trainer_state.json
    _fake_checkpoint(tmp_path, 6, '{"global_step": 6, "log_hist')  # killed while writing it
    _fake_checkpoint(tmp_path, 8, json.dumps({"global_step": 7}))  # not this step's state
    assert artifacts.find_resume_checkpoint(tmp_path, cfg) == whole
    artifacts.discard_incomplete_checkpoints(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint-2"]


def test_resume_with_a_changed_config_is_refused(poems_file: Path, tmp_path: Path):
    artifacts.save_run_config(run_config(tiny_overrides("lora", poems_file)), tmp_path)
    _fake_checkpoint(tmp_path, 2, json.dumps({"global_step": 2}))
    changed = run_config(tiny_overrides("lora", poems_file) + ["method.learning_rate=1e-3"])
    with pytest.raises(RunDirError, match=r"different config \(method.learning_rate: 0.0002 -> 0.001\)"):
        artifacts.find_resume_checkpoint(tmp_path, changed)


def test_checkpoints_without_our_config_are_not_resumed(poems_file: Path, tmp_path: Path):
    _fake_checkpoint(tmp_path, 2, json.dumps({"global_step": 2}))
    with pytest.raises(RunDirError, match="not written by poetry_sft"):
        artifacts.find_resume_checkpoint(tmp_path, run_config(tiny_overrides("lora", poems_file)))


def _logged_losses(run_dir: Path, step: int) -> list[tuple[int, float]]:
    state = json.loads((run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return [(h["step"], h["loss"]) for h in state["log_history"] if "loss" in h]


def test_run_killed_mid_training_resumes_where_it_stopped(poems_file: Path, tmp_path: Path):
    steps = 6
    overrides = tiny_overrides("lora", poems_file, steps=steps) + ["train.save_steps=2"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [PYTHON, "-m", "poetry_sft", *overrides, f"run_dir={killed}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 240
    while not artifacts.is_complete_checkpoint(killed / "checkpoints" / "checkpoint-2"):
        assert proc.poll() is None and time.monotonic() < deadline, "ended before its first checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # no cleanup, no atexit: as an OOM kill or a power cut
    proc.wait()
    assert not artifacts.is_finished(killed)
    interrupted_at = artifacts.find_resume_checkpoint(killed, run_config(overrides + [f"run_dir={killed}"]))
    assert interrupted_at is not None and int(interrupted_at.name.split("-")[1]) < steps

    # the same command again: resumes (in-process here, to keep the test short)
    metrics = train(run_config(overrides + [f"run_dir={killed}"]), killed)
    straight = tmp_path / "straight"
    expected = train(run_config(overrides + [f"run_dir={straight}"]), straight)

    assert metrics["global_step"] == expected["global_step"] == steps
    assert metrics["resumed_from_step"] == int(interrupted_at.name.split("-")[1])
    assert expected["resumed_from_step"] is None
    resumed, uninterrupted = _logged_losses(killed, steps), _logged_losses(straight, steps)
    assert [s for s, _ in resumed] == list(range(1, steps + 1))
    # optimizer, scheduler, RNG and data order restored: the loss curve continues as if never stopped
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in uninterrupted], rel=1e-4)
    assert metrics["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-4)

    with pytest.raises(RunDirError, match="finished run"):  # a finished run is detected, not retrained
        train(run_config(overrides + [f"run_dir={killed}"]), killed)
    assert OmegaConf.load(killed / "config.yaml").run_dir == str(killed)
