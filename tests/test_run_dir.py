"""One process per run directory, non-run directories refused, and failed starts leave nothing behind."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PYTHON, tiny_overrides

from poetry_sft.errors import RunDirError
from poetry_sft.run import artifacts
from poetry_sft.run.lock import LOCK_FILE, RunLock


def _launch(overrides: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [PYTHON, "-m", "poetry_sft", *overrides]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under root with its mtime and content: equal snapshots mean nothing was touched."""
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def _lock_of(pid: int, host: str | None = None) -> str:
    host = host or socket.gethostname()
    return json.dumps({"pid": pid, "hostname": host, "started": "2026-12-01T10:00:00"})


def test_a_live_lock_refuses_a_second_process_and_a_dead_ones_is_taken_over(tmp_path: Path, sleeper):
    (tmp_path / LOCK_FILE).write_text(_lock_of(sleeper.pid))
    with pytest.raises(RunDirError, match=rf"(?s)process {sleeper.pid} .*is training there.*Fix: wait"):
        RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == sleeper.pid

    sleeper.kill()
    sleeper.wait()
    lock = RunLock(tmp_path)
    lock.acquire()  # stale: its process is gone
    why = f"process {sleeper.pid} (started 2026-12-01T10:00:00) is no longer running"
    assert lock.took_over == f"took over the stale lock of {tmp_path}: {why}"
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_reused_pid_is_not_the_owner(tmp_path: Path):
    # our own pid, but a process start time that is not ours: the owner died and the pid came back
    stale = {"pid": os.getpid(), "hostname": socket.gethostname(), "process_started": 1.0, "started": "x"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(stale))
    RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["process_started"] != 1.0


def test_a_lock_from_another_host_is_never_taken_over(tmp_path: Path):
    (tmp_path / LOCK_FILE).write_text(_lock_of(1, host="another-box"))
    with pytest.raises(RunDirError, match=r"(?s)on host another-box.*delete .*\.poetry_sft\.lock"):
        RunLock(tmp_path).acquire()


def test_second_launch_into_a_training_run_is_refused_and_touches_nothing(
    poems_file: Path, tmp_path: Path, sleeper
):
    """A run being trained by another process (its lock names a live pid): the second launch must not
    resume beside it, and the run's files stay exactly as they were."""
    run_dir = tmp_path / "run"
    overrides = tiny_overrides("lora", poems_file) + [f"run_dir={run_dir}"]
    from conftest import run_config

    artifacts.save_run_config(run_config(overrides), run_dir)
    checkpoint = run_dir / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_model.safetensors").write_bytes(b"weights")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (run_dir / LOCK_FILE).write_text(_lock_of(sleeper.pid))
    before = snapshot(run_dir)

    result = _launch(overrides, tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"process {sleeper.pid}" in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(run_dir) == before


def test_a_finished_run_with_a_stale_lock_stays_finished(poems_file: Path, tmp_path: Path):
    """The lock of a killed process is taken over, but a finished run is still never retrained."""
    run_dir = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("model: {}\nmethod: {}\nhardware: {}\ndata: {}\n")
    (run_dir / "metrics.json").write_text('{"eval_loss": 1.0}')
    (run_dir / LOCK_FILE).write_text(_lock_of(dead.pid))
    before = snapshot(run_dir)
    result = _launch(tiny_overrides("lora", poems_file) + [f"run_dir={run_dir}"], tmp_path)
    assert result.returncode == 2 and "already holds a finished run" in result.stderr, result.stderr
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("where", ["folder", "cwd"])
def test_a_folder_that_is_not_a_run_is_refused_untouched(poems_file: Path, tmp_path: Path, where: str):
    folder = tmp_path / "my_project"
    folder.mkdir()
    (folder / "config.yaml").write_text("learning_rate: 1\n")  # the user's own config.yaml
    (folder / "notes.txt").write_text("mine")
    run_dir = "." if where == "cwd" else str(folder)
    result = _launch(tiny_overrides("lora", poems_file) + [f"run_dir={run_dir}"], folder)
    assert result.returncode == 2, result.stderr
    assert "not a poetry_sft run" in result.stderr and "Fix:" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "notes.txt"]
    assert (folder / "config.yaml").read_text() == "learning_rate: 1\n"


def test_an_empty_folder_is_a_fine_run_dir(tmp_path: Path):
    artifacts.ensure_usable_run_dir(tmp_path)  # no error
    (tmp_path / ".DS_Store").write_bytes(b"")
    artifacts.ensure_usable_run_dir(tmp_path)


def test_failing_before_training_leaves_no_stub_directory(tmp_path: Path):
    """The data cannot be loaded (found only after Hydra made the directory): no runs/<name> is left."""
    broken = tmp_path / "poems.jsonl"
    broken.write_text('{"name": "静夜思", "text": "床前明月光"}\n')  # no title/content columns
    overrides = tiny_overrides("lora", broken)  # default run_dir: runs/<time>_tiny_lora_8gb
    result = _launch(overrides, tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "runs").exists(), list((tmp_path / "runs").rglob("*"))


def test_failing_before_training_leaves_an_interrupted_run_as_it_was(poems_file: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    poems_file.write_text('{"name": "静夜思", "text": "床前明月光"}\n')  # its columns renamed since
    overrides = tiny_overrides("lora", poems_file) + [f"run_dir={run_dir}"]
    from conftest import run_config

    artifacts.save_run_config(run_config(overrides), run_dir)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("from: the first launch\n")
    checkpoint = run_dir / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_model.safetensors").write_bytes(b"weights")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    before = snapshot(run_dir)
    result = _launch(overrides, tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert snapshot(run_dir) == before  # Hydra's .hydra/ put back, its new log removed, config.yaml as it was


def test_an_abandoned_run_removes_only_what_it_created(tmp_path: Path):
    runs = tmp_path / "runs"
    claim = artifacts.RunDirClaim(runs / "a").acquire()  # creates runs/ and runs/a
    (runs / "b").mkdir()  # meanwhile another run starts beside it
    (runs / "a" / "config.yaml").write_text("x")
    claim.abandon()
    assert sorted(p.name for p in runs.iterdir()) == ["b"]

    alone = artifacts.RunDirClaim(tmp_path / "new" / "run").acquire()
    alone.abandon()
    assert not (tmp_path / "new").exists()
