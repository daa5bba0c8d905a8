"""Meta Pseudo Labels (Pham, Dai, Xie, Luong and Le, "Meta Pseudo Labels", CVPR 2021): a teacher labels
unlabeled images for the student, and learns from how the student does on labeled images afterwards.

`mpl.enabled=true`: the run's model is the student; the teacher is built here (from `mpl.teacher`, a
cnnbench checkpoint, or as model.* from scratch). One step, the paper's Algorithm 1 with its UDA term:

1. The teacher, in training mode, sees the labeled batch and the unlabeled one in one forward pass: the
   pool images' strong view (the run's augmentation, then RandAugment) and, with UDA, their weak view (the
   run's augmentation alone). Hard pseudo-labels for the strong view are drawn from its softmax
   (`mpl.pseudo_label=sample`, as the paper) or are its top class (`argmax`).
2. The student's cross-entropy on the labeled batch is measured (ce_before), the student takes one step on
   the pseudo-labeled strong view, and its labeled cross-entropy is measured again (ce_after); both
   measurements in training mode with the same dropout masks, so that they differ by the step alone.
3. The feedback coefficient h = ce_before - ce_after: the first-order Taylor approximation of the paper's
   h = eta_S * grad CE_labeled(theta_S')^T grad CE_pseudo(theta_S) (its appendix A), positive when the step
   on the teacher's labels lowered the student's labeled loss. (The authors' released code and its ports
   write the difference the other way round, google-research issue 536 and MPL-pytorch issue 6; this is
   the sign REINFORCE gives, with the loss before the step as the baseline: labels that helped become
   likelier.)
4. The teacher takes one step on h * CE(teacher(strong view), pseudo-labels) + its own cross-entropy on
   the labeled batch + mpl.uda_weight * UDA's consistency loss (Xie, Dai, Hovy, Luong and Le 2020, "Unsupervised
   Data Augmentation for Consistency Training": the strong view's prediction trained towards the weak
   view's, sharpened by mpl.uda_temperature, on images whose weak-view confidence reaches mpl.uda_threshold).

Simplified from the paper: no moving average of h, no delay before the student starts, no ramp of the UDA
weight; the student's closing fine-tuning on the labeled data is a run of its own (`model.weights=` the MPL
run's checkpoint; README, "Meta Pseudo Labels"). One process, fp32 or bf16.

Exact resume: an epoch is the labeled loader's (TrainBatches), step s takes the pool's batch s (PoolBatches,
a function of the seed and s alone), and the checkpoint holds the teacher, its optimizer and schedule
beside the student's (`mpl` in the checkpoint).
"""

import copy
import logging
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from cnnbench.data.datasets import BadImage, SeededBatches, load_split
from cnnbench.data.loader import CudaPrefetcher, ReadableBatches, batch_seed, collate_readable, loader_workers
from cnnbench.data.pseudo_labels import unlabeled_pool
from cnnbench.data.transforms import CROPS, build_transforms
from cnnbench.errors import ConfigError, DataError, Interrupted, NonfiniteLoss

from .build import Optimization, build_network, build_optimization, measure
from .distill import load_teacher
from .resume import restore_training_state

log = logging.getLogger("cnnbench")

# Mixed into the pool's seeds: its permutations and augmentations are drawn apart from the labeled batches'.
POOL_SALT = 0x6D706C5F706F6F6C  # "mpl_pool"


class PoolViews(torch.utils.data.Dataset):
    """A pool image as (weak view, strong view, label) with UDA, else (strong view, label). The label is the
    hidden true one: it counts how often the teacher's pseudo-labels agree with it, and is never trained on."""

    def __init__(self, whole, indices: list[int], strong, weak=None):
        self.whole, self.indices, self.strong, self.weak = whole, indices, strong, weak

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        sample = self.whole[self.indices[index]]
        if isinstance(sample, BadImage):  # an unreadable file leaves its batch, as in the labeled loader
            return sample
        image, label = sample
        return (*([self.weak(image)] if self.weak else []), self.strong(image), label)


