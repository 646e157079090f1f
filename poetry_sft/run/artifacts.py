"""The run directory: what a run writes, how a finished one is recognised, and how it is read back.

<run_dir>/
  config.yaml      the resolved RunConfig (what `load_run_config` reads)
  model/           adapter (LoRA/QLoRA: adapter_model.safetensors + adapter_config.json) or full model,
                   plus the tokenizer
  checkpoints/     Trainer checkpoints while training; an interrupted run resumes from the newest complete one
  data_report.json rows in, dropped by reason, rows out, token length percentiles
  log_history.json the Trainer's logs by step (loss, eval_loss, eval_poetry/*, learning rate)
  metrics.json     written last: its presence marks a finished run
  error.json       a sweep job that failed: the error and the tail of its log (removed when it is retried)
  .hydra/          Hydra's composed config and overrides
  .poetry_sft.lock while a process trains here (poetry_sft/run/lock.py): a second one is refused

A directory is a run if it holds our config (config.yaml or .hydra/config.yaml with model/method/hardware/
data) or our lock; any other non-empty directory (a user's folder, `run_dir=.`) is refused untouched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from poetry_sft.config.checks import validate
from poetry_sft.config.schema import RunConfig
from poetry_sft.errors import ConfigError, DiskFullError, PoetrySFTError, RunDirError, is_disk_full
from poetry_sft.run.lock import LOCK_FILE, RunLock

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
DATA_REPORT_FILE = "data_report.json"
LOG_HISTORY_FILE = "log_history.json"  # Trainer's log history: losses, eval scores and rates by step
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
ERROR_FILE = "error.json"
# The run's config inside a model directory made from it (merge): generate --model DIR prompts as the run did
RUN_CONFIG_IN_MODEL = "poetry_sft_run.yaml"
# What Trainer writes into checkpoint-N; trainer_state.json comes last (Trainer._save_checkpoint).
TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")

log = logging.getLogger(__name__)


def is_main_process() -> bool:
    """Rank 0 under `accelerate launch`/torchrun (they set RANK), or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def is_finished(run_dir: Path) -> bool:
    return (run_dir / METRICS_FILE).is_file()


def ensure_fresh(run_dir: Path) -> None:
    """Refuse a directory that holds a finished run: it is never retrained or overwritten."""
    if is_finished(run_dir):
        raise RunDirError(
            f"{run_dir} already holds a finished run ({METRICS_FILE} exists); it is never overwritten.\n"
            f"  Fix: choose a new directory, run_dir=runs/<new-name>, or move {run_dir} away yourself."
        )


_RUN_KEYS = {"model", "method", "hardware", "data"}
# What an OS puts into any folder: it does not make an empty folder someone's files.
_OS_CLUTTER = {".DS_Store", "Thumbs.db", "desktop.ini"}


def _is_our_config(path: Path) -> bool:
    try:
        cfg = OmegaConf.load(path)
    except Exception:  # not YAML, not readable: someone else's config.yaml
        return False
    return isinstance(cfg, DictConfig) and set(cfg.keys()) >= _RUN_KEYS


def is_run_dir(run_dir: Path) -> bool:
    """A directory poetry_sft wrote: our config (ours or Hydra's copy of it) or our lock is in it."""
    return (
        (run_dir / LOCK_FILE).is_file()
        or _is_our_config(run_dir / CONFIG_FILE)
        or _is_our_config(run_dir / ".hydra" / CONFIG_FILE)
    )


