"""Every file a run or a command leaves is written here: whole or not at all, and durable once written.

A temporary file beside the target (its name holds the writer's pid), flushed, fsynced and renamed over
the target, then the directory fsynced: a crash at any moment leaves the old file or the new one, whole.
A full disk, a quota or an I/O error is one line naming the file (WriteError), the old file kept.
"""

import json
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

from cnnbench.errors import CnnbenchError, WriteError


def write_file(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """write(f) into a temporary file, which then replaces `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        # torch.save reports a failed write as a RuntimeError raised from the OSError.
        os_error = e if isinstance(e, OSError) else e.__context__
        if isinstance(os_error, OSError) and os_error.errno:
            raise WriteError(
                f"{path}: could not be written ({os.strerror(os_error.errno)}); the previous "
                f"{path.name}, if any, is kept whole"
            ) from None
        raise
    remove_stale_temp_files(path)


def write_bytes(path: Path, data: bytes) -> None:
    write_file(path, lambda f: f.write(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, record) -> None:
    write_text(path, json.dumps(record, indent=2) + "\n")


def read_json(path: Path):
    """A JSON file cnnbench wrote (summary.json, bench.json); None where there is none. A truncated or
    edited one is one line naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as e:  # ValueError: not JSON, or not UTF-8
        raise CnnbenchError(
            f"{path}: unreadable ({str(e).splitlines()[0]}); delete it, or rerun the run that wrote it"
        ) from None


def fsync_directory(directory: Path) -> None:
    """Makes a rename in it durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temp_files(path: Path) -> None:
    """The temp files of writers killed mid-write (SIGKILL, OOM: no clean-up ran), never read, are
    removed once a write of the same file succeeds; a live writer's (its pid still running) is kept."""
    for temp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = temp.name.removeprefix(f".{path.name}.").split(".")[0]
        if pid.isdigit() and not process_exists(int(pid)):
            temp.unlink(missing_ok=True)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True
