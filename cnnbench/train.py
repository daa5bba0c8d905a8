"""`python -m cnnbench.train [group=option ...] [key=value ...]`: train and validate one model.

    python -m cnnbench.train model=resnet18 data=cifar10
    python -m cnnbench.train -m model=lenet5,fmnist_cnn model.width_mult=0.5,1   # a sweep (cnnbench/sweep.py)
    python -m cnnbench.train -m sweep=width                                     # a preset (conf/sweep/)

The entry point only composes the config; the work is `cnnbench.engine.trainer.train(cfg)`, on each of
hardware.nproc ranks (`hardware=ddp`) or under torchrun.
"""

from omegaconf import DictConfig

from cnnbench.cli import hydra_app
from cnnbench.config import check_config, register_configs
from cnnbench.sweep import run_job

register_configs()


@hydra_app("train")
def main(cfg: DictConfig) -> float | None:
    # Imported here: --help, --cfg and shell completion answer without importing torch.
    from cnnbench.engine.distributed import run_ranks
    from cnnbench.engine.trainer import train

    summary = run_job(cfg, run_ranks, train, cfg, check=check_config)
    return summary and summary["best_val_top1"]  # what a sweeper optimises; None for a failed sweep point


if __name__ == "__main__":
    main()
