"""Interrupted runs resume from their newest complete checkpoint; finished runs are never retrained."""

import errno
import json
import logging
import shutil
from pathlib import Path

import pytest
from conftest import PYTHON, kill_at_checkpoint, run_config, tiny_overrides
from omegaconf import OmegaConf

from poetry_sft.errors import DiskFullError, RunDirError
from poetry_sft.run import artifacts
from poetry_sft.train.sft import train


def _fake_checkpoint(run_dir: Path, step: int, state: str | None, weights: bytes | None = None) -> Path:
    """checkpoint-<step> with a whole (tiny) adapter file unless `weights` gives its bytes."""
    from safetensors.torch import save
    from torch import zeros

    path = run_dir / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(weights or save({"lora_A": zeros(2, 2)}))
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
    kill_at_checkpoint([PYTHON, "-m", "poetry_sft", *overrides, f"run_dir={killed}"], killed, 2, tmp_path)
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


# ---------------------------------------------------------------------------------------------
# Faults: a full disk while saving, a damaged checkpoint on resume


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_mid_checkpoint_keeps_the_last_complete_one_and_resumes_from_it(
    poems_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from transformers import Trainer

    overrides = tiny_overrides("lora", poems_file, steps=4) + ["train.save_steps=2", f"run_dir={tmp_path}"]
    save_optimizer = Trainer._save_optimizer_and_scheduler

    def fill_the_disk_at_step_4(self, output_dir):
        if output_dir.endswith("checkpoint-4"):  # its weights are written; the optimizer no longer fits
            Path(output_dir, "optimizer.pt").write_bytes(b"PK\x03\x04 half")
            _disk_full()
        save_optimizer(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", fill_the_disk_at_step_4)
    with pytest.raises(DiskFullError) as raised:
        train(run_config(overrides), tmp_path)
    message = str(raised.value)
    assert f"no space left on the disk of {tmp_path} while saving a checkpoint" in message
    assert "GiB free of" in message and "Fix: free space on that disk" in message and "run_dir=" in message
    assert f"{tmp_path / 'checkpoints' / 'checkpoint-2'}, is intact" in message
    assert [p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"], "half: gone"
    assert artifacts.is_complete_checkpoint(tmp_path / "checkpoints" / "checkpoint-2")
    assert not artifacts.is_finished(tmp_path)

    monkeypatch.undo()  # space freed: the same command resumes from the last complete checkpoint
    metrics = train(run_config(overrides), tmp_path)
    assert metrics["resumed_from_step"] == 2 and metrics["global_step"] == 4


def test_disk_full_saving_the_model_resumes_from_the_final_checkpoint(
    poems_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from transformers import Trainer

    overrides = tiny_overrides("lora", poems_file, steps=4) + ["train.save_steps=2", f"run_dir={tmp_path}"]
    save_model = Trainer.save_model

    def full_disk_for_the_model(self, output_dir=None, _internal_call=False):
        if Path(output_dir).name == "model":
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            Path(output_dir, "adapter_model.safetensors").write_bytes(b"half")
            _disk_full()
        save_model(self, output_dir, _internal_call)

    monkeypatch.setattr(Trainer, "save_model", full_disk_for_the_model)
    with pytest.raises(DiskFullError, match="while saving the trained model") as raised:
        train(run_config(overrides), tmp_path)
    assert "checkpoint-4, is intact" in str(raised.value)
    assert not (tmp_path / "model").exists(), "the half-written model is removed"

    monkeypatch.undo()
    metrics = train(run_config(overrides), tmp_path)
    assert metrics["resumed_from_step"] == 4 and metrics["global_step"] == 4
    assert (tmp_path / "model" / "adapter_model.safetensors").stat().st_size > 100
    # the final checkpoint's log has the last step's evaluation: taken from there, not evaluated again
    history = json.loads((tmp_path / "log_history.json").read_text(encoding="utf-8"))
    last = [h["eval_loss"] for h in history if "eval_loss" in h and h["step"] == 4]
    assert len(last) == 1 and metrics["eval_loss"] == last[0]


def test_safetensors_errors_of_a_full_disk_are_recognised():
    from poetry_sft.errors import is_disk_full

    rust = Exception(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No sp..." })'
    )
    assert is_disk_full(rust) and is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run directory, its data) of a run with checkpoint-2 and checkpoint-4 whose end was lost: as if
    killed after its last save."""
    from conftest import POEMS

    root = tmp_path_factory.mktemp("interrupted")
    data = root / "poems.jsonl"
    data.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in POEMS * 8), encoding="utf-8")
    run_dir = root / "run"
    train(
        run_config(tiny_overrides("lora", data, steps=4) + ["train.save_steps=2", f"run_dir={run_dir}"]),
        run_dir,
    )
    (run_dir / "metrics.json").unlink()
    shutil.rmtree(run_dir / "model")
    return run_dir, data


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        ("adapter_model.safetensors", "adapter_model.safetensors is cut off"),
        ("optimizer.pt", "optimizer.pt is cut off or damaged"),
        ("trainer_state.json", "trainer_state.json cannot be read"),
    ],
)
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_resumed(
    damage: str,
    named: str,
    interrupted_run: tuple[Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
):
    shutil.copytree(interrupted_run[0], tmp_path, dirs_exist_ok=True)
    overrides = tiny_overrides("lora", interrupted_run[1], steps=4) + [
        "train.save_steps=2",
        f"run_dir={tmp_path}",
    ]
    damaged = tmp_path / "checkpoints" / "checkpoint-4" / damage
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # a full disk, a bad copy
    problem = artifacts.checkpoint_problem(damaged.parent)
    assert problem is not None and named in problem
    assert artifacts.find_resume_checkpoint(tmp_path, run_config(overrides)).name == "checkpoint-2"

    with caplog.at_level(logging.WARNING):
        metrics = train(run_config(overrides), tmp_path)
    assert metrics["resumed_from_step"] == 2 and metrics["global_step"] == 4
    assert (
        f"resuming from checkpoint-2, the newest complete checkpoint, instead of checkpoint-4: {named}"
        in (caplog.text)
    )


def test_no_resumable_checkpoint_says_the_run_starts_again(
    poems_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    cfg = run_config(tiny_overrides("lora", poems_file, steps=2) + [f"run_dir={tmp_path}"])
    artifacts.save_run_config(cfg, tmp_path)
    _fake_checkpoint(tmp_path, 2, json.dumps({"global_step": 2}), weights=b"weights")  # 7 bytes, no header
    assert "adapter_model.safetensors is cut off" in artifacts.checkpoint_problem(
        tmp_path / "checkpoints" / "checkpoint-2"
    )
    with caplog.at_level(logging.WARNING):
        metrics = train(cfg, tmp_path)
    assert metrics["resumed_from_step"] is None and metrics["global_step"] == 2
    assert "no checkpoint in" in caplog.text and "starts again from step 0" in caplog.text
