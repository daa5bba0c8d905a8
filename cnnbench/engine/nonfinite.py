"""train.on_nonfinite: an update whose loss is NaN or Inf on any rank never reaches the weights. skip: the
update is dropped, the batch-norm statistics its forward passes moved are put back, and it is counted in
faults.nonfinite_skipped_steps and logged; error: the run stops naming the step, with the weights from
before it.

Decided on the device where the optimizer can skip an update there (optimizer.fused, on a GPU by
default): torch's fused SGD, Adam and AdamW take a `found_inf` tensor and skip on the device, as the
GradScaler drives them. The flag is all-reduced there (NCCL with DDP), torch.where puts the statistics
back, and the host reads what happened at log intervals, before checkpoints and at the epoch's end, in
one transfer: no host sync a step. In error mode every update after a non-finite one is skipped too
until that read, so the run stops with the weights from before it. Elsewhere the flag is read every
update, before it: free on the CPU, one device sync a step on a GPU. That is other optimizers (timm's
own, Lookahead), fp16 (whose GradScaler reads its scale every update anyway) and fused SGD's first
update with momentum: skipping it, torch 2.14's kernel leaves the momentum buffers it makes as
`torch.empty_like` made them.
"""

import contextlib
import logging

import torch
import torch.distributed as dist

from cnnbench.errors import NonfiniteLoss

from .build import FUSED_OPTIMIZERS
from .distributed import Dist

log = logging.getLogger("cnnbench")


class NonfiniteGuard:
    """A run's train.on_nonfinite: per update, start_update, then on_device decides which of `deciding`
    (around the optimizer's step) or the host's read (skip_on_host where set) applies; `read` reports."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        on_nonfinite: str,
        ctx: Dist,
    ):
        self.model, self.optimizer, self.ctx = model, optimizer, ctx
        self.skip = on_nonfinite == "skip"
        self.fused = (
            isinstance(optimizer, FUSED_OPTIMIZERS)
            and not scaler.is_enabled()
            and all(group["fused"] for group in optimizer.param_groups)
        )
        self.momentum_ready = False  # fused SGD: every momentum buffer made by an update that ran
        self.saved_buffers: list[torch.Tensor] = []
        self.unread = []  # ((step, epoch, batch), flag, loss) of the updates decided on the device since the last read
        self.stopped = None  # error mode: 1 on the device from a non-finite update until the host reads it

    def start_update(self) -> None:
        """At an update's first micro-batch: the batch-norm statistics its forwards will move, should it be
        skipped."""
        if self.skip:
            self.saved_buffers = [b.clone() for b in self.model.buffers()]

    def on_device(self) -> bool:
        """Whether this update, its gradients made, is decided on the device."""
        if self.fused and not self.momentum_ready:
            self.momentum_ready = all(
                "momentum_buffer" in self.optimizer.state[p]
                for group in self.optimizer.param_groups
                if group.get("momentum")
                for p in group["params"]
                if p.grad is not None
            )
        return self.fused and self.momentum_ready

    @contextlib.contextmanager
    def deciding(self, nonfinite: torch.Tensor, loss: torch.Tensor, where: tuple[int, int, int]):
        """Around the optimizer's step: skipped by its kernel where the flag (any rank's) is set, the
        statistics put back, the outcome kept for the next read."""
        flag = nonfinite.float()
        if self.ctx.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # the default group: NCCL on GPUs, queued on the device
        found_inf = flag
        if not self.skip:
            self.stopped = found_inf = flag if self.stopped is None else torch.maximum(self.stopped, flag)
        self.optimizer.found_inf = found_inf
        try:
            yield
        finally:
            del self.optimizer.found_inf
        if self.saved_buffers:
            skipped = flag.bool()
            buffers = list(self.model.buffers())
            torch._foreach_copy_(
                buffers, [torch.where(skipped, saved, b) for saved, b in zip(self.saved_buffers, buffers)]
            )
        self.unread.append((where, flag, loss))

    def read(self, faults: dict) -> None:
        """The updates decided on the device since the last read, in one transfer: each skipped one
        counted and logged, or the run stopped at the first."""
        if not self.unread:
            return
        unread, self.unread = self.unread, []
        flags, losses = torch.stack(
            [torch.stack([flag.double() for _, flag, _ in unread]), torch.stack([loss for _, _, loss in unread])]
        ).tolist()
        for (where, _, _), flag, loss in zip(unread, flags, losses):
            if flag:
                self.nonfinite(loss, where, faults)

    def skip_on_host(self, loss: torch.Tensor, where: tuple[int, int, int], faults: dict) -> None:
        """An update whose flag the host read: never stepped, its statistics put back."""
        self.nonfinite(loss.item(), where, faults)
        torch._foreach_copy_(list(self.model.buffers()), self.saved_buffers)

    def nonfinite(self, loss: float, where: tuple[int, int, int], faults: dict) -> None:
        step, epoch, batch = where
        at = f"at step {step} (epoch {epoch}, batch {batch})"
        if not self.skip:
            log.error(
                message := f"train: loss {loss} {at}; the weights are kept from before it "
                f"(train.on_nonfinite=skip skips such steps)"
            )
            raise NonfiniteLoss(message)
        faults["nonfinite_skipped_steps"] += 1
        log.warning(f"train.on_nonfinite=skip: loss {loss} {at}, update skipped")
