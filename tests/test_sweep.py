"""Hydra multirun: one process and one directory per job, failures recorded, finished jobs skipped."""

import csv
import json
import math
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, tiny_overrides
from omegaconf import OmegaConf

from poetry_sft.config.checks import to_run_config
from poetry_sft.run.artifacts import save_run_config
from poetry_sft.train.sweep import child_command, job_dirname, run_job
from poetry_sft.train.sweep_report import read_jobs, write_summary


def test_job_dirnames_are_deterministic_unique_and_safe():
    assert job_dirname("method.r=8,method=lora") == "method.r=8,method=lora"
    a, b = job_dirname("data.path=a/b.jsonl"), job_dirname("data.path=a_b.jsonl")
    assert a != b and "/" not in a and a == job_dirname("data.path=a/b.jsonl")
    long = job_dirname(",".join(f"key{i}=value{i}" for i in range(40)))
    assert len(long) <= 120 and long != job_dirname(",".join(f"key{i}=value{i}" for i in range(41)))
    assert job_dirname("") == "defaults"
    titles = job_dirname("sample_titles=[" + "春夜喜雨," * 30 + "]")
    assert len(titles.encode("utf-8")) <= 120 and titles.startswith("sample_titles=")


def test_child_command_runs_the_job_as_a_single_run_in_its_directory(tmp_path: Path):
    command = child_command(tmp_path / "my job", ["method=lora", "method.r=8"], "config")
    assert command[1:] == [
        "-m",
        "poetry_sft",
        "train",
        "--config-name",
        "config",
        "method=lora",
        "method.r=8",
        f"run_dir='{tmp_path / 'my job'}'",  # quoted: Hydra's override grammar splits on spaces
        "hydra.output_subdir=null",
    ]


def _job(sweep: Path, name: str, overrides: list[str], metrics: dict | None = None, error: str | None = None):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (job / "error.json").write_text(json.dumps({"error": error, "returncode": 1, "log_tail": []}))


