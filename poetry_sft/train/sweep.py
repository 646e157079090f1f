"""Hydra multirun jobs, one child process each: a failed job is recorded and the sweep goes on.

    poetry-sft train -m model=tiny data=sample method=lora,qlora method.r=8,16 \\
        hydra.sweep.dir=multirun/rank_sweep

Each job's directory is named after its overrides (``method.r=8,method=lora``), so it is the same
on every re-run of the sweep and never shared by two jobs. Re-running a sweep with the same
``hydra.sweep.dir`` skips finished jobs, resumes interrupted ones from their last checkpoint and
retries failed ones.

Why a child process per job: Hydra's BasicLauncher runs jobs in one process, and CUDA memory
does not return between jobs there (hydra#2631); a process that exits frees it all. The child
also isolates crashes (OOM, a bad value): this parent records them in ``error.json`` and returns
+inf, the worst loss, instead of raising: an exception fails the whole Hydra sweep, and NaN makes
hydra-optuna-sweeper 1.3 with Optuna 2.10 raise mid-search.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from poetry_sft import atomic
from poetry_sft.config.checks import to_run_config
from poetry_sft.errors import ERROR_PREFIX, PoetrySFTError
from poetry_sft.run import artifacts

log = logging.getLogger("poetry_sft")

# What every job returns to the sweeper. Lower is better: a failed job returns +inf (a score to maximise
# would need -inf there, and direction: maximize in conf/hydra/sweeper/poetry_optuna.yaml).
METRIC = "eval_loss"
_SAFE_NAME = re.compile(r"[^\w.,=+-]")  # \w keeps CJK titles readable in a directory name
_SAFE_OVERRIDE_VALUE = re.compile(r"[\w./:\\~+-]+")


# The keys this sweep varies (set when a multirun starts: sweep_report.SummaryCallback), so a name that
# must be shortened keeps their values readable.
_swept_keys: set[str] = set()
# ... and for jobs that name their directory in another process (submitit, SLURM), which inherits the env
_SWEPT_KEYS_ENV = "POETRY_SFT_SWEPT_KEYS"
_ITEM = re.compile(r",(?=[+~]*[\w.@/-]+=)")  # the commas that separate overrides, not those inside a list


def job_dirname(override_dirname: str) -> str:
    """A job's directory name from its sorted overrides: deterministic, readable, and unique.

    Characters a file name cannot hold (``/`` of a data path) become ``_``; whenever anything was
    replaced or cut, a hash of the full overrides keeps two different jobs apart. A name too long for a
    file name keeps the swept values only (``method.learning_rate=0.001_<hash>``): the overrides every job
    shares are in summary.md and each job's .hydra/overrides.yaml.
    """
    if not override_dirname:
        return "defaults"
    name = _SAFE_NAME.sub("_", override_dirname)
    if name != override_dirname or len(name.encode("utf-8")) > 120:  # file names: 255 bytes, CJK: 3 each
        digest = hashlib.sha1(override_dirname.encode("utf-8")).hexdigest()[:8]
        swept_keys = _swept_keys or set(filter(None, os.environ.get(_SWEPT_KEYS_ENV, "").split(",")))
        if len(name.encode("utf-8")) > 120 and swept_keys:
            items = _ITEM.split(override_dirname)
            swept = [item for item in items if item.partition("=")[0].lstrip("+~") in swept_keys]
            name = _SAFE_NAME.sub("_", ",".join(swept)) or name
        name = f"{name.encode('utf-8')[:100].decode('utf-8', errors='ignore')}_{digest}"
    return name


def remember_swept_keys(config: DictConfig) -> None:
    """The keys a multirun varies: command-line sweeps (a,b / range() / choice()...) and the sweeper's
    params (hydra.sweeper.params, Optuna's search space)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys: set[str] = set()
    try:
        overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        keys |= {o.key_or_group for o in overrides if o.is_sweep_override()}
    except Exception as err:  # naming is cosmetic: never fail a sweep over it
        log.debug("could not tell the swept keys: %s", err)
    params = OmegaConf.select(config, "hydra.sweeper.params")
    keys |= set(params or {})
    _swept_keys.clear()
    _swept_keys.update(keys)
    os.environ[_SWEPT_KEYS_ENV] = ",".join(sorted(keys))


def register_resolvers() -> None:
    """``${job_dirname:...}`` for conf/config.yaml's hydra.sweep.subdir."""
    OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)


