"""One process per rank: started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment), or by
cnnbench itself with hardware.nproc > 1, through torch's elastic launcher (what torchrun runs).

    torchrun --standalone --nproc_per_node=4 -m cnnbench.train hardware=ddp
    python -m cnnbench.train hardware=ddp hardware.nproc=4
"""

import contextlib
import copy
import ctypes
import json
import logging
import logging.config
import os
import signal
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import timm.layers
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from cnnbench.config import check_config
from cnnbench.errors import (
    EXIT_CTRL_C,
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    CnnbenchError,
    ConfigError,
    Interrupted,
    RankFailed,
)

log = logging.getLogger("cnnbench")

# The launcher passes these on to every rank: SIGUSR1 is SLURM's warning before preemption, SIGUSR2
# submitit's before a time limit.
FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
PR_SET_PDEATHSIG = 1  # linux/prctl.h
CPU_RANKS_PER_CORE = 4  # beyond it, CPU ranks only wait on each other
CPU_RANK_MEMORY_GB = 0.5  # a CPU rank's process: torch, a small model, its data (12 ranks of lenet5: 6 GB)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    cpu_group: dist.ProcessGroup | None = None  # gloo, for small CPU-side agreements; None: the default group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Dist:
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist()
    store, rank, world_size = next(dist.rendezvous("env://"))
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if agent_store:
        # torchrun's agent serves one store to all the attempts of `--max-restarts`, and torch no longer
        # keys it per attempt: restarted ranks read their dead peers' addresses and fail to connect
        # (pytorch#167288). One agent, one restart count: exact on one node. Over many nodes an agent
        # restarted for a membership change keeps its count, so scripts/slurm sets
        # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: each rendezvous round then gets a fresh store of its own.
        store = dist.PrefixStore(f"cnnbench/attempt_{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)
    local_rank, device = int(os.environ.get("LOCAL_RANK", "0")), None
    if device_type == "cuda":
        # This rank's GPU before NCCL starts: its communicator is bound to it, nothing lands on cuda:0.
        check_gpu_count(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count())
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device_type == "cuda" else "gloo", store=store, rank=rank, world_size=world_size, device_id=device
    )
    ctx = Dist(
        dist.get_rank(),
        dist.get_world_size(),
        local_rank,
        dist.new_group(backend="gloo") if device_type == "cuda" else None,
    )
    if not ctx.is_main:
        logging.getLogger("cnnbench").setLevel(logging.WARNING)  # one copy of each log line: rank 0's
    elif agent_store and restartable() and os.environ["GROUP_WORLD_SIZE"] != "1":
        logging.getLogger("cnnbench").warning(
            "torchrun --max-restarts over many nodes: export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before "
            "torchrun (as scripts/slurm/train_multinode.sbatch does), or a restart may fail to connect"
        )
    return ctx


def check_gpu_count(ranks: int, gpus: int) -> None:
    """One rank per GPU: more ranks on a node than its GPUs would end in CUDA's "invalid device ordinal"."""
    if ranks > gpus:
        raise ConfigError(
            f"hardware.nproc: {ranks} ranks on this node, but it has {gpus} CUDA "
            f"device{'s' if gpus != 1 else ''}: one rank per GPU"
        )


def sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """hardware.sync_batchnorm: every batch norm as its synchronized variant, through timm's converter:
    torch's turns timm's BatchNormAct2d (compact_cnn, cspresnet50, timm models) into a plain
    SyncBatchNorm and drops the activation it carries."""
    return timm.layers.convert_sync_batchnorm(model)


def all_reduce_sum(t: torch.Tensor, ctx: Dist) -> torch.Tensor:
    if ctx.world_size > 1:
        dist.all_reduce(t)
    return t


def restartable() -> bool:
    """Under `torchrun --max-restarts=N`: a restarted attempt must continue from the failed one's checkpoint."""
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0


def any_rank(flags: tuple[bool, ...], ctx: Dist) -> tuple[bool, ...]:
    """Each flag true on every rank if true on any, all in one all-reduce: ranks that see a signal at
    different steps still stop at the same one (on the CPU, so that a GPU run does not wait for its device)."""
    if ctx.world_size == 1:
        return flags
    reduced = torch.tensor(flags, dtype=torch.uint8)
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX, group=ctx.cpu_group)
    return tuple(map(bool, reduced.tolist()))


