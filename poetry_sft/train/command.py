"""`poetry-sft train` (Hydra): register configs, validate before anything touches disk, train."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from poetry_sft.config.checks import to_run_config
from poetry_sft.config.compose import (
    FLAGS_WITH_VALUE,
    hydra_error_message,
    is_hydra_user_error,
    override_problems,
    register_recipes,
)
from poetry_sft.config.schema import RunConfig, Stage, register_configs
from poetry_sft.errors import (
    ERROR_PREFIX,
    INTERRUPTED_EXIT,
    ConfigError,
    PoetrySFTError,
    is_disk_full,
    is_unwritable,
    print_error,
)
from poetry_sft.model.doctor import check_environment
from poetry_sft.model.plan import check_budget
from poetry_sft.paths import CONF_DIR
from poetry_sft.run.artifacts import (
    RunDirClaim,
    cannot_write_error,
    ensure_fresh,
    ensure_usable_run_dir,
    ensure_usable_sweep_dir,
    find_newest_checkpoint,
    find_resume_checkpoint,
    is_main_process,
)
from poetry_sft.train.preflight import check_preflight
from poetry_sft.train.stages import resolve_init_run

log = logging.getLogger("poetry_sft")


# This process's hold on its run directory: taken at preflight, released when the run ends (or undone
# when it fails before training). Module state because Hydra's callback and task function share nothing else.
_claim: RunDirClaim | None = None


class PreflightCallback(Callback):
    """Runs after composition but before Hydra creates the run directory (single runs)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            _ensure_one_run_dir_for_all_processes(config)
            composed = to_run_config(config)
            run_cfg = resolve_init_run(composed)  # a stage: its init run, checked and applied
            # Read-only, and cheap: a finished run, a user's folder, a run another process is training.
            run_dir = Path(config.hydra.run.dir)
            ensure_fresh(run_dir)
            ensure_usable_run_dir(run_dir)
            check_preflight(run_cfg)  # scheduler, report_to, target modules, attention, paths, trainer.*
            check_budget(run_cfg)  # memory plan vs the profile's card, before any weights load
            # bitsandbytes that cannot load; a GPU profile on CPU-only torch (as composed: a stage on the
            # demo's random-init model is the demo's, whatever directory its weights now live in)
            check_environment(composed)
            _claim_run_dir(run_dir)
            # Under the lock: a mismatched resume is refused before Hydra writes into the directory.
            find_resume_checkpoint(run_dir, run_cfg)
        except PoetrySFTError as err:
            _abandon_run_dir()
            _exit_with(err)
        except Exception as err:  # Hydra would turn it into a warning and train on, unchecked and unlocked
            _abandon_run_dir()
            if is_hydra_user_error(err):
                _exit_with(ConfigError(hydra_error_message(err)))
            if is_unwritable(err) or is_disk_full(err):
                _exit_with(cannot_write_error(Path(config.hydra.run.dir), err))
            traceback.print_exc()
            sys.exit(1)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            _check_sweeper_and_launcher(config)
            sweep_dir = Path(config.hydra.sweep.dir)
            ensure_usable_sweep_dir(sweep_dir)
        except PoetrySFTError as err:
            _exit_with(err)
        _sweep_before.update(
            dir=sweep_dir, existed=sweep_dir.exists(), multirun=_read(sweep_dir / "multirun.yaml")
        )


# The sweep directory as it was before Hydra wrote multirun.yaml into it: Hydra checks each job's config
# only after that, and a refused sweep (a type error in one swept value) must leave nothing behind.
_sweep_before: dict[str, Any] = {}


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _undo_refused_sweep() -> None:
    sweep_dir = _sweep_before.get("dir")
    if sweep_dir is None or not sweep_dir.is_dir():
        return
    if not _sweep_before["existed"]:
        if {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml"}:
            shutil.rmtree(sweep_dir)
    elif (previous := _sweep_before["multirun"]) is not None:
        (sweep_dir / "multirun.yaml").write_bytes(previous)
    else:
        (sweep_dir / "multirun.yaml").unlink(missing_ok=True)


def _check_sweeper_and_launcher(config: DictConfig) -> None:
    """hydra/launcher=slurm on a machine without SLURM, an Optuna search of no trials: said before Hydra
    writes the sweep directory, not as a traceback after."""
    sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
    trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default=None)
    if sweeper.endswith("OptunaSweeper") and isinstance(trials, int) and trials < 1:
        raise ConfigError(  # Optuna would fail after the study, with "No trials are completed yet"
            f"hydra.sweeper.n_trials={trials}: an Optuna search needs at least one trial.\n"
            "  Fix: hydra.sweeper.n_trials=12 (conf/hydra/sweeper/poetry_optuna.yaml's), or any number >= 1"
        )
    target = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
    if target.endswith("SlurmLauncher") and shutil.which("srun") is None:
        raise ConfigError(
            "hydra/launcher=slurm submits each sweep job to SLURM, and this machine has none (srun is not on "
            "PATH).\n  Fix: run the same command on your cluster's login node (where sinfo works), or drop "
            "hydra/launcher=slurm and hydra.launcher.* to run the sweep here, one job after another."
        )