def run_job(cfg: DictConfig, job_dir: Path, overrides: list[str], config_name: str | None = None) -> float:
    """Train one sweep job in a child process. Returns its eval loss, or +inf if it failed (error.json)."""
    error_file = job_dir / artifacts.ERROR_FILE
    try:
        run_cfg = to_run_config(cfg)
        run_cfg.run_dir = str(job_dir)
        if artifacts.is_finished(job_dir):
            artifacts.ensure_same_config(job_dir, run_cfg)  # an edited YAML must not pass off old results
            log.info("skipping %s: finished in an earlier run of this sweep", job_dir.name)
            return _metric(job_dir)
        error_file.unlink(missing_ok=True)  # retried: its old failure no longer describes it
        _train_in_child(job_dir, overrides, config_name)
        return _metric(job_dir)
    except JobFailed as err:
        _record_failure(error_file, str(err), err.returncode, err.log_tail)
    except PoetrySFTError as err:  # a bad value for this job only: the other jobs still run
        _record_failure(error_file, str(err), None, [])
    return math.inf


class JobFailed(Exception):
    def __init__(self, message: str, returncode: int, log_tail: list[str]) -> None:
        super().__init__(message)
        self.returncode, self.log_tail = returncode, log_tail


def child_command(job_dir: Path, overrides: list[str], config_name: str | None = None) -> list[str]:
    """`poetry-sft train <this job's overrides> run_dir=<job dir>`: the job as a single run."""
    run_dir = str(job_dir)
    if not _SAFE_OVERRIDE_VALUE.fullmatch(run_dir):
        run_dir = "'" + run_dir.replace("\\", "\\\\").replace("'", "\\'") + "'"
    command = [sys.executable, "-m", "poetry_sft", "train"]
    if config_name:
        command += ["--config-name", config_name]
    # The parent already wrote .hydra/ for this job; the child must not rewrite it with run_dir added.
    return command + [*overrides, f"run_dir={run_dir}", "hydra.output_subdir=null"]


def _train_in_child(job_dir: Path, overrides: list[str], config_name: str | None) -> None:
    command = child_command(job_dir, overrides, config_name)
    log.info("job %s: %s", job_dir.name, " ".join(command[1:]))
    tail: collections.deque[str] = collections.deque(maxlen=40)
    # stderr is echoed (progress bars, errors) and its tail kept for error.json; stdout passes through.
    # Bytes, not text: text mode would turn each progress-bar redraw (\r) into a new line on the console.
    with subprocess.Popen(command, stderr=subprocess.PIPE) as child:
        assert child.stderr is not None
        for raw in child.stderr:
            line = raw.decode("utf-8", errors="replace")
            _echo(raw, line)
            tail.append(line.rstrip().split("\r")[-1][-500:])
    if child.returncode != 0:
        lines = [line for line in tail if line.strip()]
        raise JobFailed(_summary(child.returncode, lines), child.returncode, lines)
    if not artifacts.is_finished(job_dir):
        raise JobFailed(f"the job exited without writing {artifacts.METRICS_FILE}", 0, list(tail))


def _echo(raw: bytes, line: str) -> None:
    stream = getattr(sys.stderr, "buffer", None)  # absent where stderr is replaced (pytest's capture)
    if stream is not None:
        stream.write(raw)
        stream.flush()
    else:
        sys.stderr.write(line)


def _summary(returncode: int, lines: list[str]) -> str:
    """Why a job died: our own error paragraph, the exception, or the signal."""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    ours = [i for i, line in enumerate(lines) if line.startswith(ERROR_PREFIX)]
    if ours:  # our error paragraph: its first line and the indented ones after it (- problem, Fix: ...)
        paragraph = [lines[ours[-1]].removeprefix(ERROR_PREFIX)]
        for line in lines[ours[-1] + 1 :]:
            if not line.startswith((" ", "\t")):
                break
            paragraph.append(line)
        return "\n".join(paragraph)
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]
    return (errors or lines or [f"exit status {returncode}"])[-1]


def _record_failure(path: Path, message: str, returncode: int | None, log_tail: list[str]) -> None:
    log.error("job %s failed: %s (details in %s)", path.parent.name, " ".join(message.split()), path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"error": message, "returncode": returncode, "log_tail": log_tail}
    atomic.write_json(path, payload)


def _metric(job_dir: Path) -> float:
    metrics = json.loads((job_dir / artifacts.METRICS_FILE).read_text(encoding="utf-8"))
    value = metrics.get(METRIC)
    return float(value) if value is not None else math.inf
