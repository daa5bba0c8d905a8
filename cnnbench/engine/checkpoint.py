"""Checkpoints: written atomically, read as data only (`weights_only=True`), checked before use."""

import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from cnnbench.errors import CheckpointError
from cnnbench.files import write_bytes, write_file
from cnnbench.models import create_model
from cnnbench.models.registry import trained_weights
from cnnbench.paths import FORMAT_PROBLEMS, file_format, unpickling_reason

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "config")


def save_checkpoint(state: dict, path: Path) -> None:
    """Atomically (cnnbench.files): a crash at any moment leaves either the old checkpoint or the new one, whole."""
    write_file(path, lambda f: torch.save(state, f))


def export_weights(model: torch.nn.Module, path: Path) -> None:
    """The bare model's weights as safetensors (what timm and the Hub read), written atomically."""
    # safetensors wants contiguous, unshared tensors: channels_last weights are neither contiguous.
    state = {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}
    write_bytes(path, safetensors.torch.save(state))


def load_checkpoint(path: Path) -> dict:
    """A cnnbench checkpoint as plain data; anything else is refused with the reason, and no code
    from the file ever runs."""
    path = Path(path).expanduser()
    kind = file_format(path)
    if kind == "safetensors":
        raise CheckpointError(
            f"{path}: holds a model's weights alone, not a training checkpoint; "
            f"model.weights={path} starts a run from them"
        )
    if kind != "torch":
        raise CheckpointError(f"{path}: {FORMAT_PROBLEMS[kind].format(wants='.pt checkpoint')}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: not a cnnbench checkpoint: {unpickling_reason(e)}") from None
    except (
        RuntimeError,
        EOFError,
        OSError,
        zipfile.BadZipFile,
        ValueError,  # OSError: a truncated zip's reader
        KeyError,
        IndexError,
        TypeError,
    ) as e:  # a damaged pickle's opcodes
        raise CheckpointError(f"{path}: unreadable, truncated or not a checkpoint ({str(e).splitlines()[0]})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a cnnbench checkpoint (no {', '.join(missing)})")
    return state


def rng_state(device: torch.device | None = None) -> dict:
    """Every RNG the run draws from, as types `weights_only` loading accepts: on CUDA, the run's own
    device's generator only (a resume may see fewer GPUs). `device`: the run's; None: the current CUDA
    device where this process has initialised CUDA, else none (a CPU run never initialises it)."""
    numpy_state = np.random.get_state(legacy=False)
    cuda = cuda_rng_device(device)
    return {
        "python": random.getstate(),
        "numpy": {
            **numpy_state,
            "state": {
                "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                "pos": numpy_state["state"]["pos"],
            },
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(cuda) if cuda is not None else None,
    }


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            **numpy_state,
            "state": {"key": numpy_state["state"]["key"].numpy().astype(np.uint32), "pos": numpy_state["state"]["pos"]},
        }
    )
    torch.set_rng_state(state["torch"])
    cuda, saved = cuda_rng_device(device), state.get("cuda")
    if cuda is None or saved is None:
        return
    if isinstance(saved, list):  # checkpoints before issue 20: one state per visible GPU; this device's
        index = cuda.index if cuda.index is not None else torch.cuda.current_device()
        if index >= len(saved):
            return
        saved = saved[index]
    torch.cuda.set_rng_state(saved, cuda)


def cuda_rng_device(device: torch.device | None) -> torch.device | None:
    """The CUDA device whose generator a checkpoint holds, or None: no torch.cuda call in a CPU run."""
    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_initialized() else None
    return device if device.type == "cuda" else None


def model_from_checkpoint(path: Path) -> tuple[torch.nn.Module, dict]:
    """The network a checkpoint holds, rebuilt through the registry from its own config, in eval mode."""
    state = load_checkpoint(path)
    if "classes" not in state:
        raise CheckpointError(f"{path}: holds no class names (not written by cnnbench.train)")
    config = state["config"]
    model_cfg = {k: v for k, v in config["model"].items() if k not in ("weights", "pretrained")}
    model = create_model(
        **model_cfg,
        num_classes=len(state["classes"]),
        in_chans=config["data"]["channels"],
        image_size=config["data"]["image_size"],
    )
    model.load_state_dict(trained_weights(state))
    return model.eval(), state