def test_summary_is_rebuilt_from_any_sweep_directory(tmp_path: Path):
    _job(tmp_path, "a", ["model=tiny", "method.learning_rate=1e-4"], {"eval_loss": 2.5, "global_step": 10})
    _job(tmp_path, "b", ["model=tiny", "method.learning_rate=1e-3"], {"eval_loss": 2.0, "global_step": 10})
    _job(tmp_path, "c", ["model=tiny", "method.learning_rate=1e-2"], error="CUDA out of memory.\nTried ...")
    _job(tmp_path, "d", ["model=tiny", "method.learning_rate=1e-1"])  # killed: no metrics, no error

    written = write_summary(tmp_path)

    with (tmp_path / "summary.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:5] == ["job", "status", "method.learning_rate", "model", "eval_loss"]
    assert rows[3][-1] == "CUDA out of memory.\nTried ...", "the CSV keeps the whole error"
    assert [r[:3] for r in rows[1:]] == [  # best first, then failed/unfinished
        ["b", "finished", "1e-3"],
        ["a", "finished", "1e-4"],
        ["c", "failed", "1e-2"],
        ["d", "unfinished", "1e-1"],
    ]
    md = (tmp_path / "summary.md").read_text()
    assert "2 finished, 1 failed, 1 unfinished" in md and "`model=tiny`" in md
    assert "| c | failed | 1e-2 |" in md and "CUDA out of memory. Tried ..." in md
    assert written["png"].stat().st_size > 1000 and written["png"].read_bytes()[:4] == b"\x89PNG"


def test_report_cli_names_a_directory_without_jobs(tmp_path: Path):
    result = subprocess.run(
        [PYTHON, "-m", "poetry_sft", "sweep-report", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "holds no sweep jobs" in result.stderr


def _multirun(sweep: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "poetry_sft", "-m", *overrides, f"hydra.sweep.dir={sweep}"],
        cwd=sweep.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow  # three training processes: ~1 min on a busy 2-core CPU
def test_sweep_survives_failed_jobs_and_a_rerun_skips_finished_ones(poems_file: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    missing = tmp_path / "missing.jsonl"
    overrides = [o for o in tiny_overrides("lora", poems_file, steps=2) if not o.startswith("data.path")]
    swept = [f"data.path={poems_file},{missing}", "method.learning_rate=1e-3,-1"]
    first = _multirun(sweep, *overrides, *swept)
    assert first.returncode == 1, first.stderr[-3000:]  # after the summary: 3 of 4 jobs failed

    jobs = {(j.overrides["data.path"], j.overrides["method.learning_rate"]): j for j in read_jobs(sweep)}
    assert len(jobs) == 4 and len({j.name for j in jobs.values()}) == 4, "one directory per job"
    good = jobs[(str(poems_file), "0.001")]
    assert good.status == "finished" and good.metrics["global_step"] == 2
    assert jobs[(str(missing), "0.001")].status == "failed"  # the child died: data not found
    assert "missing.jsonl" in jobs[(str(missing), "0.001")].error
    for path in (poems_file, missing):  # rejected by validation before a process was started
        assert "method.learning_rate=-1.0 must be a positive number" in jobs[(str(path), "-1")].error
    assert (sweep / "summary.md").is_file() and (sweep / "summary.png").is_file()

    metrics = sweep / good.name / "metrics.json"
    finished_at = metrics.stat().st_mtime_ns
    second = _multirun(sweep, *overrides, *swept)
    assert second.returncode == 1, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert f"skipping {good.name}: finished" in log
    assert metrics.stat().st_mtime_ns == finished_at, "a finished job is never retrained"
    assert log.count("failed:") == 3, "failed jobs are retried (and fail again)"


def _job_config(poems_file: Path, *extra: str):
    from conftest import compose_config

    return compose_config([*tiny_overrides("lora", poems_file), *extra])


def test_a_bad_value_fails_its_job_only_and_is_recorded(poems_file: Path, tmp_path: Path):
    value = run_job(_job_config(poems_file, "method.learning_rate=-1"), tmp_path, ["method.learning_rate=-1"])
    assert value == math.inf, "the worst loss: a sweeper (Optuna too) goes on"
    error = json.loads((tmp_path / "error.json").read_text())
    assert "method.learning_rate=-1.0 must be a positive number" in error["error"]


def test_a_finished_job_is_skipped_without_starting_a_process(
    poems_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    cfg = _job_config(poems_file)
    run_cfg = to_run_config(cfg)
    run_cfg.run_dir = str(tmp_path)
    save_run_config(run_cfg, tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"eval_loss": 1.25}))
    (tmp_path / "error.json").write_text("{}")  # stale, from an earlier failed attempt

    def no_process(*args, **kwargs):
        raise AssertionError("a finished job must not be retrained")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    assert run_job(cfg, tmp_path, []) == 1.25
    edited = _job_config(poems_file, "method.r=16")  # same directory, different config: not passed off
    assert run_job(edited, tmp_path, ["method.r=16"]) == math.inf
    assert (
        "different config (method.r: 8 -> 16)" in json.loads((tmp_path / "error.json").read_text())["error"]
    )


def _compose_with_hydra(overrides: list[str]):
    from poetry_sft.config.compose import compose_config

    return compose_config(overrides, with_hydra=True)


def test_optuna_sweeper_config_composes():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweeper = _compose_with_hydra(["hydra/sweeper=poetry_optuna"]).hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "minimize" and sweeper.n_jobs == 1 and sweeper.sampler.seed == 0
    assert set(sweeper.params) == {"method.learning_rate", "method.r"}
    assert sweeper.max_failure_rate == 1.0, "a failed trial must not end the search"


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.max_num_timeout == 3
    subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"]
    assert subdir.startswith("${job_dirname:"), "SLURM jobs get the same job directories as local ones"


@pytest.mark.slow  # four training processes
def test_optuna_search_rerun_replays_finished_trials(poems_file: Path, tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    overrides = [*tiny_overrides("lora", poems_file, steps=2), "hydra/sweeper=poetry_optuna"]
    first = _multirun(sweep, *overrides, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert [j.status for j in read_jobs(sweep)] == ["finished", "finished"]
    results = OmegaConf.load(sweep / "optimization_results.yaml")

    second = _multirun(sweep, *overrides, "hydra.sweeper.n_trials=3")  # interrupted after 2, say
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert log.count(": finished in an earlier run") == 2, "the seeded sampler proposed the same 2 first"
    assert len(read_jobs(sweep)) == 3
    assert OmegaConf.load(sweep / "optimization_results.yaml").best_value <= results.best_value


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (
            "import sys; print('poetry_sft: error: data.path=x: no such file', file=sys.stderr); sys.exit(2)",
            "data.path=x: no such file",
        ),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "killed by SIGKILL (out of memory?"),
        ("raise RuntimeError('CUDA error: an illegal memory access')", "RuntimeError: CUDA error"),
    ],
    ids=["our-error", "oom-kill", "crash"],
)
def test_a_crashed_job_process_is_recorded_and_the_sweep_goes_on(
    script: str, expected: str, poems_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import poetry_sft.train.sweep as sweep

    monkeypatch.setattr(sweep, "child_command", lambda *args: [PYTHON, "-c", script])
    assert run_job(_job_config(poems_file), tmp_path, []) == math.inf
    error = json.loads((tmp_path / "error.json").read_text())
    assert error["error"].startswith(expected) and error["returncode"] != 0


def _failed_sweep_checks(result: subprocess.CompletedProcess, sweep: Path, failed: int, jobs: int) -> str:
    """The sweep exited non-zero after writing its summary; its error is one paragraph; returns it."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert (sweep / "summary.md").is_file() and (sweep / "summary.csv").is_file(), "the summary comes first"
    error = result.stderr[result.stderr.index("poetry_sft: error:") :].strip()
    assert "\n\n" not in error and f"{failed} of {jobs} sweep jobs failed" in error
    assert "Fix: correct what failed and run the same command again" in error
    return error


def test_a_sweep_with_failed_jobs_exits_non_zero_with_readable_job_directories(
    poems_file: Path, tmp_path: Path
):
    sweep = tmp_path / "sweep"
    # the schema's own overrides make every job's full name too long for a directory name
    result = _multirun(sweep, *tiny_overrides("lora", poems_file, steps=2), "method.learning_rate=-1,-2")
    error = _failed_sweep_checks(result, sweep, failed=2, jobs=2)
    assert "method.learning_rate=-1.0 must be a positive number" in error
    names = sorted(job.name for job in read_jobs(sweep))
    assert [name.rsplit("_", 1)[0] for name in names] == [
        "method.learning_rate=-1",
        "method.learning_rate=-2",
    ]


@pytest.mark.slow  # one job trains in its own process: ~1 min on a busy 2-core CPU
def test_a_two_job_sweep_with_one_failed_job_exits_non_zero(poems_file: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = _multirun(sweep, *tiny_overrides("lora", poems_file, steps=2), "method.learning_rate=1e-3,-1")
    _failed_sweep_checks(result, sweep, failed=1, jobs=2)
    jobs = {job.overrides["method.learning_rate"]: job for job in read_jobs(sweep)}
    assert jobs["0.001"].status == "finished" and jobs["-1"].status == "failed"
    assert jobs["0.001"].name.startswith("method.learning_rate=0.001_")
    summary = (sweep / "summary.md").read_text(encoding="utf-8")
    assert "1 finished, 1 failed" in summary


def test_short_job_names_are_unchanged_and_long_ones_keep_the_swept_values(monkeypatch: pytest.MonkeyPatch):
    from poetry_sft.train import sweep

    monkeypatch.setattr(sweep, "_swept_keys", {"method.r"})
    assert job_dirname("method.r=8,method=lora") == "method.r=8,method=lora"  # re-runs find their jobs
    long = ",".join([*(f"a{i}=value{i}" for i in range(20)), "method.r=16", "sample_titles=[春,夏]"])
    name = job_dirname(long)
    assert name.startswith("method.r=16_") and name != job_dirname(long.replace("value3", "other"))
