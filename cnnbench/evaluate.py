"""`python -m cnnbench.evaluate checkpoint=PATH [data=NAME] [eval.tta=none|flip|tencrop]`: top-1, top-5 and
per-class accuracy of a trained model; the work is `cnnbench.engine.inference.evaluate(cfg)`."""

import hydra
from omegaconf import DictConfig

from cnnbench.config import CONFIG_PATH, register_configs
from cnnbench.sweep import run_job

register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def main(cfg: DictConfig) -> float:
    from cnnbench.engine.inference import evaluate  # here: --help and --cfg import no torch

    result = run_job(cfg, evaluate, cfg, record=None)
    return result and result["top1"]


if __name__ == "__main__":
    main()
