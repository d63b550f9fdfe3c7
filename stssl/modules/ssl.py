"""SSLModule: one encoder trained by a weighted sum of pretext tasks. Thin by design: no algorithm logic."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning as L
import torch
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import nn

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


class SSLModule(L.LightningModule):
    """Train ``encoder`` with the weighted sum of ``tasks``.

    Args:
        encoder: any :class:`~stssl.encoders.Encoder`.
        tasks: pretext tasks; each carries its ``weight`` and ``name``. Names must be unique.
        optimizer: a callable from parameters to an optimizer (LightningCLI: ``--optimizer`` / YAML).
        scheduler: an optional callable from the optimizer to an LR scheduler (stepped per epoch).

    Logs ``train/loss`` and ``train/<task>/<metric>`` per step, ``val/<task>/<metric>`` per epoch.
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
            # Labels are seeded from (task seed, step, rank): reproducible, resumable, different per DDP rank;
            # validation uses fixed labels per batch so its metrics compare across epochs.
            if stage == "train":
                gen = seeded_generator(task.seed, self.global_step, self.global_rank, i)
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

    def configure_optimizers(self):  # type: ignore[override]
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
