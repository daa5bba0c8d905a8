"""What a run leaves behind (DESIGN.md): metrics.csv, summary.json, tb/ and train.log, from rank 0."""
import csv
import json
import logging
import os
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

METRICS = ["epoch", "step", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
           "epoch_time_s", "train_img_per_s"]
EMA_METRICS = ["ema_val_loss", "ema_val_top1", "ema_val_top5"]  # with train.ema_decay: the EMA weights' validation

log = logging.getLogger("cnnbench")


def write_json(path: Path, record: dict):
    """Atomically: a reader (cnnbench.report, a resumed sweep) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


class Recorder:
    def __init__(self, run_dir: Path, history: list[dict], first_step: int, metrics: list[str] = METRICS):
        self.run_dir, self.metrics = run_dir, metrics
        run_dir.mkdir(parents=True, exist_ok=True)
        self.history = history
        # A resumed run drops any rows and events written after its checkpoint.
        self._write_csv()
        self.tb = SummaryWriter(run_dir / "tb", purge_step=first_step if first_step else None)
        self.file_log = logging.FileHandler(run_dir / "train.log")
        self.file_log.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(self.file_log)
        log.setLevel(logging.INFO)

    def _write_csv(self):
        tmp = self.run_dir / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.metrics)
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(tmp, self.run_dir / "metrics.csv")

    def step(self, step: int, scalars: dict):
        for key, value in scalars.items():
            self.tb.add_scalar(key, value, step)

    def epoch(self, row: dict):
        self.history.append(row)
        self._write_csv()
        for key in self.metrics:
            if key not in ("epoch", "step", "lr", "epoch_time_s"):
                self.tb.add_scalar(key.replace("_", "/", 1), row[key], row["step"])
        self.tb.flush()

    def finish(self, summary: dict, hparam_values: dict):
        write_json(self.run_dir / "summary.json", summary)
        if summary.get("best_val_top1") is not None:
            metrics = {f"hparam/{k}": summary[k] for k in ("best_val_top1", "best_val_top5", "final_val_top1")}
            for event in hparams(hparam_values, metrics):
                self.tb.file_writer.add_summary(event)
            for key, value in metrics.items():
                self.tb.add_scalar(key, value, summary["step"])
        self.tb.close()
        log.removeHandler(self.file_log)
        self.file_log.close()
