"""`python -m cnnbench.train [group=option ...] [key=value ...]`: train and validate one model.

The entry point only composes the config; the work is `cnnbench.engine.trainer.train(cfg)`, on each of
hardware.nproc ranks (`hardware=ddp`) or under torchrun.
"""
import hydra
from omegaconf import DictConfig

from cnnbench.cli import run_reporting_errors
from cnnbench.config import register_configs
from cnnbench.engine.distributed import run_ranks
from cnnbench.engine.trainer import train

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    summary = run_reporting_errors(run_ranks, train, cfg)
    return summary["best_val_top1"]  # what a sweeper optimises


if __name__ == "__main__":
    main()