def _claim_run_dir(run_dir: Path) -> None:
    """Lock the run directory for this run's lifetime (rank 0 only: the other ranks train beside it)."""
    global _claim
    if not is_main_process():
        return
    _claim = RunDirClaim(run_dir).acquire()
    atexit.register(_release_run_dir)  # also if Hydra fails between the callback and the task


def _release_run_dir() -> None:
    global _claim
    if _claim is not None:
        _claim.release()
        _claim = None


def _abandon_run_dir() -> None:
    """A run that fails before training leaves no stub directory, and nothing new in an existing one."""
    global _claim
    if _claim is not None:
        _claim.abandon()
        _claim = None


def _ensure_one_run_dir_for_all_processes(config: DictConfig) -> None:
    """Under accelerate launch/torchrun each process composes its own config: a `${now:}` in run_dir could
    differ between processes started a second apart, and they would train into different directories."""
    container = OmegaConf.to_container(config, resolve=False)
    assert isinstance(container, dict)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "${now:" in str(container.get("run_dir")):
        raise ConfigError(
            "several processes (accelerate launch / torchrun) need one run directory named in advance.\n"
            "  Fix: add run_dir=runs/<name> to the command (the same for every process)."
        )


def _per_process_overrides(argv: list[str]) -> list[str]:
    """Processes other than rank 0 log to their own file and leave .hydra/ to rank 0."""
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        return argv
    return [*argv, "hydra.output_subdir=null", f"hydra.job.name=poetry_sft_rank{rank}"]


# Hydra's modes: it refuses two of them with a ValueError traceback
_MODES = {"--run": "--run", "-r": "--run", "--multirun": "--multirun", "-m": "--multirun", "--cfg": "--cfg"}
_MODES |= {"-c": "--cfg", "--info": "--info", "-i": "--info", "--shell-completion": "--shell-completion"}
_MODES |= {"-sc": "--shell-completion"}


def _mode_problems(argv: list[str]) -> list[str]:
    modes = sorted({_MODES[arg] for arg in argv if arg in _MODES})
    if len(modes) < 2:
        return []
    fix = (
        "drop --cfg to launch the sweep, or -m to print the config"
        if modes == ["--cfg", "--multirun"]
        else ""
    )
    return [
        f"{' and '.join(modes)} are two modes of the train command; Hydra runs one at a time.\n"
        f"  Fix: {fix or 'keep one of them'} (poetry-sft train --help)"
    ]


def _flags_first(argv: list[str]) -> list[str]:
    """Hydra's argparse takes its flags only before the overrides (`method=lora --cfg job hardware=4gb`
    fails there as `unrecognized arguments`); users write them anywhere."""
    flags: list[str] = []
    overrides: list[str] = []
    takes_value = False
    for arg in argv:
        if takes_value or arg.startswith("-"):
            flags.append(arg)
            takes_value = not takes_value and arg in FLAGS_WITH_VALUE
        else:
            overrides.append(arg)
    return flags + overrides


def _close_progress_bars() -> None:
    """A run stopped mid-training leaves Trainer's progress bar open: closed at exit, it would print its
    last state after the error, which must be the last thing on the screen."""
    from tqdm import tqdm  # type: ignore[import-untyped]  # (a transformers dependency, untyped)

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _exit_interrupted(run_dir: Path | None) -> None:
    """Ctrl-C: one line on what is left, instead of the traceback of wherever the loop was."""
    if run_dir is None:
        print("poetry_sft: interrupted before training started; nothing was kept", file=sys.stderr)
    else:
        checkpoint = find_newest_checkpoint(run_dir)
        where = f"from {checkpoint.name}" if checkpoint else "from step 0 (no checkpoint was complete yet)"
        print(
            f"poetry_sft: interrupted; {run_dir} stays an unfinished run. The same command with "
            f"run_dir={run_dir} resumes it {where}.",
            file=sys.stderr,
        )
    sys.exit(INTERRUPTED_EXIT)


