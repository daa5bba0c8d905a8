"""The structured schema of a run: one typed, commented tree, registered in Hydra's ConfigStore.

Hydra rejects unknown keys and wrong types while composing, except keys added with `+`, which it
writes into the typed tree regardless: `check_keys` refuses those. `check_config` rejects impossible
values before any work, each with one line that names the key; the optimizer, the schedule and the
model's knobs are checked by timm's and the registry's own code, on a stand-in, before data or model.
"""

import dataclasses
import difflib
import functools
import os
import sys
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.object_type import ObjectType
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, OmegaConf

from cnnbench.errors import ConfigError

# The configs: conf/ beside the package in a checkout, cnnbench/conf inside an installed wheel (pyproject).
CONFIG_PATH = "conf" if (Path(__file__).parent / "conf").is_dir() else "../conf"


class Device(str, Enum):
    auto = "auto"  # CUDA when present, else CPU
    cpu = "cpu"
    cuda = "cuda"


class OnBadImage(str, Enum):
    skip = "skip"  # leave the file out of its batch, name it in train.log and summary.json
    error = "error"  # stop with the file's path


class OnNonfinite(str, Enum):
    error = "error"  # stop at the step, naming it and the loss
    skip = "skip"  # skip that step's update, count it in train.log and summary.json


class Precision(str, Enum):
    auto = "auto"  # bf16 on a GPU that has it, else fp32
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"  # with a GradScaler


@dataclass
class DataConfig:
    name: str = MISSING  # fashion_mnist | mnist | cifar10 | cifar100 | imagenet | imagefolder | synthetic
    root: Optional[str] = None  # where the files are; null: the data set's usual places
    image_size: int = MISSING  # side of the square image the model sees
    channels: int = MISSING  # 1 (grayscale) or 3 (RGB): images are converted to it
    num_classes: Optional[int] = None  # null: the data set's own count
    batch_size: int = 128  # global: split across DDP ranks
    workers: Optional[int] = 0  # DataLoader worker processes; null: this rank's share of the CPU cores (at most 8)
    prefetch_factor: Optional[int] = None  # batches each worker loads ahead; null: torch's (2)
    # File data sets: null decodes with PIL in the workers; cpu, cuda or auto (the training device): the files'
    # bytes travel and torchvision.io.decode_jpeg decodes, crops and flips each batch on that device.
    decode_device: Optional[Device] = None
    # auto | true | false: the whole set as one uint8 tensor on the training device, batches gathered and
    # augmented there (no DataLoader). auto: where the set is in memory (not files), augmentation is none or
    # basic, and it fits (a quarter of GPU memory; on CPU always); true: that, or a ConfigError saying why not.
    device_resident: Any = "auto"  # Any: Hydra reads true/false as booleans, auto as a string
    train_size: Optional[int] = None  # null: the whole training set; N: a fixed random subset
    val_size: Optional[int] = None  # likewise for validation
    download: bool = False  # fetch through torchvision when the files are missing
    on_bad_image: OnBadImage = OnBadImage.skip  # an image file that does not decode (image folders)
    # A val/ of images without class folders (as ILSVRC-2012 ships it): the file that labels them, the devkit's
    # ILSVRC2012_validation_ground_truth.txt or Kaggle's LOC_val_solution.csv; null: either, found under root.
    val_labels: Optional[str] = None
    pseudo_labels: Optional[str] = None  # a file from cnnbench.pseudolabel: its soft-labelled pool joins training
    mean: List[float] = MISSING  # per-channel normalization
    std: List[float] = MISSING


