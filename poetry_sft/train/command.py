"""`poetry-sft train` (Hydra): register configs, validate before anything touches disk, train."""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from poetry_sft.config.checks import to_run_config
from poetry_sft.config.compose import override_problems, register_recipes
from poetry_sft.config.schema import RunConfig, Stage, register_configs
from poetry_sft.errors import ERROR_PREFIX, ConfigError, PoetrySFTError, print_error
from poetry_sft.model.doctor import check_environment
from poetry_sft.model.plan import check_budget
from poetry_sft.paths import CONF_DIR
from poetry_sft.run.artifacts import (
    RunDirClaim,
    ensure_fresh,
    ensure_usable_run_dir,
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


def _exit_with(err: PoetrySFTError) -> None:
    sys.exit(print_error(err))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _run(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode is RunMode.MULTIRUN:  # each job trains in its own process (poetry_sft/train/sweep.py)
        from poetry_sft.train.sweep import run_job

        return run_job(cfg, run_dir, list(hydra_cfg.overrides.task), hydra_cfg.job.config_name)

    train = stage_trainer(cfg.stage.name)
    training_started = False

    def on_training_start() -> None:
        nonlocal training_started
        training_started = True

    try:
        metrics = train(resolve_init_run(to_run_config(cfg)), run_dir, on_training_start)
    except BaseException as err:  # also a crash or Ctrl-C while loading: nothing there is worth keeping
        if not training_started:
            _abandon_run_dir()
        if isinstance(err, PoetrySFTError):
            _exit_with(err)
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
    if problems := override_problems(argv):  # before Hydra, whose messages name no fix
        return print_error(ConfigError("\n".join(problems)))
    sys.argv = [sys.argv[0], *_per_process_overrides(argv)]  # @hydra.main reads sys.argv
    _run()
    from poetry_sft.train.sweep_report import sweep_failure

    if failure := sweep_failure():  # after a multirun wrote its summary: scripts and make must notice
        print(f"{ERROR_PREFIX}{failure}", file=sys.stderr)
        return 1
    return 0