def _exit_with(err: PoetrySFTError) -> None:
    sys.exit(print_error(err))


@contextlib.contextmanager
def _hydra_errors_raised() -> Iterator[None]:
    """Hydra prints its own refusals (a type error, an option of hydra/sweeper that does not exist) and exits
    1; raised instead, they leave as every user error does: our prefix, a fix, exit 2. A user who set
    HYDRA_FULL_ERROR=1 gets the traceback instead. The sweep's job processes inherit the variable with our
    mark beside it, so they too know it was not the user's."""
    if os.environ.get("HYDRA_FULL_ERROR"):
        yield
        return
    os.environ["HYDRA_FULL_ERROR"] = os.environ[_OUR_FULL_ERROR] = "1"
    try:
        yield
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)
        os.environ.pop(_OUR_FULL_ERROR, None)


_OUR_FULL_ERROR = "POETRY_SFT_SET_HYDRA_FULL_ERROR"


def _user_wants_hydras_report() -> bool:
    return bool(os.environ.get("HYDRA_FULL_ERROR")) and not os.environ.get(_OUR_FULL_ERROR)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _run(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode is RunMode.MULTIRUN:  # each job trains in its own process (poetry_sft/train/sweep.py)
        from poetry_sft.train.sweep import run_job

        return run_job(cfg, run_dir, list(hydra_cfg.overrides.task), hydra_cfg.job.config_name)

    train = stage_trainer(cfg.stage.name)

    if _claim is not None and _claim.lock.took_over:  # taken at preflight, before the log file was open
        log.warning(_claim.lock.took_over)
    training_started = False

    def on_training_start() -> None:
        nonlocal training_started
        training_started = True

    try:
        metrics = train(resolve_init_run(to_run_config(cfg)), run_dir, on_training_start)
    except BaseException as err:  # also a crash or Ctrl-C while loading: nothing there is worth keeping
        if not training_started:
            _abandon_run_dir()
        if training_started and isinstance(err, (PoetrySFTError, KeyboardInterrupt)):
            _close_progress_bars()
        if isinstance(err, PoetrySFTError):
            _exit_with(err)
        if isinstance(err, KeyboardInterrupt):
            _exit_interrupted(run_dir if training_started else None)
        raise
    finally:
        _release_run_dir()
    loss = metrics.get("eval_loss")
    log.info("finished: %s%s", run_dir, f" (eval_loss {loss:.4f})" if loss is not None else "")
    log.info("write poems with it: poetry-sft generate %s --title 春夜喜雨", run_dir)
    return loss  # what a Hydra sweeper minimises


def stage_trainer(stage: str) -> Callable[[RunConfig, Path, Callable[[], None] | None], dict[str, Any]]:
    """The `train(cfg, run_dir, on_training_start) -> metrics` of a stage (conf/stage/)."""
    if stage == Stage.grpo:
        from poetry_sft.train.grpo import train as train_grpo

        return train_grpo
    if stage == Stage.rejection:
        from poetry_sft.train.rejection import train as train_rejection

        return train_rejection
    from poetry_sft.train.sft import train as train_sft

    return train_sft


def main(argv: list[str] | None = None) -> int:
    """`poetry-sft train <Hydra overrides and flags>`: Hydra parses the command line (its --help too)."""
    from poetry_sft.train.sweep import register_resolvers

    argv = sys.argv[1:] if argv is None else argv
    register_configs()
    register_recipes()
    register_resolvers()
    # Before Hydra, whose messages name no fix
    if problems := [*_mode_problems(argv), *override_problems(argv)]:
        return print_error(ConfigError("\n".join(problems)))
    sys.argv = [sys.argv[0], *_flags_first(_per_process_overrides(argv))]  # @hydra.main reads sys.argv
    full_error = _user_wants_hydras_report()
    try:
        with _hydra_errors_raised():
            _run()
    except KeyboardInterrupt:  # a sweep (a single run says more itself, above)
        print("poetry_sft: interrupted; run the same command again to finish the sweep", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as err:
        if full_error or not is_hydra_user_error(err):
            raise  # a crash: its traceback is the report
        _undo_refused_sweep()
        return print_error(ConfigError(hydra_error_message(err)))
    from poetry_sft.train.sweep_report import sweep_failure

    if failure := sweep_failure():  # after a multirun wrote its summary: scripts and make must notice
        print(f"{ERROR_PREFIX}{failure}", file=sys.stderr)
        return 1
    return 0
