"""Paths a user gives: what a file holds before it is parsed, and directories that cannot be made or written,
each told in one line that says what to do."""

import errno
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, read_write

from cnnbench.errors import EXIT_USER_ERROR

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
PICKLE_PROTOCOL_2 = b"\x80"  # torch.save's legacy format, and plain pickles

# Why a file given as a checkpoint or weights cannot be one; "{wants}" is what to pass instead.
FORMAT_PROBLEMS = {
    "missing": "no such file",
    "directory": "is a directory; pass a {wants} file",
    "empty": "is empty (0 bytes)",
    "text": "is not a checkpoint file (it is text)",
    "unknown": "is not a checkpoint file (an unknown format: neither torch.save's nor safetensors)",
}


def file_format(path: str | Path) -> str:
    """'torch' (torch.save's zip or pickle), 'safetensors', or a key of FORMAT_PROBLEMS, from the first bytes."""
    path = Path(path)
    if path.is_dir():
        return "directory"
    if not path.is_file():
        return "missing"
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head:
        return "empty"
    if head.startswith((ZIP_MAGIC, PICKLE_PROTOCOL_2)):
        return "torch"
    # safetensors: the JSON header's length as 8 little-endian bytes, then the header
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    try:
        head.decode()
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of the 1024 bytes
            return "unknown"
    return "unknown" if b"\0" in head else "text"


def unpickling_reason(error: Exception) -> str:
    """Why torch.load(weights_only=True) refused a pickle, in a few words."""
    text = str(error)
    if "Weights only load failed" not in text:
        return text.splitlines()[0]
    detail = next(
        (line.strip() for line in text.partition("WeightsUnpickler error:")[2].splitlines() if line.strip()), ""
    )
    if not detail or "Unsupported global" in detail:
        return "it holds objects that are not plain data (refused: loading them could run code)"
    return f"a pickle that torch.load's data-only reader cannot read ({detail})"


# What to do about an OSError that a path given by the user causes (anything else is a bug, and keeps its traceback).
PATH_ERRORS = {
    errno.ENAMETOOLONG: "use a shorter path (the system allows 255 bytes a name, 4096 in all)",
    errno.ENOTDIR: "a file stands where a directory is needed: choose another path or move the file",
    errno.EEXIST: "a file stands where a directory is needed: choose another path or move the file",
    errno.EROFS: "choose a place on a writable file system",
    errno.EACCES: "choose a place you may write, or fix its permissions",
    errno.EPERM: "the system permits it nowhere under there (/sys, /proc): choose another place",
    errno.ENOENT: "it does not exist, or cannot be made there (/proc): check the path, or choose another",
    errno.EISDIR: "a directory stands where a file is needed",
    errno.ELOOP: "fix the symbolic links, or choose another path",
}


def path_error_message(error: OSError) -> str | None:
    """One line for an OSError a user's path caused, naming the path and what to do; None for any other."""
    if error.errno not in PATH_ERRORS:
        return None
    return f"{error.filename or '?'}: {error.strerror}; {PATH_ERRORS[error.errno]}"


def make_writable_dir(path: str, key: str) -> None:
    """Make directory `path` (the value of config key `key`) or stop with one line saying why it cannot be."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):  # an existing directory on a read-only mount, or another user's
            code = errno.EROFS if os.statvfs(path).f_flag & os.ST_RDONLY else errno.EACCES
            raise OSError(code, os.strerror(code), path)
    except OSError as e:
        if e.errno not in PATH_ERRORS:
            raise
        print(f"cnnbench: error: {key}={path}: {e.strerror}; {PATH_ERRORS[e.errno]}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None


class RunDirCheck(Callback):
    """Hydra makes the run (or sweep) directory before cnnbench runs, and a failure there is Hydra's traceback:
    this makes it first, with one line when it cannot be. The path is resolved once and pinned, so that Hydra
    makes the same one (hydra.run.dir's ${now:} could name the next second)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self.pin(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.pin(config, "sweep")

    @staticmethod
    def pin(config: DictConfig, mode: str) -> None:
        path = str(config.hydra[mode].dir)
        if not path:  # unset: the entry point names that itself
            return
        with read_write(config.hydra[mode]):
            config.hydra[mode].dir = path
        make_writable_dir(path, f"hydra.{mode}.dir")