def ensure_usable_run_dir(run_dir: Path) -> None:
    """Refuse a run_dir that is a file, or a non-empty directory that is not a poetry_sft run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(
            f"run_dir={run_dir} is a file, not a directory.\n"
            "  Fix: name a new directory, run_dir=runs/<new-name>."
        )
    if is_main_process():  # (rank 0's own lock is what the other ranks of its launch find here)
        RunLock(run_dir).ensure_free()  # a run training there: said now, before the config checks
    if not run_dir.is_dir() or is_run_dir(run_dir):
        return
    entries = sorted(p.name for p in run_dir.iterdir() if p.name not in _OS_CLUTTER)
    if entries:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise RunDirError(
            f"run_dir={run_dir} is a non-empty directory that is not a poetry_sft run ({shown}); a run would "
            f"write its {CONFIG_FILE}, model/ and checkpoints/ among those files, so nothing was written.\n"
            "  Fix: name a new or empty directory, run_dir=runs/<new-name>."
        )


def is_sweep_dir(folder: Path) -> bool:
    """A folder a sweep wrote: Hydra's multirun.yaml (the basic sweeper), Optuna's results, or a job (a
    subfolder with Hydra's .hydra/overrides.yaml, written before the job trains)."""
    if (folder / "multirun.yaml").is_file() or (folder / "optimization_results.yaml").is_file():
        return True
    return any((job / ".hydra" / "overrides.yaml").is_file() for job in folder.iterdir() if job.is_dir())


def ensure_usable_sweep_dir(sweep_dir: Path) -> None:
    """Refuse a hydra.sweep.dir that is a file, or a non-empty folder that no sweep wrote: a sweep writes
    multirun.yaml, its summary and a folder per job there."""
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise RunDirError(
            f"hydra.sweep.dir={sweep_dir} is a file, not a folder.\n"
            "  Fix: name a new folder, hydra.sweep.dir=multirun/<name>."
        )
    if not sweep_dir.is_dir() or is_sweep_dir(sweep_dir):
        return  # new, or a sweep run before (finished jobs are skipped, the others resumed)
    entries = sorted(p.name for p in sweep_dir.iterdir() if p.name not in _OS_CLUTTER)
    if entries:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise RunDirError(
            f"hydra.sweep.dir={sweep_dir} is a non-empty folder that is not a sweep ({shown}): a sweep "
            "writes multirun.yaml, its summary and a folder per job there, so nothing was written.\n"
            "  Fix: name a new or empty folder, hydra.sweep.dir=multirun/<name>."
        )


def cannot_write_error(run_dir: Path, err: BaseException) -> PoetrySFTError:
    """A run directory that cannot be created or written (permissions, a read-only or full disk), before
    anything was trained: one message instead of a traceback from mkdir, the lock or Hydra's log file."""
    existing = run_dir
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    why = getattr(err, "strerror", None) or str(err)
    if is_disk_full(err):
        return DiskFullError(
            f"no space left on the disk of {existing} to start a run in {run_dir} ({why}).\n"
            "  Fix: free space on that disk, or train on one with room: run_dir=<path there>."
        )
    return RunDirError(
        f"cannot write to {run_dir} ({why}): a run writes its config, log, checkpoints and model there, and "
        f"{existing} is read-only or not yours to write.\n"
        f"  Fix: train into a folder you can write, run_dir=runs/<new-name>, or make {existing} writable "
        f"(ls -ld {existing})."
    )


class RunDirClaim:
    """This process's hold on its run directory, from preflight to the end of the run.

    Locks it (rank 0 only) and remembers what was there before, so that a run failing before training can
    leave things as they were: a directory it created is removed, in an existing one only what it added
    goes, and Hydra's copy of the config (.hydra/) is put back.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.lock = RunLock(run_dir)
        created = run_dir
        while not created.parent.exists() and created.parent != created:
            created = created.parent
        self.created_root: Path | None = None if run_dir.exists() else created
        self.entries_before: set[str] = set()
        self.hydra_before: dict[str, tuple[bytes, int]] = {}

    def acquire(self) -> RunDirClaim:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except BaseException:
            self._remove_empty_created_dirs(self.run_dir)  # its contents belong to the lock's owner
            raise
        # What was there before, read under the lock: nobody else is writing it now.
        self.entries_before = {p.name for p in self.run_dir.iterdir()}
        hydra_dir = self.run_dir / ".hydra"
        if hydra_dir.is_dir():
            self.hydra_before = {
                p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in hydra_dir.iterdir() if p.is_file()
            }
        return self

    def _remove_empty_created_dirs(self, start: Path) -> None:
        """rmdir `start` and its parents up to the topmost one this run created, while they are empty."""
        if self.created_root is None:
            return
        path = start
        while path.is_relative_to(self.created_root):
            try:
                path.rmdir()
            except OSError:  # not empty: another run lives there too
                return
            path = path.parent

    def release(self) -> None:
        self.lock.release()

    def abandon(self) -> None:
        """The run failed before training: undo what it wrote, then release the lock."""
        _close_log_files_under(self.run_dir)  # Windows cannot delete a file that is still open
        self._undo()
        self.lock.release()

    def _undo(self) -> None:
        if self.created_root is not None:
            self.lock.held = False  # removed with the directory
            shutil.rmtree(self.run_dir, ignore_errors=True)
            # and the parents it made (runs/), unless another run has moved in there meanwhile
            self._remove_empty_created_dirs(self.run_dir.parent)
            return
        for path in self.run_dir.iterdir():
            if path.name not in self.entries_before and path.name != LOCK_FILE:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        hydra_dir = self.run_dir / ".hydra"
        if ".hydra" in self.entries_before and hydra_dir.is_dir():  # Hydra rewrote it: put it back
            for path in hydra_dir.iterdir():
                if path.name not in self.hydra_before and path.is_file():
                    path.unlink()
            for name, (content, mtime_ns) in self.hydra_before.items():
                (hydra_dir / name).write_bytes(content)
                os.utime(hydra_dir / name, ns=(mtime_ns, mtime_ns))


def _close_log_files_under(directory: Path) -> None:
    loggers = [logging.getLogger(), *logging.getLogger().manager.loggerDict.values()]
    for logger in (lg for lg in loggers if isinstance(lg, logging.Logger)):  # not PlaceHolders
        for handler in list(logger.handlers):
            filename = getattr(handler, "baseFilename", None)
            if filename and Path(filename).resolve().is_relative_to(directory.resolve()):
                handler.close()
                logger.removeHandler(handler)


def is_complete_checkpoint(checkpoint: Path) -> bool:
    return checkpoint_problem(checkpoint) is None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed, or None when it is whole.

    Trainer writes weights, optimizer, scheduler and RNG first and trainer_state.json last, straight into
    checkpoint-N (not atomically): a checkpoint is whole only if that last file parses and names step N,
    and every weight/state file it holds is complete (a full disk or a bad copy cuts files short). The
    checks read headers only, not the tensors.
    """
    match = _CHECKPOINT_NAME.match(checkpoint.name)
    if not match:
        return "not a checkpoint-<step> directory"
    if not (
        any((checkpoint / name).is_file() for name in WEIGHT_FILES)
        or any(checkpoint.glob("pytorch_model_fsdp_*"))  # FSDP's SHARDED_STATE_DICT
    ):
        return f"it holds no weights ({' / '.join(WEIGHT_FILES[:2])})"
    try:
        state = read_trainer_state(checkpoint)
    except FileNotFoundError:
        return f"{TRAINER_STATE} is missing (it is written last: the save was interrupted)"
    except (OSError, ValueError) as err:  # cut off mid-write by a kill, or damaged
        return f"{TRAINER_STATE} cannot be read ({str(err).splitlines()[0][:120]})"
    if not isinstance(state, dict) or state.get("global_step") != int(match.group(1)):
        found = state.get("global_step") if isinstance(state, dict) else None
        return f"{TRAINER_STATE} names step {found}, not {match.group(1)}"
    for path in sorted(checkpoint.iterdir()):
        problem = (
            _safetensors_problem(path)
            if path.suffix == ".safetensors"
            else _torch_file_problem(path)
            if path.suffix in (".pt", ".pth")
            else None
        )
        if problem:
            return problem
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is 8 bytes of header length, the JSON header, then the tensors it lists."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if length < 0 or 8 + length > size:
            return f"{path.name} is cut off ({size:,} bytes, shorter than its own header)"
        try:
            header = json.loads(f.read(length))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return f"{path.name} is damaged (its header is not a safetensors header)"
    if 8 + length + end != size:
        return f"{path.name} is cut off ({size:,} of {8 + length + end:,} bytes)"
    return None


def _torch_file_problem(path: Path) -> str | None:
    """torch.save writes a zip archive, whose directory comes last: a cut-off file has none."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return f"{path.name} is cut off or damaged ({path.stat().st_size:,} bytes, not a whole torch.save)"
    return None


def skipped_checkpoints(run_dir: Path, resumed: Path | None) -> list[tuple[Path, str]]:
    """Checkpoints newer than `resumed` (all of them for None) that cannot be resumed, and why."""
    step = int(resumed.name.split("-")[1]) if resumed else -1
    return [
        (path, problem)
        for path in (run_dir / CHECKPOINTS_DIR).glob("checkpoint-*")
        if _CHECKPOINT_NAME.match(path.name) and int(path.name.split("-")[1]) > step
        if (problem := checkpoint_problem(path))
    ]


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))


def find_resume_checkpoint(run_dir: Path, cfg: RunConfig) -> Path | None:
    """The newest complete checkpoint of an interrupted run in `run_dir`, or None for a fresh start.

    Refuses a finished run, and checkpoints of a run with a different config (resuming those would mix
    two experiments under one name). Half-written checkpoints are never picked.
    """
    ensure_fresh(run_dir)
    checkpoints = sorted(
        (p for p in (run_dir / CHECKPOINTS_DIR).glob("checkpoint-*") if _CHECKPOINT_NAME.match(p.name)),
        key=lambda p: int(p.name.split("-")[1]),
    )
    if not checkpoints:
        return None
    ensure_same_config(run_dir, cfg)
    complete = [p for p in checkpoints if is_complete_checkpoint(p)]
    return complete[-1] if complete else None


def find_newest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint in `run_dir`, whatever its config (None: there is none)."""
    complete = [
        p
        for p in (run_dir / CHECKPOINTS_DIR).glob("checkpoint-*")
        if _CHECKPOINT_NAME.match(p.name) and is_complete_checkpoint(p)
    ]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def discard_incomplete_checkpoints(run_dir: Path) -> None:
    """Remove checkpoints a kill cut off mid-write, so Trainer's rotation never keeps one over a whole one."""
    if not is_main_process():
        return
    for path in (run_dir / CHECKPOINTS_DIR).glob("checkpoint-*"):
        if path.is_dir() and (problem := checkpoint_problem(path)):
            log.warning("removing %s, which cannot be resumed: %s", path, problem)
            shutil.rmtree(path)


def ensure_same_config(run_dir: Path, cfg: RunConfig) -> None:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(
            f"{run_dir} holds checkpoints but no {CONFIG_FILE}: it was not written by poetry_sft, "
            "so it is not resumed.\n  Fix: choose a new directory, run_dir=runs/<new-name>."
        )
    saved = _comparable(_saved_config(path))
    current = _comparable(OmegaConf.structured(cfg))
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise RunDirError(
            f"{run_dir} holds a run made with a different config ({diff}); "
            "resuming or reusing it would mix two experiments.\n"
            "  Fix: resume with the same settings, or start anew elsewhere, run_dir=runs/<new-name>."
        )


def _comparable(cfg: Any) -> dict[str, Any]:
    """Flat {dotted.key: value}, minus where the run lives (a moved run directory is the same run)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(container, dict)
    container.pop("run_dir", None)
    walk(container, "")
    return flat


def save_run_config(cfg: RunConfig, run_dir: Path) -> None:
    if not is_main_process():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    path = run_dir / CONFIG_FILE
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):  # a resume leaves it as it was
        path.write_text(text, encoding="utf-8")


def load_run_config(run_dir: Path) -> RunConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(
            f"{run_dir} is not a poetry_sft run directory: {CONFIG_FILE} is missing.\n"
            "  Fix: name a run's directory, runs/<run> (each holds config.yaml); for a model folder that is "
            "not a run, generate takes --model DIR"
        )
    return read_run_config(path)


# Keys earlier versions wrote that the schema no longer has (read by nothing): dropped on reading, so
# runs made before still load, resume and generate.
_RETIRED_KEYS = (("data", "name"),)


def _saved_config(path: Path) -> Any:
    """A saved config on today's schema: retired keys dropped, keys added since at their defaults (a run
    from before a new option existed is the same run: it trained without it)."""
    saved = OmegaConf.load(path)
    assert isinstance(saved, DictConfig), f"{path}: not a mapping"
    for section, key in _RETIRED_KEYS:
        if section in saved and key in saved[section]:
            saved[section].pop(key)
    return OmegaConf.merge(OmegaConf.structured(RunConfig), saved)


def read_run_config(path: Path) -> RunConfig:
    """A saved RunConfig: a run's config.yaml, or the RUN_CONFIG_IN_MODEL copy a merged model carries."""
    try:
        cfg = OmegaConf.to_object(_saved_config(path))
    except Exception as err:  # not YAML, cut off, edited by hand: a message, not a parser's traceback
        raise damaged_config_error(path, err) from err
    if not isinstance(cfg, RunConfig):
        raise damaged_config_error(path, TypeError(f"it holds {type(cfg).__name__}, not a run's settings"))
    try:
        return validate(cfg)
    except ConfigError as err:  # readable, but a rule refuses it (edited by hand, or a rule added since)
        problems = " ".join(line.strip(" -") for line in str(err).splitlines()[1:] if "Fix:" not in line)
        raise RunDirError(
            f"{path} holds settings this version refuses: {problems}\n"
            "  Fix: correct that value in it (if it was edited by hand), or train the run again with valid "
            "settings."
        ) from err


