"""Full fine-tuning for clip classification: any stssl encoder + a linear layer on its pooled features.

:class:`ClassificationTransfer` trains the encoder end to end (or frozen: a linear probe trained by SGD) with
cross-entropy on labelled clips and reports accuracy and mean per-class accuracy; ``stssl-eval``'s
:class:`~stssl.eval.protocols.FinetuneProtocol` runs it at several label fractions for a pretrained and a
random-init encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stssl.encoders.base import Encoder
from stssl.modules.dense_transfer import TransferModule

__all__ = ["ClassificationTransfer"]


class ClassificationTransfer(TransferModule):
    """Encoder + dropout + linear classifier on the pooled features of each clip.

    Args:
        encoder: any :class:`~stssl.encoders.Encoder`.
        num_classes: ``K``.
        class_names: names for the report (default ``class_<i>``).
        freeze_encoder: keep the encoder fixed (evaluation mode, no gradients).
        lr / encoder_lr_scale / weight_decay / max_steps / warmup_steps:
            :func:`~stssl.modules.dense_transfer.transfer_optimizer`.
        dropout: before the classifier.
        normalize: ``(mean, std)`` applied to the ``[0, 1]`` frames, as in the encoder's pretraining, or ``None``.

    Batches: ``{"video": uint8 or float (B, 3, T, H, W), "label": int64 (B,)}``. :attr:`last_metrics` holds the last
    evaluation's ``acc`` and ``mean_class_acc``.
    """

    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        *,
        class_names: Sequence[str] | None = None,
        freeze_encoder: bool = False,
        lr: float = 1e-3,
        encoder_lr_scale: float = 1.0,
        weight_decay: float = 1e-4,
        max_steps: int | None = None,
        dropout: float = 0.0,
        normalize: tuple[float, float] | None = None,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(encoder, freeze_encoder=freeze_encoder, normalize=normalize)
        if num_classes < 2:
            raise ValueError(f"ClassificationTransfer: num_classes must be >= 2, got {num_classes}")
        self.save_hyperparameters(ignore=["encoder"])
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder.spec.dim, num_classes))
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
        self._confusion: dict[str, torch.Tensor] = {}

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` logits of ``(B, 3, T, H, W)`` clips (uint8 is divided by 255)."""
        return self.head(self.encode(video)[0].pooled)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["video"])
        loss = F.cross_entropy(logits, batch["label"])
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=len(logits))
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        logits = self(batch["video"])
        label = batch["label"].long()
        self.log(f"{stage}/loss", F.cross_entropy(logits, label), on_epoch=True, batch_size=len(logits),
                 sync_dist=True)
        index = label * self.num_classes + logits.argmax(1)
        counts = torch.bincount(index, minlength=self.num_classes**2).view(self.num_classes, self.num_classes)
        self._confusion[stage] = self._confusion.get(stage, torch.zeros_like(counts)) + counts

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_end(self, stage: str) -> None:
        confusion = self._confusion.pop(stage, None)
        if self.trainer.sanity_checking:
            return
        if confusion is None:  # a rank without batches still joins the reduce
            confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=self.device)
        confusion = self.trainer.strategy.reduce(confusion, reduce_op="sum").double()  # rows: true class
        support = confusion.sum(1)
        acc = float(confusion.diagonal().sum() / confusion.sum().clamp(min=1))
        recall = confusion.diagonal()[support > 0] / support[support > 0]
        mean_class = float(recall.mean()) if recall.numel() else float("nan")
        self.log(f"{stage}/acc", acc)
        self.log(f"{stage}/mean_class_acc", mean_class)
        self.last_metrics = {"acc": acc, "mean_class_acc": mean_class, "test_clips": int(confusion.sum())}