@dataclass
class AugmentationConfig:
    name: str = MISSING  # none | basic | imagenet | alexnet | randaugment | trivialaugment | autoaugment
    hflip: float = 0.5  # probability of a horizontal flip
    crop_padding: int = 4  # basic: pad then random-crop back to size
    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # imagenet: RandomResizedCrop area range
    eval_crop_ratio: float = 0.875  # imagenet, alexnet: resize to size / ratio (224 -> 256), crop size
    crop: str = "basic"  # randaugment, trivialaugment, autoaugment: the crop first (basic | imagenet | alexnet)
    randaugment_ops: int = 2  # RandAugment's N: ops per image
    randaugment_magnitude: int = 9  # RandAugment's M, of 31 bins
    autoaugment_policy: str = "imagenet"  # imagenet | cifar10 | svhn
    lighting: float = 0.0  # AlexNet's PCA colour noise: std of the eigen-component weights (0.1 in the paper)
    random_erasing: float = 0.0  # probability of erasing a random rectangle (Zhong et al.)
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # > 0: mixup with lambda ~ Beta(alpha, alpha), on the batch (timm.data.Mixup)
    cutmix_alpha: float = 0.0  # > 0: cutmix; with both, each batch picks one
    mixup_prob: float = 1.0  # probability a batch is mixed at all
    mixup_switch_prob: float = 0.5  # with both: probability of cutmix rather than mixup


@dataclass
class OptimizerConfig:
    _target_: str = "timm.optim.create_optimizer_v2"
    _partial_: bool = True
    opt: str = "momentum"  # any timm optimizer: momentum (SGD), sgd (SGD + Nesterov), adamw, lamb, ...
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    filter_bias_and_bn: bool = True  # no weight decay on norm weights and biases
    # Layer-wise learning rates for fine-tuning (timm's, as BEiT): the classifier trains at lr, each group of
    # layers below it at layer_decay times the lr of the group above; null: one lr for all.
    layer_decay: Optional[float] = None
    # Linear scaling rule (Goyal et al.): lr is quoted for this global batch, and the run uses
    # lr * data.batch_size / lr_reference_batch; null: lr as given.
    lr_reference_batch: Optional[int] = None
    # torch's fused update kernels (SGD, Adam, AdamW), which skip a non-finite update on the device (no host
    # sync a step, docs/performance.md); null: on a GPU where the optimizer has them, but not in fp16.
    fused: Optional[bool] = None


@dataclass
class SchedulerConfig:
    _target_: str = "timm.scheduler.create_scheduler_v2"
    _partial_: bool = True
    sched: str = "cosine"  # cosine | step | multistep | constant | any timm schedule; stepped per update
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    decay_epochs: float = 30.0  # step
    decay_milestones: List[int] = field(default_factory=lambda: [30, 60, 90])  # multistep
    decay_rate: float = 0.1  # step, multistep; poly (scheduler=linear): the power


@dataclass
class HardwareConfig:
    device: Device = Device.auto
    precision: Precision = Precision.auto
    channels_last: bool = True  # NHWC convolutions: faster on CPU and GPU alike
    # torch.compile the model: true | false | auto (on a GPU without sync_batchnorm; off on CPU, where it costs
    # more than it gains, and with SyncBatchNorm, which breaks the graph at every layer)
    compile: Any = "auto"
    deterministic: bool = False  # bitwise-reproducible kernels (slower on GPU)
    nproc: int = 1  # DDP processes on this node, started by cnnbench (ignored under torchrun, which sets it)
    sync_batchnorm: bool = False  # DDP: batch norm statistics over the global batch, not each rank's share
    find_unused_parameters: bool = False  # DDP: for models whose forward skips parameters (slower)


@dataclass
class TrainLoopConfig:
    epochs: int = 10
    # A training budget instead of train.epochs (at most one of the two): the run trains the steps that first
    # reach it, the schedule ends at its last step, and the epochs follow (the last one cut short). In compute,
    # TFLOP = 3 x forward FLOPs x images seen (the forward and the backward's two products), or in images seen.
    budget_tflop: Optional[float] = None
    budget_images: Optional[int] = None
    limit_train_batches: Optional[int] = None  # null: whole epochs; N: at most N batches an epoch
    limit_val_batches: Optional[int] = None
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    clip_grad_norm: Optional[float] = None
    log_every_steps: int = 50  # log lines (and TensorBoard points) every N optimizer steps
    checkpoint_every_steps: int = 0  # also write last.pt every N optimizer steps; 0: at epoch ends only
    on_nonfinite: OnNonfinite = OnNonfinite.error  # a NaN or Inf training loss
    ema_decay: Optional[float] = None  # an exponential moving average of the weights (timm ModelEmaV3); null: off
    # The model's first convolution starts as a whitening of the training images' patches (Page 2019; Jordan's
    # airbench 2024): its filters, the covariance's top eigenvectors, scaled to unit variance, and their negatives
    whiten_stem: bool = False


