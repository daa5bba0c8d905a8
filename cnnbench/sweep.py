"""Runs and sweeps (`python -m cnnbench.train -m ...`): every point runs in a directory of its own, the
sweep names the ones that did not complete, and rerunning the same command continues it: a point that
completed with the same config is skipped, one whose config changed continues with resume=auto.

    python -m cnnbench.train -m model=resnet18,resnet34 model.width_mult=0.5,1,2 hydra.sweep.dir=outputs/rw
    python -m cnnbench.train -m sweep=width        # a preset (conf/sweep/): outputs/sweeps/train/width/<model>

A point's directory is named by its swept keys (`point_name`), so the same point of the same sweep
always lands in the same directory, whatever the launcher and the job order; all of its overrides are
in its .hydra/overrides.yaml.
"""

import copy
import functools
import hashlib
import logging
import os
import sys
import traceback
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cnnbench.cli import memory_error_message, run_reporting_errors
from cnnbench.config import check_keys
from cnnbench.errors import EXIT_INTERRUPTED, EXIT_POINTS_FAILED, CnnbenchError, ConfigError, Interrupted, RankFailed
from cnnbench.files import read_json
from cnnbench.run_dir import check_dir_setting, claim, hold, save_hydra_record, status

log = logging.getLogger("cnnbench")
MAX_NAME = 100  # characters of a point's directory name: well under the file system's 255
# Keys that change how a run goes, not what it computes: a completed point rerun with another value is
# still complete.
INERT_KEYS = {
    "resume",
    "resume_fallback",
    "run_dir",
    "hardware.compile",
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "data.workers",
    "data.prefetch_factor",
    "data.download",
}


def point_name(overrides: list[str], swept: set[str]) -> str:
    """A sweep point's name: its swept keys (all its overrides when none is swept), sorted, e.g.
    `model.width_mult=0.5,model=resnet18`; a long one (or one holding a path) is cut, with a short hash
    of the whole. The same name is the point's directory, its row in the report and its TensorBoard run."""
    items = sorted(o for o in overrides if o.split("=", 1)[0] in swept) or sorted(
        o for o in overrides if o.split("=", 1)[0] not in INERT_KEYS
    )
    name = ",".join(items) or "default"
    if len(name) > MAX_NAME or "/" in name:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name.replace('/', '_')[: MAX_NAME - 9]}-{digest}"
    return name


def run_name(cfg: DictConfig) -> str:
    """This run's name (for TensorBoard and the report): a sweep point's `point_name`, which is its
    directory's name; a single run's directory name."""
    return Path(cfg.run_dir).name


def sweep_arguments(sweep_dir: Path) -> list:
    """The sweep's parsed overrides, the preset's params first, as the basic sweeper reads them from
    the sweep's multirun.yaml (written before any point starts, on the sweep's own file system)."""
    try:
        hydra_cfg = OmegaConf.load(Path(sweep_dir) / "multirun.yaml").hydra
    except OSError:
        return []
    params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]
    return OverridesParser.create().parse_overrides([*params, *hydra_cfg.overrides.task])


def swept_keys(sweep_dir: Path) -> set[str]:
    return {o.get_key_element() for o in sweep_arguments(sweep_dir) if o.is_sweep_override()}


def point_settings(run_dir: Path) -> dict[str, tuple]:
    """A sweep point's swept keys (those of its `point_name`), sorted, each with (this point's value, every
    value the sweep gives the key; [] for an interval or a glob); {} for a single run. Read from the point's
    own .hydra record and the sweep's multirun.yaml above it, so that any rank, on any launcher's node,
    finds them (Hydra's hydra.yaml keeps the sweep dir as written, ${now:...} unresolved)."""
    try:
        if OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.mode != RunMode.MULTIRUN.name:
            return {}
        overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    except OSError:
        return {}
    sweep_dir = next((d for d in run_dir.parents if (d / "multirun.yaml").is_file()), None)
    if sweep_dir is None:
        return {}
    own = {o.get_key_element(): o.value() for o in OverridesParser.create().parse_overrides(list(overrides))}
    settings = {}
    for o in sweep_arguments(sweep_dir):
        if o.is_sweep_override() and (key := o.get_key_element()) in own:
            # A glob's values are config options, which only Hydra's config loader lists
            listed = o.is_discrete_sweep() and o.value_type != ValueType.GLOB_CHOICE_SWEEP
            settings[key.lstrip("+~")] = (own[key], list(o.sweep_iterator()) if listed else [])
    return dict(sorted(settings.items()))