def damaged_config_error(path: Path, err: BaseException) -> RunDirError:
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and "Fix:" not in line]
    lines = [line for line in lines if not line.startswith(("full_key:", "object_type", "reference_type"))]
    why = " ".join(lines)[:300] or type(err).__name__
    hydra_copy = path.parent / ".hydra" / CONFIG_FILE
    restore = (
        f"restore it from a backup, or compare it with {hydra_copy} (Hydra's copy of the settings the run "
        "was composed from)"
        if hydra_copy.is_file()
        else "restore it from a backup or a copy of the run"
    )
    return RunDirError(
        f"{path} is damaged and cannot be read as a run's settings ({why}); the model is not loaded "
        "without them, since the prompts it was trained on are among them.\n"
        f"  Fix: {restore}; the other files of the run are untouched."
    )


def unfinished_error(run_dir: Path) -> RunDirError:
    """A run directory whose training did not end: no model/ or metrics.json to use."""
    log_file = next(iter(sorted(run_dir.glob("*.log"))), None)
    why = f" ({log_file} says why)" if log_file else ""
    return RunDirError(
        f"{run_dir} holds no finished run: its training was interrupted, diverged or failed{why}, so it has "
        f"no {MODEL_DIR}/ and no {METRICS_FILE}.\n  Fix: resume it with the same train command and "
        f"run_dir={run_dir} (it continues from its last checkpoint), or pick a finished run (one with "
        f"{METRICS_FILE})."
    )


def init_adapter_dir(cfg: RunConfig) -> Path | None:
    """The adapter a rejection/GRPO stage trains on: its LoRA/QLoRA init run's (None: the init run trained
    every weight, or this is an SFT run; a new adapter then, if the method has one)."""
    if not cfg.init_run:
        return None
    model_dir = Path(cfg.init_run) / MODEL_DIR
    return model_dir if (model_dir / "adapter_config.json").is_file() else None
