"""A run directory belongs to one process at a time, and nothing a user had there is written over.

Before any work an entry point (cnnbench.sweep.run_job) holds the directory: an flock on its run.lock,
which the kernel releases when the holder dies (a crash, a SLURM requeue, a torchrun restart never
leaves it behind), with the holder's host and pid inside for the message a second process prints. It
then refuses a directory that holds anything other than a run resume=auto continues. Hydra's own record
(.hydra/config.yaml, hydra.yaml, overrides.yaml) is written here, after those checks: conf/*.yaml set
hydra.output_subdir to null, or Hydra would write it into the directory before any check could refuse.
"""

import fcntl
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cnnbench.errors import ConfigError
from cnnbench.files import write_text

LOCK = "run.lock"
# What cnnbench's commands write into a run directory: a failed attempt of a sweep point or of a
# torchrun restart, holding only these and no checkpoint to continue, is started over.
RUN_FILES = {
    ".hydra",
    LOCK,
    "train.log",
    "metrics.csv",
    "summary.json",
    "tb",
    "checkpoints",
    "bench.json",
    "confusion_matrix.csv",
    "confusion_matrix.png",
}


def hydra_dir_key() -> str:
    return "hydra.sweep.dir" if HydraConfig.get().mode.name == "MULTIRUN" else "hydra.run.dir"


def check_dir_setting() -> None:
    """`hydra.run.dir=$UNSET`: Hydra would run in the current directory, whatever it holds."""
    key = hydra_dir_key()
    if not str(OmegaConf.select(HydraConfig.get(), key.removeprefix("hydra.")) or "").strip():
        raise ConfigError(f"{key}: empty (an unset shell variable?); name the directory to write to")


def lock(path: Path) -> int:
    """An open descriptor on path, flocked by this process, or a ConfigError naming the holder."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 256, 0).decode(errors="replace").split()
        os.close(fd)
        who = f"pid {holder[1]} on {holder[0]}" if len(holder) == 2 else "another process"
        raise ConfigError(
            f"{hydra_dir_key()}: {path.parent} is in use by {who} ({LOCK}); wait for it to "
            f"end, or choose another directory"
        ) from None
    return fd


@contextmanager
def hold(run_dir: Path, check):
    """This process holds run_dir until the block ends, which gets check()'s result. A held lock is
    named before anything else; a directory without one is checked before its lock file is written."""
    path = run_dir / LOCK
    fd = lock(path) if path.exists() else None
    try:
        result = check()
        if fd is None:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = lock(path)
        os.ftruncate(fd, 0)  # the holder, for the message a second process prints
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        yield result
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock; the file stays, as removing it would race the next holder


def status(run_dir: Path, record: str) -> str | None:
    try:
        return json.loads((run_dir / record).read_text()).get("status")
    except (OSError, ValueError):
        return None


def file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def own_output() -> set[tuple[int, int]]:
    """The files this process's stdout and stderr go to: a shell's `> run/train.out` or SLURM's --output
    in the run directory is the run's own, made for it before it started, not something a user had."""
    ids = set()
    for fd in (1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        ids.add((st.st_dev, st.st_ino))
    return ids


def claim(run_dir: Path, resume: str | None, retry: bool, record: str = "summary.json") -> bool:
    """Whether run_dir holds a run to continue (resume=auto and checkpoints/last.pt); a ConfigError
    for a directory that holds anything else. retry: a sweep point or a torchrun restart, whose own
    failed attempt (cnnbench's files only, no checkpoint, not completed) starts over."""
    own = own_output()
    held = (
        sorted(p.name for p in run_dir.iterdir() if p.name != LOCK and file_id(p) not in own)
        if run_dir.is_dir()
        else []
    )
    if not held:
        return False
    if (run_dir / "checkpoints" / "last.pt").exists():
        if resume == "auto":
            return True
        raise ConfigError(
            f"resume: {run_dir} already holds a run (checkpoints/last.pt); pass resume=auto "
            f"to continue it, or choose another {hydra_dir_key()}"
        )
    if retry and set(held) <= RUN_FILES and status(run_dir, record) != "completed":
        return False
    what = (
        "a run without checkpoints/last.pt to continue"
        if record in held
        else ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
    )
    raise ConfigError(
        f"{hydra_dir_key()}: {run_dir} already holds {what}; cnnbench writes only into a new "
        f"or empty directory: choose another"
    )


def save_hydra_record(run_dir: Path, task_cfg: DictConfig) -> None:
    """Hydra's own record of the run, as Hydra would have written it: the composed config, Hydra's
    config and the command line's overrides."""
    record = run_dir / ".hydra"
    record.mkdir(exist_ok=True)
    for name, node in (
        ("config.yaml", task_cfg),
        ("hydra.yaml", HydraConfig.instance().cfg),
        ("overrides.yaml", HydraConfig.get().overrides.task),
    ):
        write_text(record / name, OmegaConf.to_yaml(node))