def point_subdir(sweep_dir: str, overrides) -> str:
    """hydra.sweep.subdir (conf/train.yaml): ${point_name:${hydra.sweep.dir},${hydra.overrides.task}}."""
    return point_name(list(overrides), swept_keys(Path(sweep_dir)))


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Each key whose value differs between two configs, inert keys left out: `train.epochs 1 -> 2`."""
    changed = []
    for key in sorted(set(old) | set(new), key=str):
        dotted, a, b = f"{prefix}{key}", old.get(key), new.get(key)
        if dotted in INERT_KEYS:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changed += changed_keys(a, b, f"{dotted}.")
        elif a != b:
            changed.append(f"{dotted} {a} -> {b}")
    return changed


def run_in_dir(cfg: DictConfig, task_cfg: DictConfig, check, fn, *args, retry: bool, record: str | None):
    """fn(*args) in the run directory this process holds, after the config's checks; Hydra's record of a
    fresh run is written before it starts, that of a resumed one once the resume is under way."""
    check(cfg)
    check_dir_setting()
    if os.environ.get("RANK", "0") != "0":  # torchrun's other ranks: rank 0 holds the directory for them
        return fn(*args)
    from cnnbench.engine.distributed import restartable  # torch: for a run, not for --help

    if restartable() and "resume" in cfg:  # torchrun --max-restarts: a restart continues the failed attempt
        cfg.resume, retry = cfg.resume or "auto", True
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with hold(run_dir, lambda: claim(run_dir, cfg.get("resume"), retry, record or "summary.json")) as resumed:
        if not resumed:
            save_hydra_record(run_dir, task_cfg)
        try:
            result = fn(*args)
        except (Interrupted, KeyboardInterrupt, SystemExit):
            if resumed:
                save_hydra_record(run_dir, task_cfg)
            raise
        if resumed:
            save_hydra_record(run_dir, task_cfg)
        return result


def run_point(cfg: DictConfig, task_cfg: DictConfig, check, fn, *args, record: str | None) -> dict | None:
    """fn(*args) as one point of a sweep. A point whose record says completed with the same config
    (INERT_KEYS aside) is skipped; any other continues from its own checkpoint (resume=auto). A failure
    is printed and the sweep goes on; a signal (preemption, Ctrl-C, SLURM's requeue) stops it."""
    run_dir = Path(cfg.run_dir)
    try:
        if record and status(run_dir, record) == "completed":
            saved = run_dir / ".hydra" / "config.yaml"
            changed = (
                changed_keys(
                    OmegaConf.to_container(OmegaConf.load(saved)), OmegaConf.to_container(task_cfg, enum_to_str=True)
                )
                if saved.exists()
                else ["(no .hydra/config.yaml)"]
            )
            if not changed:
                log.info(f"{run_dir}: completed by an earlier run of this sweep; skipped")
                return read_json(run_dir / record)
            if not (run_dir / "checkpoints" / "last.pt").exists():
                raise ConfigError(
                    f"{run_dir.name}: completed with another config ({', '.join(changed)}) and "
                    f"holds no checkpoints/last.pt to continue: choose another hydra.sweep.dir"
                )
            log.info(f"{run_dir}: completed with another config ({', '.join(changed)}); continuing it with resume=auto")
        if "resume" in cfg:
            cfg.resume = cfg.resume or "auto"
        from cnnbench.engine.device import job_settings  # torch: for a run, not for --help

        with job_settings(cfg.hardware.deterministic):  # no point inherits flags or compile caches from the last
            return run_in_dir(cfg, task_cfg, check, fn, *args, retry=True, record=record)
    except Interrupted:
        raise SystemExit(EXIT_INTERRUPTED) from None
    except (CnnbenchError, RankFailed) as e:
        print(f"cnnbench: error: {e}", file=sys.stderr)
    except Exception as e:  # a bug, or out of memory: the other points may still run
        if message := memory_error_message(e):
            print(f"cnnbench: error: {message}", file=sys.stderr)
        else:
            traceback.print_exc()
    return None


def run_job(cfg: DictConfig, fn, *args, record: str | None = "summary.json", check=check_keys):
    """An entry point's body: check(cfg), then fn(*args) as one run, or as one point of a sweep (`-m`),
    in a run directory this process holds. record: the file whose status says a point is complete."""
    task_cfg = copy.deepcopy(cfg)  # as composed: what .hydra/config.yaml records
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return run_point(cfg, task_cfg, check, fn, *args, record=record)
    return run_reporting_errors(
        functools.partial(run_in_dir, cfg, task_cfg, check, fn, retry=False, record=record), *args
    )


def sweep_points(sweep_dir: Path) -> list[str]:
    """The names of every point of the sweep in sweep_dir, as the basic sweeper expands it; for another
    sweeper (Optuna's ranges), the directories holding a point's .hydra record."""
    arguments = sweep_arguments(sweep_dir)
    swept = {o.get_key_element() for o in arguments if o.is_sweep_override()}
    try:
        jobs = [job for batch in BasicSweeper.split_arguments(arguments, None) for job in batch]
    except HydraException:
        return sorted(str(p.parent.parent.relative_to(sweep_dir)) for p in sweep_dir.rglob(".hydra/overrides.yaml"))
    return [point_name(job, swept) for job in jobs]


class SweepReport(Callback):
    """Registered in conf/train.yaml (hydra.callbacks): after the last point, names the points that did
    not complete and exits non-zero: 143 when all of them were interrupted (preempted, out of time,
    Ctrl-C: rerunning the command continues them), else 1. It reads the points' records rather than the
    launcher's job results, so it holds for jobs that ran on other machines (SLURM) too."""

    def __init__(self, record: str = "summary.json"):
        self.record = record

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        points = sweep_points(sweep_dir)
        states = {p: status(sweep_dir / p, self.record) for p in points}
        interrupted = [p for p, s in states.items() if s == "interrupted"]
        failed = [p for p, s in states.items() if s not in ("completed", "interrupted")]
        if failed or interrupted:
            print(
                f"cnnbench: error: {len(failed) + len(interrupted)} of {len(points)} sweep points did not "
                f"complete: {'; '.join(failed + interrupted)}"
                + (f" ({len(interrupted)} interrupted)" if interrupted else "")
                + f" (in {sweep_dir}; rerun the same command to retry them)",
                file=sys.stderr,
            )
            raise SystemExit(EXIT_POINTS_FAILED if failed else EXIT_INTERRUPTED)
        log.info(f"sweep: all {len(points)} points completed in {sweep_dir}")
