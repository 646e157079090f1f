"""Errors a user can fix. The entry points print their message, without a traceback, and exit non-zero."""

from __future__ import annotations

import errno
import functools
import sys
from pathlib import Path
from typing import Protocol


class Main(Protocol):
    """A command's entry point: main(argv) -> exit code; argv None means sys.argv[1:]."""

    def __call__(self, argv: list[str] | None = None) -> int: ...


class PoetrySFTError(Exception):
    """A problem with the user's input or environment; the message names it and the fix."""


class ConfigError(PoetrySFTError):
    """The composed configuration is invalid."""


class RunDirError(PoetrySFTError):
    """The run directory cannot be used (it holds a finished run, or is not a run)."""


class DataFileError(PoetrySFTError):
    """A data file cannot be read: empty, not UTF-8, cut off, or a malformed line (datafiles.py)."""


class DiskFullError(PoetrySFTError):
    """The disk filled up while a run saved a checkpoint or its model."""


class TrainingDivergedError(PoetrySFTError):
    """The loss became NaN or infinite: the run stops, unfinished, at the last good checkpoint."""


class ResourceNotFoundError(PoetrySFTError):
    """A model, tokenizer or data set could not be loaded (offline, unknown id, missing file)."""


# The one way a user error leaves any command: this prefix on stderr, this exit code. The sweep reads a
# failed job's reason back from its stderr by the prefix.
ERROR_PREFIX = "poetry_sft: error: "
USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130  # 128 + SIGINT, what shells report for a Ctrl-C


def print_error(err: PoetrySFTError) -> int:
    """Print the error for the user (no traceback) and return the exit code."""
    print(f"{ERROR_PREFIX}{err}", file=sys.stderr)
    return USER_ERROR_EXIT


def command(main: Main) -> Main:
    """A command's main(argv) -> exit code: a PoetrySFTError prints as `poetry_sft: error: ...`, exit 2."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except PoetrySFTError as err:
            return print_error(err)
        except KeyboardInterrupt:  # Ctrl-C: one line, not the traceback of wherever it was
            print("\npoetry_sft: interrupted", file=sys.stderr)
            return INTERRUPTED_EXIT

    return run


# How a full disk shows: OSError ENOSPC/EDQUOT from Python, or the text of safetensors' Rust IoError
_DISK_FULL = ("No space left on device", "StorageFull", "os error 28", "Disk quota exceeded", "QuotaExceeded")


# torch.save's C++ zip writer reports a failed write without its errno ("[enforce fail at inline_container.cc]
# unexpected pos", "PytorchStreamWriter failed writing file"): a full disk is then told by the free space left
_TORCH_WRITE_FAILED = ("PytorchStreamWriter failed writing", "inline_container.cc")


def is_disk_full(err: BaseException, where: Path | None = None) -> bool:
    """Whether `err` (or what caused it) means the disk or the user's quota is full. `where`: the folder
    being written, for the errors that name no cause (torch.save's)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(marker in str(seen) for marker in _DISK_FULL):
            return True
        if where is not None and any(marker in str(seen) for marker in _TORCH_WRITE_FAILED):
            return _nearly_full(where)
        seen = seen.__cause__ or seen.__context__
    return False


def _nearly_full(where: Path) -> bool:
    """Under 64 MiB (or 1% of the disk) left to this user where `where` is, or on its nearest parent."""
    import shutil

    path = where
    while not path.exists() and path.parent != path:
        path = path.parent
    usage = shutil.disk_usage(path)
    return usage.free < max(64 * 2**20, usage.total // 100)


# What a folder one may not write to raises: permissions, a read-only disk or mount
CANNOT_WRITE = (errno.EACCES, errno.EPERM, errno.EROFS)


def is_unwritable(err: BaseException) -> bool:
    """Whether `err` (or what caused it) says a folder cannot be written: permissions, a read-only disk."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in CANNOT_WRITE:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def write_failure(where: Path, err: BaseException, what: str, elsewhere: str) -> PoetrySFTError | None:
    """The error for a full disk or an unwritable folder met while writing `what` to `where` (None: some
    other failure, left as it is). `elsewhere` is the command's way to write somewhere else (--out DIR)."""
    why = getattr(err, "strerror", None) or str(err).splitlines()[0][:200]
    if is_disk_full(err, where):
        return DiskFullError(
            f"could not write {what} to {where}: the disk is full ({why}); nothing was left there.\n"
            f"  Fix: free space on that disk, or write elsewhere with {elsewhere}"
        )
    if is_unwritable(err):
        return PoetrySFTError(
            f"could not write {what} to {where}: the folder is read-only or not yours to write ({why}); "
            f"nothing was left there.\n  Fix: write where you can, {elsewhere}, or make the folder writable"
        )
    return None


def ensure_writable(where: Path, what: str, elsewhere: str) -> None:
    """Refuse now (before minutes of work) a `where` whose nearest existing folder cannot be written."""
    import os

    folder = where.parent if not where.is_dir() else where
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if not os.access(folder, os.W_OK):  # permissions, and a read-only mount (even for root)
        raise PoetrySFTError(
            f"cannot write {what} to {where}: {folder} is read-only or not yours to write.\n"
            f"  Fix: write where you can, {elsewhere}, or make {folder} writable"
        )