def run_ranks(fn, cfg: DictConfig):
    """fn(cfg) on every rank, returning rank 0's result: in this process when it already is a rank
    (torchrun) or hardware.nproc is 1, else in hardware.nproc worker processes started here."""
    nproc = cfg.hardware.nproc
    if nproc == 1 or "WORLD_SIZE" in os.environ:
        return fn(cfg)
    check_config(cfg)  # a bad value: one line from here, not one from every rank
    check_cpu_rank_count(cfg.hardware)
    if cfg.hardware.device == "cuda" or cfg.hardware.device == "auto" and torch.cuda.is_available():
        check_gpu_count(nproc, torch.cuda.device_count())
    log.info(f"training on {nproc} DDP ranks of this node (hardware.nproc={nproc}; hardware.nproc=1 for one process)")
    # Resolved once, here: each process would resolve run_dir (and Hydra's ${now:}) on its own.
    cfg = copy.deepcopy(cfg)
    OmegaConf.resolve(cfg)
    log_config = (
        OmegaConf.to_container(HydraConfig.get().job_logging, resolve=True) if HydraConfig.initialized() else None
    )
    # The ranks report their own failures; the launcher's log would repeat one of them.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    logging.getLogger("torch.multiprocessing").setLevel(logging.ERROR)
    handlers = {name: signal.getsignal(getattr(signal, name)) for name in FORWARDED_SIGNALS}
    with tempfile.TemporaryDirectory(prefix="cnnbench-ranks-") as log_dir:
        launch = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=nproc,
            run_id=str(uuid.uuid4()),
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            local_addr="localhost",  # torchrun --standalone
            max_restarts=0,
            logs_specs=DefaultLogsSpecs(log_dir=log_dir),
            signals_to_handle=",".join(FORWARDED_SIGNALS),
        )
        received = None
        try:
            return elastic_launch(launch, _rank_main)(fn, cfg, log_config)[0]
        except SignalException as e:  # the launcher passed it on; the ranks checkpointed and stopped
            failure = KeyboardInterrupt() if e.sigval == signal.SIGINT else Interrupted(e.sigval.name)
            received = e.sigval
        except ChildFailedError as e:
            failure = _first_failure(e, Path(log_dir))
        finally:
            for name, handler in handlers.items():
                signal.signal(getattr(signal, name), handler)
    if received not in (None, signal.SIGINT) and callable(handler := handlers[received.name]):
        # submitit's requeue, now that last.pt holds the run (as engine/resume.py's StopSignals)
        handler(received, None)
    raise failure  # outside the except clause, whose traceback would keep the launcher's queues alive


def check_cpu_rank_count(hardware: DictConfig) -> None:
    """CPU ranks beyond the cores only take turns: warned; beyond CPU_RANKS_PER_CORE per core, or the memory
    their processes need, refused before any starts."""
    if hardware.device == "cuda" or hardware.device == "auto" and torch.cuda.is_available():
        return
    nproc, cores = hardware.nproc, len(os.sched_getaffinity(0))
    available_gb = available_memory() / 2**30
    if nproc > CPU_RANKS_PER_CORE * cores or nproc * CPU_RANK_MEMORY_GB > available_gb:
        raise ConfigError(
            f"hardware.nproc: {nproc} CPU ranks are too many for {cores} cores and {available_gb:.1f} GB "
            f"of free memory (at most {CPU_RANKS_PER_CORE} a core, about {CPU_RANK_MEMORY_GB} GB each); "
            f"{cores} run at full speed"
        )
    if nproc > cores:
        logging.getLogger("cnnbench").warning(
            f"hardware.nproc: {nproc} CPU ranks share {cores} cores: they take "
            f"turns, and the run is no faster than with {cores}"
        )


def available_memory() -> int:
    """Bytes that can be had without swapping: Linux's MemAvailable (free memory plus the page cache it can drop)."""
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/meminfo") as f:
            return int(next(line for line in f if line.startswith("MemAvailable:")).split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _rank_main(fn, cfg: DictConfig, log_config: dict | None):
    """One worker: exits with the status `python -m cnnbench.train` would, after leaving the reason in
    its error file (torchelastic's, a JSON file per rank) for the launcher."""
    if sys.platform == "linux":  # die with the launcher, even when it is killed with SIGKILL: no orphans
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if log_config:
        logging.config.dictConfig(log_config)
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores, rather than each rank taking them all
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(os.environ["LOCAL_WORLD_SIZE"])))
    # The launcher stops the other ranks with SIGTERM when one fails: exit through Python, whose
    # clean-up ends this rank's data loader workers and frees their semaphores.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(EXIT_INTERRUPTED))
    try:
        return fn(cfg)
    except BaseException as e:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # leaving already: let the clean-up finish
        if isinstance(e, CnnbenchError):  # usually every rank fails alike: the launcher prints it, once
            status, message = EXIT_USER_ERROR, str(e)
        elif isinstance(e, (Interrupted, SystemExit)):
            status, message = EXIT_INTERRUPTED, f"stopped ({e})"
        elif isinstance(e, KeyboardInterrupt):
            status, message = EXIT_CTRL_C, "Ctrl-C"
        else:
            print(f"rank {os.environ['RANK']}: {traceback.format_exc()}", end="", file=sys.stderr)
            status, message = 1, f"{type(e).__name__}: {e}"
    with open(os.environ["TORCHELASTIC_ERROR_FILE"], "w") as f:
        json.dump({"message": message, "status": status, "timestamp": str(int(time.time()))}, f)
    raise SystemExit(status)


def _first_failure(e: ChildFailedError, log_dir: Path) -> Exception:
    """The launcher names the first rank it finds dead; the first to fail wrote the oldest error file
    (the others most likely failed because it left their collectives)."""
    rank, failure = e.get_first_failure()
    # A user's error on one rank (an unreadable image in its shard) explains the others' lost connections.
    errors = sorted(
        log_dir.glob("*/attempt_*/*/error.json"),
        key=lambda f: (json.loads(f.read_text())["status"] != EXIT_USER_ERROR, f.stat().st_mtime_ns),
    )
    if failure.exitcode < 0 or not errors:  # killed by a signal: no error file
        return RankFailed(f"rank {rank} died ({failure.signal_name()})", exit_code=1)
    rank, error = int(errors[0].parent.name), json.loads(errors[0].read_text())
    if error["status"] == EXIT_USER_ERROR:
        return CnnbenchError(error["message"])
    if error["status"] == EXIT_INTERRUPTED:
        return Interrupted(error["message"])
    if error["status"] == EXIT_CTRL_C:
        return KeyboardInterrupt()
    return RankFailed(f"rank {rank} failed: {error['message'].strip().splitlines()[-1]}", exit_code=1)