@dataclass
class BenchConfig:
    warmup_steps: int = 10  # untimed steps first: allocator, cuDNN autotuning, torch.compile
    windows: int = 5  # timed windows; images/s is their median
    trainer: bool = False  # also time cnnbench's own loop: train() on synthetic data of the same shape, 2 epochs
    trainer_rounds: int = 3  # bench.trainer: times the loop runs, each between two timings of the bare step
    input: bool = False  # also time the train loader alone on data.root's files (imagenet, imagefolder)
    steps_per_window: int = 10
    matmul_size: Optional[int] = None  # n of the n x n matmul that measures peak FLOP/s; null: 8192 on GPU, 2048 on CPU


@dataclass
class DistillConfig:
    teacher: Optional[str] = None  # a cnnbench checkpoint (.pt); null: no distillation
    temperature: float = 4.0  # softens both distributions (Hinton et al.)
    alpha: float = 0.9  # weight of the teacher's soft targets; 1 - alpha on the labels


class PseudoLabel(str, Enum):
    sample = "sample"  # drawn from the teacher's distribution (the paper's Algorithm 1)
    argmax = "argmax"  # the teacher's top class


@dataclass
class MplConfig:
    """Meta Pseudo Labels (Pham, Dai, Xie, Luong and Le, CVPR 2021): the run's model is the student; a teacher
    labels the unlabeled pool for it and learns from the student's labeled loss (cnnbench/engine/mpl.py)."""

    enabled: bool = False
    teacher: Optional[str] = None  # the teacher's start: a cnnbench checkpoint (.pt); null: model.*, from scratch
    teacher_lr: Optional[float] = None  # the teacher's optimizer.lr (same optimizer and schedule); null: optimizer.lr
    pool_size: Optional[int] = None  # the unlabeled pool: outside data.train_size; null: all of it, N: a fixed random N
    unlabeled_batch_ratio: int = 1  # unlabeled images a step per labeled one (data.batch_size of them)
    pseudo_label: PseudoLabel = PseudoLabel.sample
    # UDA (Xie, Dai, Hovy, Luong and Le 2020), the teacher's consistency on the pool: its prediction on the
    # strong (RandAugment) view trained towards its sharpened one on the weak view; 0: off
    uda_weight: float = 0.0
    uda_temperature: float = 0.7  # sharpens the weak view's prediction
    uda_threshold: float = 0.6  # only images whose weak-view confidence reaches it count


class TTA(str, Enum):
    none = "none"  # the val transform's one view
    flip = "flip"  # it and its mirror image
    tencrop = "tencrop"  # AlexNet's: four corners and the centre of a larger image, and their mirrors


@dataclass
class EvalConfig:
    tta: TTA = TTA.none  # test-time augmentation: the logits of the views are averaged


@dataclass
class RunConfig:
    model: Dict[str, Any] = field(default_factory=dict)  # name + the family's knobs (see conf/model/)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)  # python -m cnnbench.bench only
    distill: DistillConfig = field(default_factory=DistillConfig)
    mpl: MplConfig = field(default_factory=MplConfig)  # Meta Pseudo Labels: mpl.enabled=true
    # validation each epoch: eval.tta=flip averages in the mirror images
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    resume: Optional[str] = None  # null | auto (this run dir's last.pt, if any) | a checkpoint path
    resume_fallback: bool = False  # resume=auto with an unreadable last.pt: use the newest valid checkpoint beside it
    run_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class EvaluateConfig:
    checkpoint: str = MISSING  # a cnnbench checkpoint: the model, its classes, its data and transforms
    data: Optional[DataConfig] = None  # null: the checkpoint's own val split; data=NAME: another
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: Optional[str] = None  # also write the results JSON here (it is always in the run dir)
    run_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class PredictConfig:
    checkpoint: str = MISSING
    images: List[str] = MISSING  # image files: [a.jpg,b.png]
    topk: int = 5
    dense: bool = False  # convolutionize the model and slide it over a larger image: a map of predictions
    dense_scale: float = 2.0  # dense: the image is resized to this times the training size
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    run_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class PseudolabelConfig:
    """`python -m cnnbench.pseudolabel`: a teacher's soft labels for the unlabeled pool (Noisy Student)."""

    checkpoint: str = MISSING  # the teacher: a cnnbench checkpoint
    data: DataConfig = field(default_factory=DataConfig)  # data.train_size marks the labeled part; the rest is the pool
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    pool_size: Optional[int] = None  # null: the whole pool; N: a fixed random N of it
    threshold: float = 0.0  # keep only images the teacher gives at least this top probability
    # Noisy Student's balancing: N images of each class (the teacher's top one), its N most confident
    # where it has more, each repeated in turn where it has fewer; null: as they come
    per_class: Optional[int] = None
    output: str = "${hydra:runtime.output_dir}/pseudo_labels.pt"


def register_configs() -> None:
    if {"--help", "-h", "--hydra-help"} & set(sys.argv):
        memoize_group_options()
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)
    ConfigStore.instance().store(name="predict_schema", node=PredictConfig)
    ConfigStore.instance().store(name="pseudolabel_schema", node=PseudolabelConfig)
    # ${gpus_or:N}: the CUDA devices on this machine, or N where there are none (conf/hardware/ddp.yaml).
    OmegaConf.register_new_resolver("gpus_or", lambda n: cuda_device_count() or int(n), replace=True)
    # ${nproc_for:${hardware.device}} (conf/hardware/auto.yaml): every GPU of the node when the run is on CUDA.
    OmegaConf.register_new_resolver("nproc_for", lambda device: auto_nproc(device, cuda_device_count()), replace=True)
    # ${model_input:size} / ${model_input:crop_pct} (conf/data/imagenet.yaml, conf/augmentation/imagenet.yaml):
    # the chosen model's native image side and evaluation crop, as timm's default configs carry them.
    OmegaConf.register_new_resolver("model_input", model_input, replace=True)
    from cnnbench.sweep import point_subdir  # the sweep imports this module's checks

    # ${point_name:${hydra.sweep.dir},${hydra.overrides.task}}: a sweep point's directory (conf/train.yaml).
    OmegaConf.register_new_resolver("point_name", point_subdir, replace=True)


def model_input(what: str, *, _root_: DictConfig) -> int | float:
    from cnnbench.models.registry import native_input  # imports torch: only when a run resolves it

    if "model" not in _root_:  # pseudolabel's data=imagenet: there is no model to ask
        return {"size": 224, "crop_pct": 0.875}[what]
    model = _root_.model
    size, crop_pct = (224, 0.875) if "_target_" in model else native_input(model.name, model.get("source", "cnnbench"))
    return {"size": size, "crop_pct": crop_pct}[what]


def auto_nproc(device: str, cuda_devices: int) -> int:
    """hardware=auto's DDP ranks: one per visible GPU when the device is cuda or auto, else one process."""
    return cuda_devices if device in ("auto", "cuda") and cuda_devices > 1 else 1


