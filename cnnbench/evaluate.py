"""`python -m cnnbench.evaluate checkpoint=PATH [data=NAME] [eval.tta=none|flip|tencrop]`: top-1, top-5 and
per-class accuracy of a trained model; the work is `cnnbench.engine.inference.evaluate(cfg)`."""

from omegaconf import DictConfig

from cnnbench.cli import hydra_app
from cnnbench.config import register_configs
from cnnbench.sweep import run_job

register_configs()


@hydra_app("evaluate")
def main(cfg: DictConfig) -> float:
    from cnnbench.engine.inference import evaluate  # here: --help and --cfg import no torch

    result = run_job(cfg, evaluate, cfg, record=None)
    return result and result["top1"]


if __name__ == "__main__":
    main()