class PoolBatches(torch.utils.data.Sampler):
    """The unlabeled batches of steps [first, first + count): step s takes batch s % n of the pool's
    permutation for its pass s // n (n batches a pass), each with its own augmentation seed: the same
    batches whatever the resume point."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.per_pass = size // batch_size
        self.first, self.count = 0, 0

    def steps(self, first: int, count: int) -> None:
        self.first, self.count = first, count

    def __len__(self):
        return self.count

    def __iter__(self):
        order, order_pass = None, None
        for step in range(self.first, self.first + self.count):
            pass_, batch = divmod(step, self.per_pass)
            if pass_ != order_pass:
                generator = torch.Generator().manual_seed((self.seed * 1_000_003 + pass_) ^ POOL_SALT)
                order, order_pass = torch.randperm(self.size, generator=generator), pass_
            yield (
                batch_seed(self.seed, pass_, batch, 0) ^ POOL_SALT,
                order[batch * self.batch_size : (batch + 1) * self.batch_size].tolist(),
            )


@dataclass
class MetaPseudoLabels:
    """The teacher and what it trains with; the run (trainer.Run) is the student's."""

    cfg: DictConfig  # the run's mpl.*
    teacher: torch.nn.Module
    optimization: Optimization  # the teacher's optimizer and schedule
    pool_batches: PoolBatches
    pool_loader: ReadableBatches | CudaPrefetcher
    label_smoothing: float
    # This epoch so far, on the device: pseudo-labels agreeing with the hidden labels, pool images, the
    # feedback h summed over steps, steps, the teacher's correct labeled predictions, labeled images
    sums: torch.Tensor
    description: str  # for train.log, which opens after the run is built: logged at the first epoch
    described: bool = False

    def checkpoint_fields(self) -> dict:
        return {
            "mpl": {
                "teacher": self.teacher.state_dict(),
                "optimizer": self.optimization.optimizer.state_dict(),
                "scheduler": self.optimization.scheduler.state_dict(),
                "sums": self.sums.cpu(),
            }
        }

    def restore(self, checkpoint: dict) -> None:
        """The teacher, its optimizer and schedule where the checkpoint left them (under this run's
        hyperparameters, as the student's), and the epoch's sums so far."""
        saved = checkpoint["mpl"]
        restore_training_state(
            {"model": saved["teacher"], "optimizer": saved["optimizer"], "step": checkpoint["step"], "scaler": {}},
            self.teacher,
            self.optimization.optimizer,
            self.optimization.scheduler,
            self.optimization.scaler,
            None,
        )
        self.sums.copy_(saved["sums"])


def build_meta_pseudo_labels(
    cfg: DictConfig, data, placement, world_size: int, labeled_batches: int
) -> MetaPseudoLabels:
    """The teacher (from mpl.teacher or from scratch), its optimization, and the unlabeled pool's loader."""
    mpl = cfg.mpl
    if world_size > 1:
        raise ConfigError(f"mpl.enabled: Meta Pseudo Labels trains in one process, not {world_size} ranks")
    if placement.amp_dtype == torch.float16:
        raise ConfigError(
            "hardware.precision: fp16 (a GradScaler per network) is not with mpl.enabled=true; bf16 or fp32"
        )
    if mpl.teacher:
        teacher, _ = load_teacher(mpl.teacher, data.classes, cfg.data.channels, placement.device, "mpl.teacher")
        teacher = measure(
            teacher.requires_grad_(True), (cfg.data.channels, cfg.data.image_size, cfg.data.image_size), placement
        )
    else:
        teacher = build_network(cfg, len(data.classes), placement, data.classes)
    teacher.model.train()
    teacher_cfg = copy.deepcopy(cfg)
    if mpl.teacher_lr is not None:
        teacher_cfg.optimizer.lr = mpl.teacher_lr
    optimization = build_optimization(teacher_cfg, teacher, labeled_batches, placement)

    split = load_split(cfg.data, True, transform=None)
    whole, pool = unlabeled_pool(split, cfg.data, mpl.pool_size)
    batch_size = cfg.data.batch_size * mpl.unlabeled_batch_ratio
    if len(pool) < batch_size:
        raise DataError(
            f"mpl.unlabeled_batch_ratio: an unlabeled batch of {batch_size} images is more than the pool's {len(pool)}"
        )
    aug = cfg.augmentation
    strong_aug = OmegaConf.merge(aug, {"name": "randaugment", "crop": aug.name if aug.name in CROPS else aug.crop})
    weak = build_transforms(aug, cfg.data, train=True) if mpl.uda_weight else None
    views = PoolViews(whole, pool, build_transforms(strong_aug, cfg.data, train=True), weak)
    pool_batches = PoolBatches(len(pool), batch_size, cfg.seed)
    workers = loader_workers(cfg.data)
    loader = torch.utils.data.DataLoader(
        SeededBatches(views),
        batch_sampler=pool_batches,
        collate_fn=collate_readable,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=cfg.data.prefetch_factor,
        generator=torch.Generator().manual_seed(cfg.seed ^ POOL_SALT),
        pin_memory=placement.device.type == "cuda",
    )
    pool_loader = ReadableBatches(loader, cfg.data.on_bad_image, data.skipped_images)
    if placement.device.type == "cuda":
        pool_loader = CudaPrefetcher(pool_loader, placement.device)
    description = (
        f"mpl: teacher {mpl.teacher or 'from scratch'}, a pool of {len(pool)} unlabeled images, "
        f"batches of {batch_size} with {cfg.data.batch_size} labeled, pseudo-labels by "
        f"{mpl.pseudo_label.value}, UDA weight {mpl.uda_weight}"
    )
    return MetaPseudoLabels(
        mpl,
        teacher.model,
        optimization,
        pool_batches,
        pool_loader,
        aug.label_smoothing,
        torch.zeros(6, dtype=torch.float64, device=placement.device),
        description,
    )


