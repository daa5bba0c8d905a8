"""Stopping and resuming a run: which checkpoint a run continues from, what may change between the run
that wrote it and the one continuing it, and the signals that ask a run to stop at its next step."""

import contextlib
import os
import signal
from fnmatch import fnmatch
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cnnbench.config import RunConfig
from cnnbench.errors import CheckpointError, ConfigError, Interrupted

from .build import LengthOrigin
from .checkpoint import load_checkpoint
from .distributed import restartable

# What a resumed run may change (README, "Resume"): the run goes on with the new value from the checkpoint's
# step, and train.log names it. Any other difference is refused before any work.
SCHEDULE = "the schedule is rebuilt from step {step}"
APPLIED = {
    "train.epochs": "the schedule is rebuilt for {now} epochs from step {step}",
    "train.budget_*": "the schedule is rebuilt for the new budget from step {step}",
    "scheduler.*": SCHEDULE,
    "optimizer.lr": SCHEDULE,
    "optimizer.lr_reference_batch": SCHEDULE,
    # Updates per epoch change with these, and so the schedule; they cut an epoch into other batches, so
    # they change where an epoch starts only.
    "data.batch_size": SCHEDULE,
    "train.limit_train_batches": SCHEDULE,
    "data.root": "the classes are checked against the checkpoint's",
    **dict.fromkeys(
        [
            "optimizer.weight_decay",
            "optimizer.momentum",
            "optimizer.fused",
            "train.limit_val_batches",
            "train.log_every_steps",
            "train.checkpoint_every_steps",
            "train.clip_grad_norm",
            "train.on_nonfinite",
            "data.workers",
            "data.prefetch_factor",
            "data.decode_device",
            "data.device_resident",
            "data.download",
            "data.on_bad_image",
            "eval.*",
            "hardware.*",
            "bench.*",
        ],
        "from step {step} on",
    ),
}
AT_EPOCH_START = ("data.batch_size", "train.limit_train_batches")
# What the run's step count follows from, beside the model and the data set's size
LENGTH_KEYS = (*AT_EPOCH_START, "train.epochs", "train.budget_images", "train.budget_tflop")
NOT_COMPARED = ("resume", "resume_fallback", "run_dir")  # how a run is continued, not what it is


def resume_path(cfg: DictConfig, run_dir: Path) -> Path | None:
    last = run_dir / "checkpoints" / "last.pt"
    if cfg.resume is None:
        if last.exists():
            raise ConfigError(
                f"resume: {run_dir} already holds a run (checkpoints/last.pt); "
                f"pass resume=auto to continue it, or choose another hydra.run.dir"
            )
        return None
    if cfg.resume == "auto":
        return last if last.exists() else None
    # torchrun --max-restarts: an attempt after the first continues where the failed one left its last.pt,
    # not from resume=PATH again.
    if restartable() and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and last.exists():
        return last
    return Path(cfg.resume)


def load_resume_state(path: Path, cfg: DictConfig) -> tuple[dict, Path, str | None]:
    """The checkpoint to resume from, its path, and what to log; an unreadable last.pt under resume=auto
    names the newest valid checkpoint beside it, and resumes from that one with resume_fallback=true."""
    try:
        return load_checkpoint(path), path, None
    except CheckpointError as e:
        if cfg.resume != "auto":
            raise
        valid = []
        for other in sorted(path.parent.glob("*.pt")):
            with contextlib.suppress(CheckpointError):
                valid.append((load_checkpoint(other), other))
        if not valid:
            raise
        state, fallback = max(valid, key=lambda found: found[0]["step"])
        if not cfg.resume_fallback:
            raise CheckpointError(
                f"{e}; {fallback.name} beside it is valid (step {state['step']}): resume_fallback=true resumes from it"
            ) from None
        return state, fallback, f"{e}; resume_fallback=true: resuming from {fallback} (step {state['step']}) instead"


def flat(tree: dict, prefix: str = "") -> dict:
    """{"train": {"epochs": 3}} -> {"train.epochs": 3}; lists stay values."""
    items = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def schema_defaults() -> dict:
    """The schema's default of every key (model.* is free-form and has none), flat."""
    return {
        k: v
        for k, v in flat(OmegaConf.to_container(OmegaConf.structured(RunConfig), enum_to_str=True)).items()
        if v not in ("???", {})
    }


