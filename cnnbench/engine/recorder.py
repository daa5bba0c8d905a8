"""What a run leaves behind (README.md, "What a run leaves behind"): metrics.csv, summary.json, tb/ and
train.log, and the best epoch's confusion_matrix.csv and .png, from rank 0.

TensorBoard's Time Series shows tag groups in name order and opens the first two: train/ and val/, the
curves of every epoch (and the batch as the model sees it, the best epoch's confusion matrix); whole_run/,
the run's totals that the HParams dashboard reads (hparams.py), comes after them.
"""

import csv
import functools
import io
import json
import logging
import threading
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from cnnbench.data.imagenet import display_name
from cnnbench.errors import WriteError
from cnnbench.files import write_bytes, write_json, write_text

from .inference import per_class_table, per_class_top1

METRICS = [
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "epoch_time_s",
    "train_img_per_s",
    "val_img_per_s",
    "peak_memory_mb",
]
EMA_METRICS = ["ema_val_loss", "ema_val_top1", "ema_val_top5"]  # with train.ema_decay: the EMA weights' validation
MEASURED = ("epoch_time_s", "train_img_per_s", "val_img_per_s", "peak_memory_mb")  # of the machine, not the run
# metrics.csv's columns as TensorBoard tags, at the step of the epoch's end
EPOCH_TAGS = {
    "epoch": "train/epoch",
    "lr": "train/lr",
    "train_loss": "train/loss",
    "train_top1": "train/top1",
    "epoch_time_s": "train/epoch_time_s",
    "train_img_per_s": "train/img_per_s",
    "peak_memory_mb": "train/peak_memory_mb",
    "val_loss": "val/loss",
    "val_top1": "val/top1",
    "val_top5": "val/top5",
    "val_img_per_s": "val/img_per_s",
    "ema_val_loss": "val/ema_loss",
    "ema_val_top1": "val/ema_top1",
    "ema_val_top5": "val/ema_top5",
}
# summary.json's keys as tags, every epoch: the run so far
SUMMARY_TAGS = {
    "best_val_top1": "val/best_top1",
    "best_val_top5": "val/best_top5",
    "params": "whole_run/params",
    "gflops": "whole_run/gflops",
    "train_img_per_s": "whole_run/train_img_per_s",
    "wall_time_s": "whole_run/wall_time_s",
}
GRID_IMAGES = 64  # of the first training batch, 8 a row
LABELLED_CLASSES = 30  # a confusion matrix's classes named along its axes; more would be unreadable
COUNTED_CLASSES = 12  # ... and its cells' counts written in them

log = logging.getLogger("cnnbench")


