"""Knowledge distillation (Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a Neural Network"): the
teacher is rebuilt from its checkpoint and only ever predicts."""

from pathlib import Path

import torch

from cnnbench.errors import CheckpointError, short_list

from .checkpoint import model_from_checkpoint


def load_teacher(
    path: str, classes: list[str], channels: int, device: torch.device, key: str = "distill.teacher"
) -> tuple[torch.nn.Module, dict]:
    """The teacher, frozen in eval mode on `device`, and its checkpoint; refused (naming the config `key` that
    gave its path) if it knows other classes or sees other channels than this run's data."""
    teacher, state = model_from_checkpoint(Path(path))
    if state["classes"] != classes:
        raise CheckpointError(
            f"{key}: {path} was trained on other classes than this run's data (there "
            f"{short_list(state['classes'])}; here {short_list(classes)})"
        )
    if state["config"]["data"]["channels"] != channels:
        raise CheckpointError(
            f"{key}: {path} sees {state['config']['data']['channels']}-channel images, this run's data has {channels}"
        )
    return teacher.requires_grad_(False).to(device), state
