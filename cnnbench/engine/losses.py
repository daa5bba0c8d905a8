"""What a train step minimises: cross-entropy (with label smoothing) on the labels, or on soft targets
when mixup/cutmix mixes the batch (timm.data.Mixup) or the data carries pseudo-labels; plus, with a
teacher, knowledge distillation (Hinton et al.).
"""

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from cnnbench.errors import ConfigError


class Objective:
    def __init__(
        self,
        aug,
        num_classes: int,
        local_batch: int,
        aux_weight: float = 0.0,
        teacher: torch.nn.Module | None = None,
        distill=None,
    ):
        self.label_smoothing, self.aux_weight = aug.label_smoothing, aux_weight
        self.mixup = None
        if aug.mixup_alpha or aug.cutmix_alpha:
            if local_batch % 2:
                raise ConfigError(
                    f"augmentation.mixup_alpha/cutmix_alpha: mixing pairs each batch with its "
                    f"reverse, so a rank's batch must be even, got {local_batch}"
                )
            self.mixup = Mixup(
                mixup_alpha=aug.mixup_alpha,
                cutmix_alpha=aug.cutmix_alpha,
                prob=aug.mixup_prob,
                switch_prob=aug.mixup_switch_prob,
                label_smoothing=aug.label_smoothing,
                num_classes=num_classes,
            )
        self.soft_loss = SoftTargetCrossEntropy()
        self.teacher, self.distill = teacher, distill

    def mix(self, images: torch.Tensor, targets: torch.Tensor):
        """-> (images, targets, labels): the batch to train on, its targets (soft under mixup or
        pseudo-labels), and the hard labels train top-1 is counted against: under mixup the label with
        the larger share of each mixed image, for soft targets their argmax."""
        if self.mixup is not None:
            if targets.dim() > 1:
                raise ConfigError(
                    "augmentation.mixup_alpha/cutmix_alpha: not with data.pseudo_labels "
                    "(Noisy Student's noise is RandAugment, dropout and drop path)"
                )
            images, targets = self.mixup(images, targets)
        return images, targets, targets.argmax(1) if targets.dim() > 1 else targets

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() > 1:
            return self.soft_loss(logits, targets)
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def __call__(self, output, targets: torch.Tensor, images: torch.Tensor):
        """-> (logits, loss). A model with auxiliary classifiers returns (logits, [aux, ...]) in training;
        each aux head adds aux_weight x its cross-entropy."""
        logits, aux = output if isinstance(output, tuple) else (output, [])
        loss = self.cross_entropy(logits, targets)
        loss = loss + sum(self.aux_weight * self.cross_entropy(a, targets) for a in aux)
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(images)
            alpha = self.distill.alpha
            loss = alpha * distillation_loss(logits, teacher_logits, self.distill.temperature) + (1 - alpha) * loss
        return logits, loss


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    """KL(teacher || student) of the temperature-softened distributions, x T^2 so its gradients keep
    their scale as T changes (Hinton et al. 2015)."""
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student_logits.float() / t, 1),
            F.log_softmax(teacher_logits.float() / t, 1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )
