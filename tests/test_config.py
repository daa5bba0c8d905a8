"""The config surface: every option composes, --help and --cfg show it, bad values stop the run early."""

import pytest

from cnnbench.config import check_config
from cnnbench.errors import ConfigError

from .helpers import CONF, make_config, run_cli

OPTIONS = [
    (group.name, option.stem)
    for group in sorted(CONF.iterdir())
    if group.is_dir()
    for option in sorted(group.glob("*.yaml"))
]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option, tmp_path):
    cfg = make_config(tmp_path, f"{group}={option}")
    check_config(cfg)
    # sweep and experiment presets set other groups' keys, no group of their own
    if group not in ("model", "sweep", "experiment"):
        assert cfg[group].name == option if "name" in cfg[group] else True


@pytest.mark.slow  # a real command in a subprocess
def test_help_lists_groups_and_options():
    out = run_cli("--help").stdout
    for group, option in OPTIONS:
        assert f"{group}:" in out and option in out


@pytest.mark.slow  # a real command in a subprocess
def test_cfg_job_prints_composed_config():
    result = run_cli("--cfg", "job", "model=resnet18", "optimizer.lr=0.05", "data.batch_size=256")
    assert result.returncode == 0
    assert "name: resnet18" in result.stdout and "lr: 0.05" in result.stdout and "batch_size: 256" in result.stdout


@pytest.mark.slow  # each case a real command in a subprocess
@pytest.mark.parametrize(
    "override,key",
    [
        ("train.epochs=-1", "train.epochs"),
        ("train.epochs=0", "train.epochs"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.lr=-0.1", "optimizer.lr"),
        ("data.batch_size=0", "data.batch_size"),
        ("model.width_mult=0", "model.width_mult"),
        ("data.batch_size=abc", "data.batch_size"),
        ("train.epochs=1.5", "train.epochs"),
        ("hardware.precision=fp8", "hardware.precision"),
        ("model.depth_mult=-1", "model.depth_mult"),
        ("train.on_nonfinite=ignore", "train.on_nonfinite"),
        ("resume_fallback=maybe", "resume_fallback"),
        ("train.no_such_key=1", "train.no_such_key"),
        ("+model.no_such_knob=1", "model.no_such_knob"),
        ("model=no_such_model", "model"),
    ],
)
def test_bad_config_stops_before_work_naming_the_key(override, key, tmp_path):
    result = run_cli("data=synthetic", f"hydra.run.dir={tmp_path}", override, timeout=120)
    assert result.returncode != 0
    assert key in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_hardware_auto_starts_a_rank_per_gpu_of_the_node(tmp_path):
    """hardware=auto on a node with N > 1 GPUs trains on all of them (one DDP rank each); on CPU, or with
    hardware.device=cpu on a GPU node, one process."""
    import torch

    from cnnbench.config import auto_nproc

    assert auto_nproc("auto", 8) == 8 and auto_nproc("cuda", 4) == 4
    assert auto_nproc("auto", 0) == 1 and auto_nproc("auto", 1) == 1 and auto_nproc("cpu", 8) == 1
    cfg = make_config(tmp_path, "hardware=auto")
    assert cfg.hardware.nproc == auto_nproc("auto", torch.cuda.device_count())  # resolved from this machine
    assert make_config(tmp_path, "hardware=auto", "hardware.nproc=3").hardware.nproc == 3


def test_each_model_trains_at_its_native_input_on_imagenet_like_data(tmp_path):
    """Inception v3 at 299, EfficientNet-B3 at 300 with its 0.904 crop, unless data.image_size says
    otherwise; small-image sets keep their own size; create_model builds the native size by default."""
    from cnnbench.models import create_model

    def composed(*overrides):
        cfg = make_config(tmp_path, "data=imagenet", "augmentation=imagenet", *overrides)
        return cfg.data.image_size, cfg.augmentation.eval_crop_ratio

    assert composed("model=inception_v3") == (299, 0.875)
    assert composed("model=efficientnet_b3") == (300, 0.904)
    assert composed("model=resnet50") == (224, 0.875)
    assert composed("model=timm", "model.name=inception_v3") == (299, 0.875)  # timm's own default config
    assert composed("model=inception_v3", "data.image_size=224")[0] == 224
    assert make_config(tmp_path, "model=inception_v3", "data=fashion_mnist").data.image_size == 28
    assert sum(p.numel() for p in create_model("lenet5", num_classes=10, in_chans=1).parameters()) == 61_706


def test_evaluating_on_imagenet_like_data_takes_the_trained_size(tmp_path):
    """evaluate data=imagenet without data.image_size: the checkpoint's size, not a model's native one."""
    from omegaconf import OmegaConf

    from cnnbench.engine.inference import evaluation_data

    cfg = make_config(tmp_path, "checkpoint=last.pt", "data=imagenet", app="evaluate")
    trained = OmegaConf.create({"data": {"channels": 3, "image_size": 32}})
    assert evaluation_data(cfg, trained).image_size == 32


@pytest.mark.parametrize(
    "override,message",
    [
        ("+train.nosuchkey=1", "train.nosuchkey: not a key of the config"),
        ("+nosuchtop=1", "nosuchtop: not a key of the config"),
        ("+data.batch_sise=64", "data.batch_sise: not a key of the config (did you mean data.batch_size?)"),
        ("+model.no_such_knob=1", "model.no_such_knob: not a knob of lenet5"),
        ("optimizer.opt=nosuchopt", "optimizer.opt: timm has no optimizer 'nosuchopt'"),
        ("optimizer.opt=adamx", "optimizer.opt: timm has no optimizer 'adamx' (did you mean adamax"),
        ("optimizer.momentum=-1", "optimizer.momentum: Invalid momentum value: -1"),
        (
            "scheduler.sched=nosuch",
            "scheduler.sched: Unknown scheduler 'nosuch' (timm schedules stepped per update: cosine",
        ),
        ("scheduler.sched=plateau", "scheduler.sched: Plateau LR only supports step per epoch"),
        ("scheduler.sched=none", "scheduler.sched: none keeps no schedule"),
        ("scheduler.warmup_lr=-1", "scheduler.warmup_lr: must be >= 0"),
        ("scheduler.min_lr=-1e-5", "scheduler.min_lr: must be >= 0"),
        ("scheduler.decay_rate=0", "scheduler.decay_rate: must be > 0"),
    ],
)
def test_every_key_and_the_optimizer_are_checked_by_the_schema_and_timm(override, message, tmp_path):
    with pytest.raises(ConfigError) as error:
        check_config(make_config(tmp_path, "model=lenet5", override))
    assert str(error.value).startswith(message)


@pytest.mark.slow  # a real command in a subprocess
def test_config_is_checked_before_the_data_is_looked_for(tmp_path):
    """Hydra's own hint for train.nosuchkey is +train.nosuchkey; the optimizer fails before any data."""
    for override in ("+train.nosuchkey=1", "optimizer.opt=nosuchopt"):
        result = run_cli(
            "data=imagefolder",
            f"data.root={tmp_path / 'missing'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            override,
            timeout=120,
        )
        assert result.returncode == 2 and result.stderr.startswith(f"cnnbench: error: {override.lstrip('+')[:10]}")
        assert "Traceback" not in result.stderr and "missing" not in result.stderr
        assert not any((tmp_path / "run").iterdir())
