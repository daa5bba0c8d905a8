"""Sweeps (`python -m cnnbench.train -m ...`): every point runs, the sweep names the ones that failed, and
rerunning the same command in the same sweep directory continues it instead of starting over.

    python -m cnnbench.train -m model=resnet18,resnet34 model.width_mult=0.5,1,2 hydra.sweep.dir=outputs/rw
    python -m cnnbench.train -m sweep=width        # a preset (conf/sweep/): outputs/sweeps/train/width/<model>

Each point's directory is named by its overrides (conf/train.yaml: hydra.sweep.subdir), so the same point
of the same command always lands in the same directory, whatever the launcher and the job order.
"""
import json
import logging
import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from cnnbench.cli import run_reporting_errors
from cnnbench.errors import EXIT_CTRL_C, EXIT_INTERRUPTED, EXIT_POINTS_FAILED

log = logging.getLogger("cnnbench")


def read_record(path: Path) -> dict | None:
    """A run's summary.json (or a bench's bench.json); None before the run has written one."""
    return json.loads(path.read_text()) if path.exists() else None


def run_point(cfg: DictConfig, fn, *args, record: str = "summary.json") -> dict | None:
    """fn(*args) as one point of a sweep. A point whose record says completed is skipped; any other
    continues from its own checkpoint (resume=auto). A failure is printed and the sweep goes on; a
    signal (preemption, Ctrl-C) stops it."""
    done = read_record(Path(cfg.run_dir) / record)
    if done and done["status"] == "completed":
        log.info(f"{cfg.run_dir}: completed by an earlier run of this sweep; skipped")
        return done
    cfg.resume = cfg.resume or "auto"
    try:
        return run_reporting_errors(fn, *args)
    except SystemExit as e:
        if e.code in (EXIT_INTERRUPTED, EXIT_CTRL_C):
            raise
    except Exception:
        traceback.print_exc()  # a bug or an out-of-memory: the other points may still run
    return None


def run_job(cfg: DictConfig, fn, *args, record: str = "summary.json"):
    """An entry point's body: fn(*args) as one run, or as one point of a sweep (`-m`)."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return run_point(cfg, fn, *args, record=record)
    return run_reporting_errors(fn, *args)


class SweepReport(Callback):
    """Registered in conf/train.yaml (hydra.callbacks): after the last point, names the points that did
    not complete and exits non-zero. It reads the points' summary.json files rather than the launcher's
    job results, so it holds for jobs that ran on other machines (SLURM) too."""

    def __init__(self, record: str = "summary.json"):
        self.record = record

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        # The points of this invocation: Hydra rewrites each one's .hydra/ after the sweeper has
        # written multirun.yaml, so older directories of a reused sweep dir are left out.
        started = (sweep_dir / "multirun.yaml").stat().st_mtime
        points = sorted(p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")
                        if p.stat().st_mtime >= started)
        failed = [p for p in points if (read_record(p / self.record) or {}).get("status") != "completed"]
        if failed:
            names = "; ".join(str(p.relative_to(sweep_dir)) for p in failed)
            print(f"cnnbench: error: {len(failed)} of {len(points)} sweep points did not complete: {names} "
                  f"(in {sweep_dir}; rerun the same command to retry them)", file=sys.stderr)
            raise SystemExit(EXIT_POINTS_FAILED)
        log.info(f"sweep: all {len(points)} points completed in {sweep_dir}")
