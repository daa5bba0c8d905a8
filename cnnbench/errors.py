"""Errors a user can fix: the entry points print their message on one line and exit non-zero."""


class CnnbenchError(Exception):
    """Base class: bad input, never a bug."""


class ConfigError(CnnbenchError):
    """A config key has an impossible value; the message starts with the key."""


class DataError(CnnbenchError):
    """A data set is missing or malformed; the message says where it was looked for."""


class CheckpointError(CnnbenchError):
    """A file is not a usable cnnbench checkpoint; the message names the file."""


class WriteError(CnnbenchError):
    """A file could not be written (disk full, over quota, an I/O error); the message names it."""


class NonfiniteLoss(CnnbenchError):
    """The training loss became NaN or Inf (train.on_nonfinite=error); the message names the step."""


class Interrupted(Exception):
    """A stop signal arrived (engine/resume.py, StopSignals): a checkpoint was written at the step boundary,
    or the run had already completed."""


class RankFailed(Exception):
    """A worker of a DDP run that cnnbench launched itself failed; the message names the rank."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def short_list(names: list[str]) -> str:
    """A list of class names for a one-line message: its length and the first few."""
    return f"{len(names)}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}"


EXIT_POINTS_FAILED = 1  # a sweep ran every point, and some did not complete
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 143  # as if killed by SIGTERM: schedulers read it as preempted, not failed
EXIT_CTRL_C = 130
