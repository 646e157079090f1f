"""Faults during a run: a loss that turns NaN, a disk that fills while a checkpoint is saved, a run folder
that is read-only. Each stops with one message and exit 2, and leaves a run that is honest about itself:
never a metrics.json that looks finished, never a half-written checkpoint, always resumable from the last
complete checkpoint (or cleanly restartable).

The real faults use a small tmpfs or a read-only mount (root; skipped where this machine cannot mount) or
chmod (not root); the in-process ones patch the save or the loss.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PYTHON, run_config, tiny_overrides

from poetry_sft.errors import DiskFullError, RunDirError, TrainingDivergedError
from poetry_sft.run import artifacts
from poetry_sft.train.sft import train


def _cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [PYTHON, "-m", "poetry_sft", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _error(result: subprocess.CompletedProcess) -> str:
    """The one error paragraph, which starts its own line (after any progress bar)."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("poetry_sft: error: ")]
    assert len(starts) == 1, result.stderr[-3000:]
    error = "\n".join(lines[starts[0] :]).strip()
    assert "\n\n" not in error and "Fix:" in error, error
    return error


# ---------------------------------------------------------------------------------------------
# A loss that turns NaN


def _weights_finite(checkpoint: Path) -> bool:
    from safetensors.torch import load_file

    tensors = load_file(str(checkpoint / "adapter_model.safetensors"))
    return all(bool(t.isfinite().all()) for t in tensors.values())