def config_changes(state: dict, config: dict, path: Path, world_size: int) -> list[str]:
    """The differences between the checkpoint's config and this run's (`config`, resolved) that the run
    applies, one train.log line each; any other difference is refused, every one named in one line."""
    if state["world_size"] != world_size:
        raise CheckpointError(
            f"{path}: written by {state['world_size']} ranks, resumed with "
            f"{world_size}; the data order would change, so resume with the same count"
        )
    saved, now = flat(state["config"]), flat(config)
    saved = {**schema_defaults(), **saved}  # a key the checkpoint predates reads as its default
    mid_epoch = state["batch_in_epoch"] > 0
    applied, other_model, refused = [], [], []
    for key in sorted(saved.keys() | now.keys()):
        old, new = saved.get(key), now.get(key)
        if old == new or key.split(".")[0] in NOT_COMPARED:
            continue
        meaning = next((m for pattern, m in APPLIED.items() if fnmatch(key, pattern)), None)
        if key.startswith("model."):  # resuming takes the architecture from the checkpoint
            other_model.append(f"{key}={old!r}, not {new!r}")
        elif meaning and not (mid_epoch and key in AT_EPOCH_START):
            applied.append(f"{key} {old} -> {new}: {meaning.format(now=new, step=state['step'])}")
        else:
            refused.append(
                f"written with {key}={old}, resumed with {new}"
                + (
                    f" (it changes where an epoch starts only; the checkpoint is at batch {state['batch_in_epoch']} "
                    f"of epoch {state['epoch']})"
                    if meaning
                    else ""
                )
            )
    if other_model:
        refused.insert(0, f"trained with a different model ({', '.join(other_model)})")
    if refused:
        raise CheckpointError(
            f"{path}: {'; '.join(refused)}. A resumed run keeps these: resume with the "
            f"checkpoint's values, or start a new run (README, Resume)"
        )
    return applied


def length_origin(state: dict, config: dict) -> LengthOrigin:
    """Where the resumed run's steps count from: the checkpoint's origin, or the checkpoint itself where the
    run changes its batches or its length at an epoch's start. The steps already taken stay as they were
    (the images of an epoch a budget cut short are not trained again), and the rest follow the new config."""
    saved = LengthOrigin(**state.get("length_origin", {}))
    if state["batch_in_epoch"] or "trained_images" not in state:  # mid-epoch: nothing of the length changes
        return saved
    before, now = {**schema_defaults(), **flat(state["config"])}, flat(config)
    if all(before.get(key) == now.get(key) for key in LENGTH_KEYS):
        return saved
    return LengthOrigin(state["step"], state["epoch"], state["trained_images"])


def restore_training_state(state: dict, model, optimizer, scheduler, scaler, ema) -> list[str]:
    """Weights, optimizer state, EMA and GradScaler as the checkpoint left them, under this run's
    hyperparameters: the schedule (a function of the step) is this run's, at the checkpoint's step.
    Returns what to log."""
    notes = []
    model.load_state_dict(state["model"])
    hyperparameters = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])  # brings back the checkpoint's hyperparameters too
    for group, now in zip(optimizer.param_groups, hyperparameters):
        group.update(now)
    scheduler.step_update(state["step"])
    if scaler.is_enabled() and not state["scaler"]:
        notes.append("hardware.precision: fp16 now, not in the checkpoint; a fresh GradScaler starts")
    else:
        scaler.load_state_dict(state["scaler"])
    if ema is not None:
        ema.module.load_state_dict(state["ema"])
    return notes


class StopSignals:
    """SIGTERM, SIGUSR1 (SLURM's warning), SIGUSR2 (submitit's before a time limit) and Ctrl-C ask the run
    to stop: it checkpoints at the next step boundary (a second Ctrl-C stops at once, without one). On
    leaving, the handlers from before are back, and the one for the signal received is called if it is
    Python's (submitit's requeue, a DDP rank's exit); a signal that came after the last step still stops
    the caller, with Interrupted."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)

    def __enter__(self):
        self.received = []
        self.previous = {sig: signal.signal(sig, self._receive) for sig in self.SIGNALS}
        return self

    def _receive(self, signum, frame):
        if signum == signal.SIGINT and signal.SIGINT in self.received:
            raise KeyboardInterrupt
        self.received.append(signum)

    def __bool__(self) -> bool:
        return bool(self.received)

    @property
    def name(self) -> str:
        return signal.Signals(self.received[0]).name

    def __exit__(self, exc_type, exc, tb):
        for sig, handler in self.previous.items():
            if handler is not None:  # None: installed outside Python, cannot be put back from here
                signal.signal(sig, handler)
        if not self.received:
            return False
        handler = self.previous[self.received[0]]
        if callable(handler):
            handler(self.received[0], None)
        if exc_type is None:
            raise Interrupted(f"{self.name} after the last step")
        return False
