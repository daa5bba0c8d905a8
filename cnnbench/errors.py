"""Errors a user can fix: the entry points print their message on one line and exit non-zero."""


class CnnbenchError(Exception):
    """Base class: bad input, never a bug."""


class ConfigError(CnnbenchError):
    """A config key has an impossible value; the message starts with the key."""


class DataError(CnnbenchError):
    """A data set is missing or malformed; the message says where it was looked for."""


class CheckpointError(CnnbenchError):
    """A file is not a usable cnnbench checkpoint; the message names the file."""
