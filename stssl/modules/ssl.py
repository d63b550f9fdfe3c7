"""SSLModule: one encoder trained by a weighted sum of pretext tasks. Thin by design: no algorithm logic."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import nn
from torch.utils.hooks import RemovableHandle

from stssl.encoders.base import Encoder
from stssl.seeding import seeded_generator
from stssl.tasks.base import PretextTask, TaskRequirements, merge_requirements

__all__ = ["SSLModule", "check_batch"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def _default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)


def check_batch(batch: dict, requires: TaskRequirements, *, what: str = "batch") -> None:
    """Check a batch against tasks' requirements, with an error that says what is missing and how to get it.

    Raises:
        ValueError: naming the key, the shape found and what the tasks need.
    """
    if "video" not in batch:
        raise ValueError(f"{what}: missing key 'video'; got keys {sorted(batch)}")
    video = batch["video"]
    if video.dim() != 5:
        raise ValueError(f"{what}['video']: expected shape (B, C, T, H, W), got {tuple(video.shape)}")
    if video.shape[2] < requires.min_frames:
        raise ValueError(
            f"{what}['video']: the tasks need at least {requires.min_frames} frames per clip, got shape "
            f"{tuple(video.shape)}; raise the data module's clip_len"
        )
    if requires.intrinsics and "K" not in batch:
        raise ValueError(f"{what}: the tasks need intrinsics 'K' (B, 3, 3) but the data has none; use sources with calibration")
    if requires.labels and "label" not in batch:
        raise ValueError(f"{what}: the tasks need 'label' but the data has none")
    if requires.index and "index" not in batch:
        raise ValueError(
            f"{what}: the tasks keep a memory per dataset item and need 'index' (B,) but the data has none; "
            "use stssl.data.ClipDataset (or add each clip's item index)"
        )


class SSLModule(L.LightningModule):
    """Train ``encoder`` with the weighted sum of ``tasks``.

    Args:
        encoder: any :class:`~stssl.encoders.Encoder`.
        tasks: pretext tasks; each carries its ``weight`` and ``name``. Names must be unique.
        optimizer: a callable from parameters to an optimizer (LightningCLI: ``--optimizer`` / YAML).
        scheduler: an optional callable from the optimizer to an LR scheduler (stepped per epoch).

    Logs ``train/loss`` and ``train/<task>/<metric>`` per step, ``val/<task>/<metric>`` per epoch.

    Label seeds: a training call draws from ``seeded_generator(task.seed, global_step, batch_idx, global_rank,
    task index)``, so every micro-batch of a gradient-accumulation window, every DDP rank and every task gets its
    own draw, and a rerun (or a resumed run) draws the same; validation and test use ``(task.seed, batch_idx,
    task index, stage)``, the same every epoch so their metrics compare.

    Optimizer steps: during ``fit`` a post-step hook on each of the trainer's optimizers calls every task's
    :meth:`~stssl.tasks.base.PretextTask.on_optimizer_step` once per step actually taken: once per accumulation
    window, not on an AMP step skipped for non-finite gradients (GradScaler does not call ``step``; for fused
    optimizers, which it does call, the hook reads their ``found_inf`` flag), and for no other optimizer in the
    process.
    """

    def __init__(
        self,
        encoder: Encoder,
        tasks: list[PretextTask],
        optimizer: OptimizerFactory = _default_optimizer,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        if _given_hyperparameters.get() is not None:
            self.save_hyperparameters()  # LightningCLI: stores the config, so load_from_checkpoint rebuilds all
        else:
            self.save_hyperparameters(ignore=["encoder", "tasks", "optimizer", "scheduler"])
        if not tasks:
            raise ValueError("SSLModule: tasks is empty; give at least one PretextTask")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"SSLModule: task names must be unique, got {names}; set name= on the duplicates")
        self.encoder = encoder
        self.tasks = nn.ModuleList(tasks)
        for task in tasks:
            task.build(encoder.spec)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self._checked = False
        self._step_hooks: list[RemovableHandle] = []

    @property
    def requires(self) -> TaskRequirements:
        return merge_requirements([t.requires for t in self.tasks])  # type: ignore[misc]

    def _run_tasks(self, batch: dict, stage: str, batch_idx: int) -> torch.Tensor:
        if not self._checked:
            check_batch(batch, self.requires, what=f"{stage} batch")
            self._checked = True
        train = stage == "train"
        total = batch["video"].new_zeros(())
        bsz = batch["video"].shape[0]
        tasks: list[PretextTask] = list(self.tasks)  # type: ignore[arg-type]
        for i, task in enumerate(tasks):
            # Seeds (see the class docstring): per step, micro-batch, rank and task in training; fixed per batch in
            # validation and test, so their metrics compare across epochs.
            if stage == "train":
                gen = seeded_generator(task.seed, self.global_step, batch_idx, self.global_rank, i)
            else:
                gen = seeded_generator(task.seed, batch_idx, i, len(stage))
            out = task(batch, self.encoder, generator=gen)
            if not torch.isfinite(out.loss):
                raise FloatingPointError(f"{stage}: task {task.name!r} gave a non-finite loss {out.loss.item()}")
            total = total + task.weight * out.loss
            for key, value in out.logs.items():
                self.log(f"{stage}/{task.name}/{key}", value, batch_size=bsz, prog_bar=(key == "acc"),
                         on_step=train, on_epoch=True, sync_dist=not train)
        self.log(f"{stage}/loss", total.detach(), batch_size=bsz, prog_bar=True, on_step=train, on_epoch=True,
                 sync_dist=not train)
        return total

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._run_tasks(batch, "train", batch_idx)

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._run_tasks(batch, "val", batch_idx)

    def test_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._run_tasks(batch, "test", batch_idx)

    # -- once per optimizer step ----------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        self._remove_step_hooks()
        tasks: list[PretextTask] = list(self.tasks)  # type: ignore[arg-type]
        if all(type(t).on_optimizer_step is PretextTask.on_optimizer_step for t in tasks):
            return  # no task keeps per-step state: nothing to hook
        for optimizer in self.trainer.optimizers:
            register = getattr(optimizer, "register_step_post_hook", None)
            if register is None:
                raise TypeError(
                    f"SSLModule: optimizer {type(optimizer).__name__} has no register_step_post_hook; tasks' "
                    "on_optimizer_step needs a torch.optim.Optimizer"
                )
            self._step_hooks.append(register(self._after_optimizer_step))

    def on_train_end(self) -> None:
        self._remove_step_hooks()

    def _remove_step_hooks(self) -> None:
        for handle in self._step_hooks:
            handle.remove()
        self._step_hooks.clear()

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        # GradScaler skips step() on non-finite gradients, except for fused optimizers, which it calls with
        # `found_inf` set so that they skip on the device; read it then (one sync per step, fused + fp16 only).
        found_inf = getattr(optimizer, "found_inf", None)
        if isinstance(found_inf, torch.Tensor) and bool(found_inf.item()):
            return
        self.on_optimizer_step()

    def on_optimizer_step(self) -> None:
        """Call every task's :meth:`~stssl.tasks.base.PretextTask.on_optimizer_step` (the fit hook does, once per
        optimizer step taken; call it yourself when stepping this module's optimizer outside ``Trainer.fit``)."""
        for task in self.tasks:
            task.on_optimizer_step(self.encoder)  # type: ignore[operator]

    def configure_optimizers(self):  # type: ignore[override]
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
