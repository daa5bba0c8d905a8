"""`python -m cnnbench.predict checkpoint=PATH images=[a.jpg,b.png] [topk=5] [dense=true]`: the top-k classes
of each image; the work is `cnnbench.engine.inference.predict(cfg)`."""
import hydra
from omegaconf import DictConfig

from cnnbench.cli import run_reporting_errors
from cnnbench.config import CONFIG_PATH, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
def main(cfg: DictConfig) -> None:
    from cnnbench.engine.inference import predict  # here: --help and --cfg import no torch

    run_reporting_errors(predict, cfg)


if __name__ == "__main__":
    main()