def writes_events(method):
    """A Recorder method that writes tb/. TensorBoard's writer thread keeps what the disk refused (an OSError)
    and the next write raises it here: said as a WriteError naming tb/, as for every other file of the run."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as e:
            raise WriteError(
                f"{self.run_dir / 'tb'}: TensorBoard's events could not be written ({e.strerror or e})"
            ) from None

    return wrapper


def quiet_event_writer_thread(hook):
    """threading.excepthook that passes everything to `hook` but the OSError TensorBoard's writer thread
    re-raises as it ends: it kept it for the run to report (writes_events), and printed it would be a second
    report, and a traceback."""

    def excepthook(args):
        if not (isinstance(args.thread, _AsyncWriterThread) and isinstance(args.exc_value, OSError)):
            hook(args)

    excepthook.quiets_event_writer = True
    return excepthook


class Recorder:
    def __init__(self, run_dir: Path, history: list[dict], first_step: int, metrics: list[str] = METRICS):
        self.run_dir, self.metrics = run_dir, metrics
        run_dir.mkdir(parents=True, exist_ok=True)
        self.history = history
        # A resumed run drops any events written after its checkpoint (and rows, in start()).
        self.tb = SummaryWriter(run_dir / "tb", purge_step=first_step if first_step else None)
        if not getattr(threading.excepthook, "quiets_event_writer", False):  # once a process (sweeps: many runs)
            threading.excepthook = quiet_event_writer_thread(threading.excepthook)
        self.file_log = logging.FileHandler(run_dir / "train.log")
        self.file_log.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(self.file_log)
        log.setLevel(logging.INFO)

    def _write_csv(self):
        text = io.StringIO()
        writer = csv.DictWriter(text, self.metrics)
        writer.writeheader()
        writer.writerows(self.history)
        write_text(self.run_dir / "metrics.csv", text.getvalue())

    @writes_events
    def step(self, step: int, scalars: dict):
        for key, value in scalars.items():
            self.tb.add_scalar(key, value, step)

    @writes_events
    def begin(self, config: dict, hparams: list[Summary]):
        """Once, at a run's first step: the composed config as text and the HParams record."""
        self.tb.add_text("config", f"```yaml\n{OmegaConf.to_yaml(config)}```", 0)
        for summary in hparams:
            self.tb.file_writer.add_summary(summary, 0)

    @writes_events
    def batch(self, images: torch.Tensor):
        """Once, at a run's first step: its first training batch as the model sees it, augmentation included
        (pixel values in [0, 1])."""
        self.tb.add_image("train/augmented_batch", make_grid(images[:GRID_IMAGES].float().cpu(), nrow=8), 0)

    @writes_events
    def epoch(self, row: dict, summary: dict):
        """The epoch's row, the last of the history (lr too: a curve even when log_every_steps > an epoch), and
        the run so far."""
        self._write_csv()
        for key in self.metrics:
            if key in EPOCH_TAGS and row.get(key) is not None:
                self.tb.add_scalar(EPOCH_TAGS[key], row[key], row["step"])
        for key, tag in SUMMARY_TAGS.items():
            if summary[key] is not None:
                self.tb.add_scalar(tag, summary[key], row["step"])
        self.tb.flush()

    @writes_events
    def best_epoch(self, row: dict, confusion: torch.Tensor, classes: list[str], title: str):
        """A new best epoch's confusion matrix (true class x predicted top-1 counts): confusion_matrix.csv and
        .png, and in TensorBoard the image and each class's top-1 accuracy (evaluate's table)."""
        counts = confusion.tolist()
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["true \\ predicted", *classes])
        writer.writerows([label, *row_counts] for label, row_counts in zip(classes, counts))
        write_text(self.run_dir / "confusion_matrix.csv", text.getvalue())
        per_class = per_class_top1(classes, confusion.sum(1).tolist(), confusion.diag().tolist())
        png = confusion_png(
            confusion.numpy(), [display_name(c["class"]) for c in per_class], [c["top1"] for c in per_class], title
        )
        write_bytes(self.run_dir / "confusion_matrix.png", png)
        with Image.open(io.BytesIO(png)) as image:
            self.tb.add_image("val/confusion_matrix", np.asarray(image.convert("RGB")), row["step"], dataformats="HWC")
        self.tb.add_text(
            "val/per_class_top1", f"epoch {row['epoch']}\n\n```\n{per_class_table(per_class)}\n```", row["step"]
        )

    def start(self, summary: dict):
        """metrics.csv without the rows written after the checkpoint resumed from, and summary.json saying
        running until the run ends (a resumed run's old one said completed)."""
        self._write_csv()
        self.summary(summary)

    def summary(self, summary: dict):
        path = self.run_dir / "summary.json"
        try:
            write_json(path, summary)
        except WriteError as e:
            if summary["status"] != "failed":
                raise
            # A full disk has no room for a second copy beside the old summary, but the old one's own
            # blocks hold the new one: written in place, so that the run does not end saying running.
            try:
                with open(path, "w") as f:
                    f.write(json.dumps(summary, indent=2) + "\n")
            except OSError:
                raise e from None

    def finish(self, summary: dict, session_end: Summary | None):
        self.summary(summary)
        try:
            self.close_events(summary["step"], session_end)
        except WriteError:
            if summary["status"] != "failed":  # a failed run is reporting its own error: the first one
                raise
        finally:
            log.removeHandler(self.file_log)
            self.file_log.close()

    @writes_events
    def close_events(self, step: int, session_end: Summary | None):
        if session_end is not None:
            self.tb.file_writer.add_summary(session_end, step)
        self.tb.close()


def confusion_png(confusion: np.ndarray, labels: list[str], top1: list[float | None], title: str) -> bytes:
    """The confusion matrix as a PNG: each true class's row as fractions of its images, labelled with the
    class's top-1 accuracy where the classes are few enough to name."""
    from matplotlib.figure import Figure  # a second of import, kept out of the time to the first step

    n = len(labels)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    side = min(5 + 0.35 * min(n, LABELLED_CLASSES), 16)
    figure = Figure(figsize=(side + 1.5, side), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    shown = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(shown, ax=ax, shrink=0.8, label="fraction of the true class's images")
    if n <= LABELLED_CLASSES:
        ax.set_xticks(range(n), labels, rotation=90)
        ax.set_yticks(range(n), [f"{label} ({'-' if t is None else f'{t:.1f}%'})" for label, t in zip(labels, top1)])
    if n <= COUNTED_CLASSES:
        for (i, j), count in np.ndenumerate(confusion):
            if count:
                ax.text(
                    j,
                    i,
                    int(count),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("true class (its top-1 accuracy)" if n <= LABELLED_CLASSES else "true class")
    ax.set_title(title)
    png = io.BytesIO()
    figure.savefig(png, format="png")
    return png.getvalue()
