"""`python -m cnnbench.predict checkpoint=PATH images=[a.jpg,b.png] [topk=5] [dense=true]`: the top-k classes
of each image; the work is `cnnbench.engine.inference.predict(cfg)`."""

from omegaconf import DictConfig

from cnnbench.cli import hydra_app
from cnnbench.config import register_configs
from cnnbench.sweep import run_job

register_configs()


@hydra_app("predict")
def main(cfg: DictConfig) -> None:
    from cnnbench.engine.inference import predict  # here: --help and --cfg import no torch

    run_job(cfg, predict, cfg, record=None)


if __name__ == "__main__":
    main()
