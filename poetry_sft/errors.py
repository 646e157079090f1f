"""Errors a user can fix. The entry points print their message, without a traceback, and exit non-zero."""


class PoetrySFTError(Exception):
    """A problem with the user's input or environment; the message names it and the fix."""


class ConfigError(PoetrySFTError):
    """The composed configuration is invalid."""


class RunDirError(PoetrySFTError):
    """The run directory cannot be used (it holds a finished run, or is not a run)."""


class ResourceNotFoundError(PoetrySFTError):
    """A model, tokenizer or data set could not be loaded (offline, unknown id, missing file)."""
