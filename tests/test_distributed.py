"""accelerate launch with 2 CPU processes (gloo): DDP and FSDP use the same configs as one process."""

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, tiny_overrides

from poetry_sft.paths import CONF_DIR

ACCELERATE_CONFIGS = sorted((CONF_DIR / "accelerate").glob("*.yaml"))


def _free_port() -> int:
    with socket.socket() as s:  # other test sessions on this machine may hold accelerate's default 29500
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerate(config: str, overrides: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [
        PYTHON,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONF_DIR / "accelerate" / config),
    ]
    command += [
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "poetry_sft",
        *overrides,
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # CPU + gloo, also on a GPU box
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_accelerate_configs_load(path: Path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes == 2 and config.mixed_precision == "no"
    assert path.stem in ("ddp", "fsdp") and config.distributed_type.value == path.stem.upper().replace(
        "DDP", "MULTI_GPU"
    )


def test_several_processes_need_one_named_run_dir(tmp_path: Path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0"}  # what accelerate launch sets in each process
    result = subprocess.run(
        [PYTHON, "-m", "poetry_sft", "model=tiny", "data=sample"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "run_dir=runs/<name>" in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()


def _check_two_process_run(run_dir: Path, steps: int) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == steps
    state = json.loads((run_dir / "checkpoints" / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    # 28 training poems, 4 per process per step: 2 processes see them all in 4 steps (1 process: 4/7 epoch)
    assert state["epoch"] == pytest.approx(1.0)
    assert (run_dir / "poetry_sft_rank1.log").is_file(), "rank 1 logs to its own file"
    assert sorted(p.name for p in run_dir.iterdir() if p.suffix == ".json") == [
        "data_report.json",
        "log_history.json",
        "metrics.json",
    ]


def test_accelerate_ddp_on_two_cpu_processes(poems_file: Path, tmp_path: Path):
    run_dir = tmp_path / "ddp"
    overrides = tiny_overrides("lora", poems_file, steps=4) + ["train.save_steps=2", f"run_dir={run_dir}"]
    result = _accelerate("ddp.yaml", overrides, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_two_process_run(run_dir, 4)
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_accelerate_fsdp_full_fine_tuning_on_two_cpu_processes(poems_file: Path, tmp_path: Path):
    from poetry_sft.evaluate.generate import generate_poems, load_run

    run_dir = tmp_path / "fsdp"
    overrides = tiny_overrides("full", poems_file, steps=4) + ["train.save_steps=2", f"run_dir={run_dir}"]
    result = _accelerate("fsdp.yaml", overrides, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_two_process_run(run_dir, 4)
    model, tokenizer, cfg = load_run(run_dir)  # FULL_STATE_DICT: reloads like a one-GPU run
    assert generate_poems(model, tokenizer, ["春晓"], cfg.data, max_new_tokens=8)
