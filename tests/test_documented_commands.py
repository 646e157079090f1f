"""Every sweep command the README documents starts from the command line: Hydra's own groups
(hydra/sweeper=, hydra/launcher=, hydra/job_logging=) pass our override check, and Hydra's refusals leave
as ours do (exit 2, one paragraph ending in a fix, no traceback).

The launches are cheap: every job's config fails its value check (train.warmup_ratio=1.5) in the sweep's
own process, so the sweeper, the launcher, the job directories, error.json and the summary all run
without a training process. Real trainings of the same commands are in tests/test_sweep.py (-m slow).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, tiny_overrides

from poetry_sft.config.compose import override_problems
from poetry_sft.train.sweep_report import read_jobs

# README "Sweeps": the grid, Optuna and SLURM commands, with the sweep directory each test gives them
README_SWEEPS = {
    "grid": ["-m", "method=lora,qlora", "method.r=8,16", "method.learning_rate=1e-4,2e-4"],
    "optuna": ["-m", "hydra/sweeper=poetry_optuna"],
    "slurm": ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "method=lora,qlora"],
    "make-sweep": ["-m", "recipe=demo_lora_sweep"],
}


def _cli(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "poetry_sft", *map(str, args)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_hydra_groups_and_keys_are_left_to_hydra():
    hydra_syntax = [
        "hydra/sweeper=poetry_optuna",
        "hydra/launcher=slurm",
        "hydra/job_logging=disabled",
        "+hydra/callbacks=none",
        "~hydra/hydra_logging",
        "~hydra.job.chdir",
        "hydra.sweep.dir=multirun/x",
        "hydra.launcher.partition=gpu",
    ]
    assert override_problems(hydra_syntax) == []
    assert override_problems(["hydra_x=1"]), "only Hydra's own namespace is skipped"


@pytest.mark.parametrize("name", ["optuna", "slurm"])
def test_the_readme_sweepers_and_launchers_compose_through_the_command_line(name: str, tmp_path: Path):
    """The sweeper's and launcher's own config, as the command line composes it (--cfg: one run's view)."""
    args = [a for a in README_SWEEPS[name] if a != "-m" and "," not in a]
    result = _cli(*args, f"hydra.sweep.dir={tmp_path / 'sweep'}", "--cfg", "hydra", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    expected = {"optuna": "OptunaSweeper", "slurm": "partition: gpu"}[name]
    assert expected in result.stdout
    assert not any(tmp_path.iterdir()), "--cfg prints, writes nothing"


def test_a_sweep_and_cfg_together_are_one_message(tmp_path: Path):
    result = _cli(*README_SWEEPS["grid"], "--cfg", "hydra", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "--cfg and --multirun are two modes" in result.stderr and "Fix: drop --cfg" in result.stderr


def test_job_logging_disabled_composes_with_the_flag_anywhere(tmp_path: Path):
    """Hydra's argparse takes --cfg only before the overrides; users put it anywhere."""
    result = _cli("hydra/job_logging=disabled", "--cfg", "job", "method=qlora", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "name: qlora" in result.stdout


def _launch(tmp_path: Path, poems_file: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    sweep = tmp_path / "sweep"
    overrides = [o for o in tiny_overrides("lora", poems_file) if not o.startswith("method=")]
    result = _cli(*args, *overrides, "train.warmup_ratio=1.5", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result, sweep


def _all_jobs_failed_at_their_config_check(result: subprocess.CompletedProcess, sweep: Path, jobs: int):
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"{jobs} of {jobs} sweep jobs failed" in result.stderr, result.stderr[-3000:]
    assert "train.warmup_ratio=1.5 must be in [0, 1)" in result.stderr
    assert len(read_jobs(sweep)) == jobs and (sweep / "summary.md").is_file()


def test_the_readme_grid_sweep_starts_every_job(poems_file: Path, tmp_path: Path):
    result, sweep = _launch(tmp_path, poems_file, *README_SWEEPS["grid"])
    _all_jobs_failed_at_their_config_check(result, sweep, jobs=8)


def test_make_sweep_starts_the_recipes_sweep(poems_file: Path, tmp_path: Path):
    result, sweep = _launch(tmp_path, poems_file, *README_SWEEPS["make-sweep"])
    _all_jobs_failed_at_their_config_check(result, sweep, jobs=4)  # recipes/demo_lora_sweep.yaml: 2 x 2


def test_the_readme_optuna_sweep_starts_its_trials(poems_file: Path, tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result, sweep = _launch(tmp_path, poems_file, *README_SWEEPS["optuna"], "hydra.sweeper.n_trials=2")
    _all_jobs_failed_at_their_config_check(result, sweep, jobs=2)
    assert (sweep / "optimization_results.yaml").is_file(), "the study ran to its end"
    assert all(job.name.startswith("method.learning_rate=") for job in read_jobs(sweep))


@pytest.mark.skipif(shutil.which("srun") is not None, reason="this machine has SLURM")
def test_the_readme_slurm_sweep_without_slurm_is_one_message_and_writes_nothing(
    poems_file: Path, tmp_path: Path
):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    result, sweep = _launch(tmp_path, poems_file, *README_SWEEPS["slurm"])
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr[result.stderr.index("poetry_sft: error:") :].strip()
    assert "\n\n" not in error and "srun is not on PATH" in error and "Fix: run the same command on" in error
    assert not sweep.exists(), "refused before Hydra wrote the sweep directory"


def test_the_slurm_launchers_plugin_runs_our_jobs_through_submitit(poems_file: Path, tmp_path: Path):
    """hydra/launcher=slurm is hydra-submitit-launcher; its local executor runs the same job runner in
    submitit's own processes. The job directories keep the swept values there too."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    result, sweep = _launch(tmp_path, poems_file, "-m", "hydra/launcher=submitit_local", "method=lora,qlora")
    _all_jobs_failed_at_their_config_check(result, sweep, jobs=2)
    assert sorted(job.name.split("_")[0] for job in read_jobs(sweep)) == ["method=lora", "method=qlora"]


# Hydra's refusals, in our words: exit 2 like every user error, the key, the fix
HYDRA_REFUSALS = {
    "type-error": (
        ["method.r=abc"],
        ["method.r=abc", "could not be converted to Integer", "Fix: method.r takes an integer"],
    ),
    "bool": (
        ["generation.do_sample=maybe"],
        ["not a valid bool", "generation.do_sample takes true or false"],
    ),
    "enum": (
        ["method.trains=xyz"],
        ["expected one of [all, adapter]", "Fix: method.trains takes one of all, adapter"],
    ),
    "list": (["data.forms=abc"], ["data.forms", "Fix: data.forms takes a list, [a,b]"]),
    "section": (["train=foo"], ["train=foo", "Fix: train takes its own keys (train.<key>=value)"]),
    "unparsable": (["method.r=["], ["method.r=[ is not an override Hydra can read", "Fix: write key=value"]),
    "hydra-group-option": (
        ["hydra/sweeper=optuan"],
        ["hydra/sweeper/optuan", "poetry_optuna", "Fix: choose one"],
    ),
    "hydra-key-type": (["hydra.job.chdir=abc"], ["hydra.job.chdir", "Fix:"]),
    "delete-group": (
        ["~method"],
        ["~method removes the method group", "Fix: choose another option", "qlora"],
    ),
    "delete-key": (["~train.max_steps"], ["cannot be deleted", "Fix: set it instead, train.max_steps=-1"]),
    "delete-section": (["~train"], ["cannot be deleted", "Fix: leave it out"]),
    "delete-absent": (["~trainer.nothing"], ["'trainer.nothing' does not exist", "Fix:"]),
    "append-existing": (["+trainer=5"], ["already at 'trainer'", "Fix:"]),
}


@pytest.mark.parametrize("case", HYDRA_REFUSALS)
def test_hydra_refusals_exit_2_with_our_prefix_and_a_fix(case: str, tmp_path: Path):
    overrides, words = HYDRA_REFUSALS[case]
    result = _cli("model=tiny", "data=sample", *overrides, f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr
    error = result.stderr[result.stderr.index("poetry_sft: error:") :].strip()
    assert "\n\n" not in error, error
    for word in words:
        assert word in error, error
    assert not any(tmp_path.iterdir()), "nothing written"


def test_hydra_full_error_still_gives_hydras_own_report(tmp_path: Path):
    result = _cli("model=tiny", "method.r=abc", "--cfg", "job", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr, "what the user asked for"


def test_a_sweep_job_that_inherits_our_hydra_full_error_still_reports_in_our_words(tmp_path: Path):
    """The train command sets HYDRA_FULL_ERROR (with its mark) while Hydra runs; a sweep's job processes
    inherit both and must not take it for the user's wish."""
    env = {"HYDRA_FULL_ERROR": "1", "POETRY_SFT_SET_HYDRA_FULL_ERROR": "1"}
    result = _cli("model=tiny", "method.r=abc", "--cfg", "job", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "Fix: method.r takes an integer" in result.stderr