def test_a_loss_that_turns_nan_stops_the_run_unfinished_and_resumable(
    poems_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from trl import SFTTrainer

    real = SFTTrainer.compute_loss

    def nan_from_the_third_step(self, model, inputs, *args, **kwargs):
        result = real(self, model, inputs, *args, **kwargs)
        if self.state.global_step < 2:
            return result
        if isinstance(result, tuple):
            return (result[0] * math.nan, *result[1:])
        return result * math.nan

    monkeypatch.setattr(SFTTrainer, "compute_loss", nan_from_the_third_step)
    run = tmp_path / "run"
    # logging every 5 steps: the save steps (2, 4) log too, so step 4's NaN is seen before its checkpoint
    overrides = [*tiny_overrides("lora", poems_file, steps=6), "train.save_steps=2", "train.logging_steps=5"]
    cfg = run_config([*overrides, f"run_dir={run}"])
    with pytest.raises(TrainingDivergedError) as raised:
        train(cfg, run)
    message = str(raised.value)
    assert "training diverged at step 4: loss nan" in message
    assert "its newest checkpoint, checkpoint-2, is from before the divergence" in message
    assert "Fix: lower method.learning_rate" in message and "run_dir=runs/<new-name>" in message

    assert not (run / artifacts.METRICS_FILE).exists(), "never a run that looks finished"
    assert not (run / artifacts.MODEL_DIR).exists()
    assert [p.name for p in (run / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]
    assert _weights_finite(run / "checkpoints" / "checkpoint-2")
    assert artifacts.find_resume_checkpoint(run, cfg) == run / "checkpoints" / "checkpoint-2"


def test_a_diverging_run_exits_2_and_every_command_calls_it_unfinished(poems_file: Path, tmp_path: Path):
    """Weights initialised at 1e30 overflow in the first forward pass: a NaN at step 1, deterministically."""
    run = tmp_path / "run"
    overrides = [
        *tiny_overrides("lora", poems_file),
        "model.random_init.initializer_range=1e30",
        f"run_dir={run}",
    ]
    error = _error(_cli(*overrides, cwd=tmp_path))
    assert "training diverged at step 1" in error and "it has no checkpoint yet" in error
    assert "Likely causes: a learning rate too high" in error
    assert (run / artifacts.CONFIG_FILE).is_file() and not (run / artifacts.METRICS_FILE).exists()

    for argv in (["generate", run, "--title", "春晓"], ["export", run], ["push", run, "--repo", "me/poet"]):
        error = _error(_cli(*argv, cwd=tmp_path))
        assert "holds no finished run" in error and "diverged" in error and f"run_dir={run}" in error


def test_fp16_loss_scaling_overflows_are_not_a_divergence(poems_file: Path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from poetry_sft.train.callbacks import NonFiniteLossCallback

    cfg = run_config(tiny_overrides("lora", poems_file))
    args, state, control = (
        TrainingArguments(output_dir="unused", use_cpu=True),
        TrainerState(),
        TrainerControl(),
    )
    # the scaler's first steps: an inf gradient norm, the step skipped, the loss fine
    NonFiniteLossCallback(cfg, "fp16").on_log(args, state, control, logs={"loss": 2.1, "grad_norm": math.inf})
    with pytest.raises(TrainingDivergedError, match="grad_norm inf"):
        NonFiniteLossCallback(cfg, "fp32").on_log(
            args, state, control, logs={"loss": 2.1, "grad_norm": math.inf}
        )
    with pytest.raises(TrainingDivergedError) as raised:
        NonFiniteLossCallback(cfg, "fp16").on_log(args, state, control, logs={"loss": math.nan})
    assert "fp16 overflow" in str(raised.value) and "train.precision=fp32" in str(raised.value)
    no_clipping = run_config([*tiny_overrides("lora", Path("x.jsonl")), "train.max_grad_norm=0"])
    with pytest.raises(TrainingDivergedError, match="train.max_grad_norm=1.0"):
        NonFiniteLossCallback(no_clipping, "fp32").on_evaluate(
            args, state, control, metrics={"eval_loss": math.nan}
        )


def test_an_absurd_learning_rate_is_refused_before_anything_loads(tmp_path: Path):
    error = _error(
        _cli(
            "model=tiny", "data=sample", "method.learning_rate=1e9", f"run_dir={tmp_path / 'r'}", cwd=tmp_path
        )
    )
    assert "method.learning_rate=1e+09 must be at most 1" in error and "5e-5 to 5e-4" in error
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# A full disk while a checkpoint is saved; a read-only run folder


@contextlib.contextmanager
def _mounted(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs at `where` (root only); skips the test where this machine cannot mount one."""
    where.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_disk_that_fills_during_a_checkpoint_is_one_message_and_no_partial_checkpoint(
    poems_file: Path, tmp_path: Path
):
    """180 KiB: the config, data report and log fit, the first checkpoint's torch.save files do not. torch's
    own error names no cause ("[enforce fail at inline_container.cc] unexpected pos")."""
    with _mounted(tmp_path / "small", "size=180k") as disk:
        run = disk / "run"
        overrides = [*tiny_overrides("lora", poems_file), "train.save_steps=2", f"run_dir={run}"]
        error = _error(_cli(*overrides, cwd=tmp_path))
        assert f"no space left on the disk of {run} while saving a checkpoint" in error
        assert "Fix: free space on that disk" in error
        assert not list((run / "checkpoints").glob("checkpoint-*")), "the half-written checkpoint is removed"
        assert not (run / artifacts.METRICS_FILE).exists()


def test_torchs_write_failure_on_a_nearly_full_disk_is_a_full_disk(
    poems_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The same fault on any machine: torch.save's C++ error, with the disk reported full."""
    import shutil
    from collections import namedtuple

    from transformers import Trainer

    usage = namedtuple("usage", "total used free")

    def torch_cannot_write(self, output_dir):
        (Path(output_dir) / "optimizer.pt").write_bytes(b"PK\x03\x04 cut")  # a partial file, as torch leaves
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", torch_cannot_write)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 2**40 - 2**20, 2**20))
    run = tmp_path / "run"
    cfg = run_config([*tiny_overrides("lora", poems_file), "train.save_steps=2", f"run_dir={run}"])
    with pytest.raises(DiskFullError, match="while saving a checkpoint"):
        train(cfg, run)
    assert not list((run / "checkpoints").glob("checkpoint-*"))


def test_torchs_write_failure_with_room_on_the_disk_is_not_called_a_full_disk(tmp_path: Path):
    from poetry_sft.errors import is_disk_full

    err = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    assert not is_disk_full(err), "without a folder to look at, it is not guessed"
    assert is_disk_full(err, tmp_path) == (__import__("shutil").disk_usage(tmp_path).free < 64 * 2**20)


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[Path]:
    """`folder` read-only: chmod for a user, a read-only bind mount for root (who ignores permissions)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    bound = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.decode(errors='replace').strip()}")
    try:
        remounted = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True)
        if remounted.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {remounted.stderr.decode(errors='replace').strip()}")
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("where", ["new-run-inside", "existing-run"])
def test_a_read_only_run_folder_is_one_message(where: str, poems_file: Path, tmp_path: Path):
    folder = tmp_path / "runs"
    folder.mkdir()
    if where == "existing-run":  # an interrupted run copied from a read-only share
        (folder / "config.yaml").write_text("model: {}\nmethod: {}\nhardware: {}\ndata: {}\n")
    run = folder if where == "existing-run" else folder / "new"
    before = _snapshot(folder)
    with _read_only(folder):
        error = _error(_cli(*tiny_overrides("lora", poems_file), f"run_dir={run}", cwd=tmp_path))
    assert f"cannot write to {run}" in error and "Fix: train into a folder you can write" in error
    assert _snapshot(folder) == before


def test_a_run_folder_made_read_only_while_training_says_so(
    poems_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import errno

    from transformers import Trainer

    def read_only(self, output_dir):
        raise OSError(errno.EROFS, "Read-only file system", output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", read_only)
    run = tmp_path / "run"
    cfg = run_config([*tiny_overrides("lora", poems_file), "train.save_steps=2", f"run_dir={run}"])
    with pytest.raises(RunDirError, match="became read-only") as raised:
        train(cfg, run)
    assert "Fix: make it writable again and run the same command" in str(raised.value)


# ---------------------------------------------------------------------------------------------
# A run whose config.yaml was damaged


DAMAGES = {
    "cut-off": (lambda text: text[:200], "is damaged"),
    "not-yaml": (lambda text: "model: [unclosed\n", "is damaged"),
    "a-key-renamed": (lambda text: text.replace("lora_alpha", "lorax_alpha"), "lorax_alpha"),
    "a-refused-value": (lambda text: text.replace("learning_rate: 0.0002", "learning_rate: -1"), "refuses"),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import POEMS

    root = tmp_path_factory.mktemp("finished")
    poems = root / "poems.jsonl"
    poems.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in POEMS * 8), encoding="utf-8")
    train(run_config([*tiny_overrides("lora", poems, steps=1), f"run_dir={root / 'run'}"]), root / "run")
    return root / "run"


@pytest.mark.parametrize("damage", DAMAGES)
def test_commands_on_a_run_whose_config_is_damaged_say_so(
    damage: str, finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    import shutil

    from poetry_sft.evaluate import generate, report
    from poetry_sft.ship import export, merge

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    change, words = DAMAGES[damage]
    config = run / artifacts.CONFIG_FILE
    config.write_text(change(config.read_text(encoding="utf-8")), encoding="utf-8")
    before = _snapshot(run)
    for main, argv in (
        (generate.main, [str(run), "--title", "春晓"]),
        (export.main, [str(run)]),
        (merge.main, [str(run)]),
        (report.main, [str(run)]),
    ):
        assert main(argv) == 2, main.__module__
        error = capsys.readouterr().err
        assert error.startswith(f"poetry_sft: error: {config}") and words in error, error
        assert "Fix:" in error and "Traceback" not in error
    assert _snapshot(run) == before, "nothing of the run is changed"
