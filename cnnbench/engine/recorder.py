"""What a run leaves behind (DESIGN.md): metrics.csv, summary.json, tb/ and train.log, from rank 0."""
import csv
import io
import json
import logging
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from cnnbench.errors import WriteError
from cnnbench.files import write_json, write_text

METRICS = ["epoch", "step", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
           "epoch_time_s", "train_img_per_s"]
EMA_METRICS = ["ema_val_loss", "ema_val_top1", "ema_val_top5"]  # with train.ema_decay: the EMA weights' validation

log = logging.getLogger("cnnbench")


class Recorder:
    def __init__(self, run_dir: Path, history: list[dict], first_step: int, metrics: list[str] = METRICS):
        self.run_dir, self.metrics = run_dir, metrics
        run_dir.mkdir(parents=True, exist_ok=True)
        self.history = history
        # A resumed run drops any events written after its checkpoint (and rows, in start()).
        self.tb = SummaryWriter(run_dir / "tb", purge_step=first_step if first_step else None)
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

    def finish(self, summary: dict, hparam_values: dict):
        self.summary(summary)
        if summary.get("best_val_top1") is not None:
            metrics = {f"hparam/{k}": summary[k] for k in ("best_val_top1", "best_val_top5", "final_val_top1")}
            for event in hparams(hparam_values, metrics):
                self.tb.file_writer.add_summary(event)
            for key, value in metrics.items():
                self.tb.add_scalar(key, value, summary["step"])
        self.tb.close()
        log.removeHandler(self.file_log)
        self.file_log.close()