def mpl_epoch(run, state, checkpointer, stops) -> int:
    """trainer.train_epoch's counterpart: one epoch of Meta Pseudo Labels steps from the state's position in
    it (the labeled loader's batches, each with the pool's batch of its step). metrics.csv's train_loss and
    train_top1 are the student's on the labeled batches, measured before each step. Returns the labeled
    images seen."""
    from .trainer import finish_step  # here: trainer imports this module

    cfg, data, placement, mpl = run.cfg, run.data, run.placement, run.mpl
    if not mpl.described:
        log.info(mpl.description)
        mpl.described = True
    run.model.train()
    mpl.teacher.train()
    start = state.batch_in_epoch
    data.train_batches.set_epoch(state.epoch, start)
    batches = len(data.train_batches) + start
    mpl.pool_batches.steps(state.step, len(data.train_batches))
    bar = tqdm(
        total=batches,
        initial=start,
        desc=f"epoch {state.epoch}",
        leave=False,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
    images_seen = 0
    for i, ((images, labels), pool) in enumerate(zip(data.train_loader, mpl.pool_loader), start=start):
        images = data.normalize(placement.put(images))
        labels = labels.to(placement.device, non_blocking=True)
        *views, hidden_labels = pool
        views = [data.normalize(placement.put(view)) for view in views]
        student_loss, ce_before, correct_before = meta_pseudo_labels_step(
            run,
            state.step,
            images,
            labels,
            views,
            hidden_labels.to(placement.device, non_blocking=True),
            batch_seed(cfg.seed, state.epoch, i, 0),
        )
        state.sums += torch.stack([ce_before * len(labels), correct_before, ce_before.new_full((), len(labels))])
        images_seen += len(labels)
        bar.update()
        mpl.optimization.optimizer.zero_grad(set_to_none=True)
        mpl.optimization.scheduler.step_update(state.step + 1)
        finish_step(run, state, student_loss, bar, i + 1, batches)
        state.batch_in_epoch = i + 1
        stop = bool(stops)
        if stop or cfg.train.checkpoint_every_steps and state.step % cfg.train.checkpoint_every_steps == 0:
            checkpointer.save("last.pt")
        if stop:
            raise Interrupted(stops.name)
    bar.close()
    log_epoch(run, state)
    return images_seen


def meta_pseudo_labels_step(
    run,
    step: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    views: list[torch.Tensor],
    hidden_labels: torch.Tensor,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of both networks (the module's docstring); returns the student's loss on the pseudo-labels,
    and its cross-entropy and correct predictions on the labeled batch before its step."""
    mpl, placement, cfg = run.mpl, run.placement, run.cfg
    student, teacher = run.model, mpl.teacher
    strong = views[-1]
    with placement.autocast:
        teacher_logits = teacher(torch.cat([images, *views])).float()
    teacher_labeled, *teacher_views = teacher_logits.split([len(images), *(len(v) for v in views)])
    teacher_strong = teacher_views[-1]
    with torch.no_grad():
        probabilities = teacher_strong.softmax(1)
        pseudo = (
            torch.multinomial(probabilities, 1).squeeze(1)
            if mpl.cfg.pseudo_label == "sample"
            else probabilities.argmax(1)
        )

    ce_before, logits_before = labeled_cross_entropy(student, images, labels, placement, seed)
    with placement.autocast:
        student_loss = F.cross_entropy(student(strong).float(), pseudo, label_smoothing=mpl.label_smoothing)
    check_finite(student_loss, "the student's loss on the pseudo-labels", step)
    student_loss.backward()
    step_optimizer(run.optimization.optimizer, student, cfg.train.clip_grad_norm)
    ce_after, _ = labeled_cross_entropy(student, images, labels, placement, seed)
    feedback = ce_before - ce_after

    teacher_loss = feedback * F.cross_entropy(teacher_strong, pseudo) + F.cross_entropy(
        teacher_labeled, labels, label_smoothing=mpl.label_smoothing
    )
    if mpl.cfg.uda_weight:
        teacher_loss = teacher_loss + mpl.cfg.uda_weight * uda_loss(teacher_views[0], teacher_strong, mpl.cfg)
    check_finite(teacher_loss, "the teacher's loss", step)
    teacher_loss.backward()
    step_optimizer(mpl.optimization.optimizer, teacher, cfg.train.clip_grad_norm)
    mpl.sums += torch.stack(
        [
            (pseudo == hidden_labels).sum().double(),
            pseudo.new_full((), len(pseudo)).double(),
            feedback.double(),
            feedback.new_ones((), dtype=torch.float64),
            (teacher_labeled.argmax(1) == labels).sum().double(),
            labels.new_full((), len(labels)).double(),
        ]
    )
    return student_loss.detach(), ce_before.double(), (logits_before.argmax(1) == labels).sum().double()


@torch.no_grad()
def labeled_cross_entropy(student, images, labels, placement, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's mean cross-entropy on the labeled batch, and its logits: in training mode (the batch
    statistics it trains with), its dropout drawn from `seed` (the same masks before and after its step),
    the run's own random numbers untouched."""
    cuda = placement.device.type == "cuda"
    index = (
        (placement.device.index if placement.device.index is not None else torch.cuda.current_device())
        if cuda
        else None
    )
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(seed)  # torch.manual_seed would reseed every GPU's generator
        if cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        with placement.autocast:
            logits = student(images).float()
    return F.cross_entropy(logits, labels), logits


def uda_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, mpl_cfg) -> torch.Tensor:
    """UDA's consistency: cross-entropy of the strong view's prediction against the weak view's, sharpened and
    without gradient, over the images whose weak-view confidence reaches the threshold (their mean over the
    whole batch)."""
    with torch.no_grad():
        confidence = weak_logits.softmax(1).max(1).values
        target = (weak_logits / mpl_cfg.uda_temperature).softmax(1)
        mask = (confidence >= mpl_cfg.uda_threshold).float()
    return (-(target * strong_logits.log_softmax(1)).sum(1) * mask).mean()


def step_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module, clip_grad_norm: float | None) -> None:
    if clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    optimizer.step()


def check_finite(loss: torch.Tensor, what: str, step: int) -> None:
    """A non-finite loss stops the run before it reaches the weights (train.on_nonfinite=error's way)."""
    if not torch.isfinite(loss):
        message = f"train: {what} is {loss.item()} at step {step + 1}; its network's weights are kept from before it"
        log.error(message)
        raise NonfiniteLoss(message)


def log_epoch(run, state) -> None:
    """train.log (and TensorBoard): how good the teacher's labels were this epoch, and its feedback."""
    from .trainer import peak_lr  # here: trainer imports this module

    agree, pool_images, feedback, steps, teacher_correct, labeled = run.mpl.sums.tolist()
    run.mpl.sums.zero_()
    if not steps:
        return
    scalars = {
        "train/mpl_pseudo_label_top1": 100 * agree / pool_images,
        "train/mpl_feedback": feedback / steps,
        "train/mpl_teacher_train_top1": 100 * teacher_correct / labeled,
        "train/mpl_teacher_lr": peak_lr(run.mpl.optimization.optimizer),
    }
    # Under train/, which TensorBoard's Time Series opens first with val/.
    log.info(
        f"epoch {state.epoch} mpl: the teacher's pseudo-labels agree with the hidden labels on "
        f"{scalars['train/mpl_pseudo_label_top1']:.2f}%, its labeled top1 "
        f"{scalars['train/mpl_teacher_train_top1']:.2f}, mean feedback h {scalars['train/mpl_feedback']:.2e}"
    )
    if run.recorder:
        run.recorder.step(state.step, scalars)
