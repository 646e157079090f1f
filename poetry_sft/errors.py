"""Errors a user can fix. The entry points print their message, without a traceback, and exit non-zero."""

from __future__ import annotations

import functools
import sys
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


class ResourceNotFoundError(PoetrySFTError):
    """A model, tokenizer or data set could not be loaded (offline, unknown id, missing file)."""


def command(main: Main) -> Main:
    """A command's main(argv) -> exit code: a PoetrySFTError prints as `error: ...`, exit code 2."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except PoetrySFTError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return run