def memoize_group_options() -> None:
    """Hydra 1.3's --help lists each config group's options three times over, each time deep-copying the
    whole config repository (two seconds for cnnbench's groups, as long as importing torch); within one
    config loader the answer cannot change, so each is computed once."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    listing = ConfigLoaderImpl.get_group_options
    if getattr(listing, "memoized", False):
        return

    @functools.wraps(listing)
    def get_group_options(self, group_name, results_filter=ObjectType.CONFIG, config_name=None, overrides=None):
        cache = self.__dict__.setdefault("_group_options", {})
        key = (group_name, results_filter, config_name, tuple(overrides or ()))
        if key not in cache:
            cache[key] = listing(self, group_name, results_filter, config_name, overrides)
        return list(cache[key])

    get_group_options.memoized = True
    ConfigLoaderImpl.get_group_options = get_group_options


def cuda_device_count() -> int:
    import torch  # here, not at the top: --help, --cfg and shell completion never pay for importing torch

    return torch.cuda.device_count()


def check_keys(cfg: DictConfig, prefix: str = "") -> None:
    """Every key is a field of its schema: a `+key=value` Hydra added to a typed node is refused.
    model.* is free-form (each family has its own knobs): the registry checks it."""
    schema = OmegaConf.get_type(cfg)
    fields = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in cfg.keys():
        if fields is not None and key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            raise ConfigError(
                f"{prefix}{key}: not a key of the config{f' (did you mean {prefix}{close[0]}?)' if close else ''}"
            )
        node = cfg._get_node(key)
        if OmegaConf.is_dict(node) and not node._is_none() and not node._is_missing():
            check_keys(node, f"{prefix}{key}.")


def check_model_knobs(model: DictConfig) -> None:
    """What create_model would refuse, before the data is loaded: unknown knobs, wrong types."""
    from cnnbench.models.registry import checked_entry  # torch: for a run, not for --help

    knobs = OmegaConf.to_container(model, resolve=True)
    name, source = knobs.pop("name"), knobs.pop("source", "cnnbench")
    knobs.pop("weights", None)
    checked_entry(name, source, knobs)


def check_optimization(cfg: DictConfig) -> None:
    """The optimizer and its schedule, built by timm's factories on a one-layer stand-in: a name timm
    does not know, or a value its optimizer refuses (torch's range checks), is named by its key."""
    for key in ("warmup_lr", "min_lr"):
        if cfg.scheduler[key] < 0:
            raise ConfigError(f"scheduler.{key}: must be >= 0, got {cfg.scheduler[key]}")
    for key in ("decay_rate", "decay_epochs"):
        if cfg.scheduler[key] <= 0:
            raise ConfigError(f"scheduler.{key}: must be > 0, got {cfg.scheduler[key]}")
    import timm.optim  # torch: for a run, not for --help
    import torch

    names = timm.optim.list_optimizers()
    if str(cfg.optimizer.opt).lower().split("_")[-1] not in names:  # timm reads "lookahead_adamw" as adamw
        close = ", ".join(difflib.get_close_matches(str(cfg.optimizer.opt), names, n=3))
        raise ConfigError(
            f"optimizer.opt: timm has no optimizer {cfg.optimizer.opt!r} ("
            + (f"did you mean {close}? " if close else "")
            + f"timm.optim.list_optimizers() names all {len(names)})"
        )
    optimizer_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    optimizer_cfg.pop("lr_reference_batch")
    optimizer_cfg.pop("layer_decay")  # needs the real model's layers; its range is checked below
    if optimizer_cfg.pop("fused"):  # torch's SGD, Adam and AdamW take the keyword; others refuse true here
        optimizer_cfg["fused"] = True
    stand_in = torch.nn.Linear(1, 1)
    try:
        optimizer = instantiate(optimizer_cfg)(stand_in)
    except (ValueError, TypeError) as e:  # torch: "Invalid momentum value: -1"
        key = next((k for k in optimizer_cfg if k in str(e)), "opt")
        raise ConfigError(f"optimizer.{key}: {e}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler, _ = instantiate(cfg.scheduler)(
                optimizer, num_epochs=cfg.train.epochs, step_on_epochs=False, updates_per_epoch=1
            )
    except (ValueError, AssertionError) as e:  # timm: "Unknown scheduler 'nosuch'."
        key = next((k for k in cfg.scheduler if k != "sched" and k in str(e)), "sched")
        raise ConfigError(
            f"scheduler.{key}: {str(e).rstrip('.') or 'not stepped per update'} (timm schedules "
            f"stepped per update: {', '.join(TIMM_SCHEDULES)})"
        ) from None
    if scheduler is None:
        raise ConfigError("scheduler.sched: none keeps no schedule to checkpoint; scheduler=constant holds the lr")


# The names timm.scheduler.create_scheduler_v2 (timm 1.0) builds per update; for the message only, the check is timm's.
TIMM_SCHEDULES = ("cosine", "tanh", "step", "multistep", "poly", "wsd", "rsqrt", "constant")


def check_ranges(cfg: DictConfig) -> None:
    """Numbers outside their range: sizes and counts that must be positive, weights that must not be
    negative, probabilities."""
    positive = {
        "train.epochs": cfg.train.epochs,
        "data.batch_size": cfg.data.batch_size,
        "data.image_size": cfg.data.image_size,
        "data.channels": cfg.data.channels,
        "train.grad_accum_steps": cfg.train.grad_accum_steps,
        "train.log_every_steps": cfg.train.log_every_steps,
        "optimizer.lr": cfg.optimizer.lr,
        "hardware.nproc": cfg.hardware.nproc,
        "bench.windows": cfg.bench.windows,
        "bench.steps_per_window": cfg.bench.steps_per_window,
        "bench.trainer_rounds": cfg.bench.trainer_rounds,
        "distill.temperature": cfg.distill.temperature,
    }
    optional_positive = {
        "data.num_classes": cfg.data.num_classes,
        "data.train_size": cfg.data.train_size,
        "data.val_size": cfg.data.val_size,
        "train.clip_grad_norm": cfg.train.clip_grad_norm,
        "train.limit_train_batches": cfg.train.limit_train_batches,
        "train.limit_val_batches": cfg.train.limit_val_batches,
        "train.budget_tflop": cfg.train.budget_tflop,
        "train.budget_images": cfg.train.budget_images,
        "optimizer.lr_reference_batch": cfg.optimizer.lr_reference_batch,
        "bench.matmul_size": cfg.bench.matmul_size,
        "data.prefetch_factor": cfg.data.prefetch_factor,
    }
    for key, value in {**positive, **{k: v for k, v in optional_positive.items() if v is not None}}.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
    non_negative = {
        "data.workers": cfg.data.workers or 0,
        "optimizer.weight_decay": cfg.optimizer.weight_decay,
        "train.checkpoint_every_steps": cfg.train.checkpoint_every_steps,
        "scheduler.warmup_epochs": cfg.scheduler.warmup_epochs,
        "augmentation.label_smoothing": cfg.augmentation.label_smoothing,
        "bench.warmup_steps": cfg.bench.warmup_steps,
        "augmentation.lighting": cfg.augmentation.lighting,
        "augmentation.mixup_alpha": cfg.augmentation.mixup_alpha,
        "augmentation.cutmix_alpha": cfg.augmentation.cutmix_alpha,
        "augmentation.randaugment_ops": cfg.augmentation.randaugment_ops,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}")
    probabilities = {
        "augmentation.hflip": cfg.augmentation.hflip,
        "augmentation.random_erasing": cfg.augmentation.random_erasing,
        "augmentation.mixup_prob": cfg.augmentation.mixup_prob,
        "augmentation.mixup_switch_prob": cfg.augmentation.mixup_switch_prob,
        "distill.alpha": cfg.distill.alpha,
    }
    for key, value in probabilities.items():
        if not 0 <= value <= 1:
            raise ConfigError(f"{key}: in [0, 1], got {value}")


def check_config(cfg: DictConfig) -> None:
    """Impossible values, each named by its key: what the types alone cannot say."""
    check_keys(cfg)
    check_ranges(cfg)
    # timm's random_seed seeds numpy (seeds in [0, 2**32)) with seed + rank on each rank
    ranks = int(os.environ.get("WORLD_SIZE", 0)) or cfg.hardware.nproc
    if not 0 <= cfg.seed <= 2**32 - ranks:
        raise ConfigError(
            f"seed: in [0, {2**32 - ranks}] (numpy's range, less one per extra rank: rank r uses "
            f"seed + r; here {ranks} ranks), got {cfg.seed}"
        )
    if cfg.train.budget_tflop is not None and cfg.train.budget_images is not None:
        raise ConfigError(
            f"train.budget_tflop, train.budget_images: one budget, in compute or in images seen, "
            f"got both ({cfg.train.budget_tflop} and {cfg.train.budget_images})"
        )
    if cfg.hardware.compile not in (True, False, "auto"):
        raise ConfigError(f"hardware.compile: true, false or auto, got {cfg.hardware.compile!r}")
    if cfg.data.decode_device == Device.cuda and cfg.hardware.device == Device.cpu:
        raise ConfigError("data.decode_device: cuda decodes where a GPU trains, and hardware.device is cpu")
    if cfg.data.prefetch_factor is not None and cfg.data.workers == 0:
        raise ConfigError("data.prefetch_factor: workers load ahead, and data.workers=0 has none")
    if not (isinstance(cfg.data.device_resident, bool) or cfg.data.device_resident == "auto"):
        raise ConfigError(f"data.device_resident: auto, true or false, got {cfg.data.device_resident!r}")
    if cfg.data.channels not in (1, 3):
        raise ConfigError(f"data.channels: 1 or 3, got {cfg.data.channels}")
    if cfg.optimizer.layer_decay is not None and not 0 < cfg.optimizer.layer_decay <= 1:
        raise ConfigError(f"optimizer.layer_decay: in (0, 1], got {cfg.optimizer.layer_decay}")
    if cfg.train.ema_decay is not None and not 0 < cfg.train.ema_decay < 1:
        raise ConfigError(f"train.ema_decay: null (off) or in (0, 1), got {cfg.train.ema_decay}")
    if cfg.train.whiten_stem and (cfg.model.get("weights") or cfg.model.get("pretrained")):
        raise ConfigError(
            "train.whiten_stem: would overwrite the first convolution that model.weights or model.pretrained "
            "loads; one or the other"
        )
    if cfg.augmentation.label_smoothing >= 1:
        raise ConfigError(f"augmentation.label_smoothing: must be < 1, got {cfg.augmentation.label_smoothing}")
    if cfg.eval.tta == TTA.tencrop:
        raise ConfigError(
            "eval.tta: training validates with none or flip; tencrop needs the larger images "
            "that python -m cnnbench.evaluate makes"
        )
    if cfg.resume not in (None, "auto") and not str(cfg.resume).endswith((".pt", ".pth")):
        raise ConfigError(f"resume: null, auto or a checkpoint .pt path, got {cfg.resume!r}")
    if "name" not in cfg.model:
        raise ConfigError("model.name: missing; pick a model with model=NAME")
    if cfg.mpl.enabled:
        check_mpl(cfg)
    check_model_knobs(cfg.model)
    check_optimization(cfg)


def check_mpl(cfg: DictConfig) -> None:
    """Meta Pseudo Labels' keys, and what its two-network step does not combine with."""
    mpl = cfg.mpl
    for key, value in {
        "mpl.teacher_lr": mpl.teacher_lr,
        "mpl.pool_size": mpl.pool_size,
        "mpl.unlabeled_batch_ratio": mpl.unlabeled_batch_ratio,
        "mpl.uda_temperature": mpl.uda_temperature,
    }.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
    if mpl.uda_weight < 0:
        raise ConfigError(f"mpl.uda_weight: must be >= 0, got {mpl.uda_weight}")
    if not 0 <= mpl.uda_threshold < 1:
        raise ConfigError(f"mpl.uda_threshold: in [0, 1), got {mpl.uda_threshold}")
    if cfg.data.train_size is None:
        raise ConfigError(
            "data.train_size: marks the labeled part of the training split for mpl (the rest is "
            "the unlabeled pool); set it"
        )
    # Each of these would need a second copy of its machinery for the teacher, or a meaning under pseudo-labels.
    unsupported = {
        "distill.teacher": cfg.distill.teacher is not None,
        "data.pseudo_labels": cfg.data.pseudo_labels is not None,
        "augmentation.mixup_alpha/cutmix_alpha": bool(cfg.augmentation.mixup_alpha or cfg.augmentation.cutmix_alpha),
        "train.grad_accum_steps": cfg.train.grad_accum_steps != 1,
        "train.budget_tflop/budget_images": (cfg.train.budget_tflop is not None or cfg.train.budget_images is not None),
        "train.on_nonfinite=skip": cfg.train.on_nonfinite == OnNonfinite.skip,
        "hardware.precision=fp16": cfg.hardware.precision == Precision.fp16,
        "hardware.nproc": cfg.hardware.nproc != 1,
    }
    for key, used in unsupported.items():
        if used:
            raise ConfigError(
                f"{key}: not with mpl.enabled=true (Meta Pseudo Labels trains its two networks "
                f"in one process, fp32 or bf16, a step per batch)"
            )
