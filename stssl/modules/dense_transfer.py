"""Dense transfer: semantic segmentation with a light pyramid decoder over any stssl encoder.

:class:`SegmentationTransfer` puts :class:`~stssl.heads.dense.PyramidDecoder` (FPN-style: lateral 1x1 convs,
top-down upsampling and fusion) on the encoder's pyramid and trains it with per-pixel cross-entropy. It segments
the **last** frame of each clip: every pyramid stage's last time step is decoded, so a video encoder uses the
frames before the labelled one as context and a per-frame encoder (``clip_len = 1``) segments single frames.
The encoder is fine-tuned (``freeze_encoder=False``, the label-efficiency protocol) or frozen (evaluation mode,
no gradients: a probe of the dense features as they are).

Logs ``train/loss``, ``val/loss``, ``val/miou``, ``val/pixel_accuracy`` and ``val/mean_accuracy`` (and ``test/...``);
:attr:`last_metrics` keeps the last evaluation's :meth:`~stssl.eval.segmentation.SegmentationMeter.compute` (with
``iou/<class>``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.eval.segmentation import SegmentationMeter
from stssl.heads.dense import PyramidDecoder
from stssl.types import EncoderOutput

__all__ = ["SegmentationTransfer", "TransferHooks", "TransferModule", "transfer_optimizer"]


class TransferHooks(L.LightningModule):
    """The Lightning hooks every transfer module shares: ``_eval_end(stage)`` after each validation and test epoch,
    and :func:`transfer_optimizer` over ``self.encoder`` (frozen when ``self.freeze_encoder``) with the ``lr``,
    ``encoder_lr_scale``, ``weight_decay``, ``max_steps`` and ``warmup_steps`` hyperparameters."""

    freeze_encoder: bool

    def _eval_end(self, stage: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def configure_optimizers(self):  # type: ignore[override]
        return transfer_optimizer(self, self.encoder, freeze_encoder=self.freeze_encoder, **{
            k: self.hparams[k] for k in ("lr", "encoder_lr_scale", "weight_decay", "max_steps", "warmup_steps")})


class TransferModule(TransferHooks):
    """What the transfer heads share: an encoder fine-tuned or frozen (evaluation mode, no gradients), input
    scaling (uint8 / 255) and normalisation as in its pretraining, the optimizer (:func:`transfer_optimizer`),
    and per-stage evaluation ends. Subclasses call ``super().__init__`` after ``save_hyperparameters`` inputs are
    set, build their head and implement :meth:`_eval_end`.

    Args:
        encoder: any :class:`~stssl.encoders.Encoder`.
        freeze_encoder: keep the encoder fixed.
        normalize: ``(mean, std)`` applied to ``[0, 1]`` frames, or ``None``.
    """

    def __init__(self, encoder: Encoder, *, freeze_encoder: bool, normalize: tuple[float, float] | None) -> None:
        super().__init__()
        owner = type(self).__name__
        if normalize is not None and (len(normalize) != 2 or float(normalize[1]) <= 0):
            raise ValueError(f"{owner}: normalize must be (mean, std) with std > 0, got {normalize}")
        self.encoder = encoder
        self.freeze_encoder = bool(freeze_encoder)
        self.normalize = None if normalize is None else (float(normalize[0]), float(normalize[1]))
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)
        self.last_metrics: dict[str, Any] = {}

    def train(self, mode: bool = True) -> TransferModule:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # a frozen encoder keeps its BatchNorm statistics
        return self

    def encode(self, video: torch.Tensor) -> tuple[EncoderOutput, torch.Tensor]:
        """The encoder's output for ``(B, 3, T, H, W)`` clips (uint8 or float ``[0, 1]``), and the scaled input."""
        check_shape(video, "B 3 T H W", name=f"{type(self).__name__} video")
        x = video.float() / 255.0 if video.dtype == torch.uint8 else video.float()
        if self.normalize is not None:
            x = (x - self.normalize[0]) / self.normalize[1]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            return self.encoder(x), x


class SegmentationTransfer(TransferModule):
    """Encoder + :class:`~stssl.heads.dense.PyramidDecoder` segmenting the last frame of each clip.

    Args:
        encoder: any :class:`~stssl.encoders.Encoder` (pretrained weights loaded, or a random init for scratch).
        num_classes: ``K`` classes of the masks.
        class_names: names for the per-class IoU report (default ``class_<i>``).
        freeze_encoder: keep the encoder fixed (evaluation mode, no gradients) and train only the decoder.
        lr: AdamW learning rate of the decoder.
        encoder_lr_scale: the encoder's learning rate is ``lr * encoder_lr_scale`` when fine-tuned.
        weight_decay: AdamW weight decay.
        ignore_index: mask value excluded from the loss and the metrics.
        normalize: ``(mean, std)`` applied to the ``[0, 1]`` frames before the encoder, as in its pretraining
            (the depth task normalises with ``(0.45, 0.225)``; most pretext tasks feed ``[0, 1]``: ``None``).
        dec_channels: decoder width per encoder stage (default: half the encoder's channels, at least 8).
        max_steps: when set, the learning rate decays by a cosine to 0 over this many steps.
        warmup_steps: linear learning-rate warm-up steps (:func:`transfer_optimizer`).

    Batches: ``{"video": uint8 or float (B, 3, T, H, W), "mask": int64 (B, H, W)}`` (uint8 is divided by 255).
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
        ignore_index: int = 255,
        normalize: tuple[float, float] | None = None,
        dec_channels: Sequence[int] | None = None,
        max_steps: int | None = None,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(encoder, freeze_encoder=freeze_encoder, normalize=normalize)
        if num_classes < 2:
            raise ValueError(f"SegmentationTransfer: num_classes must be >= 2, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"SegmentationTransfer: class_names has {len(class_names)} names for num_classes={num_classes}"
            )
        self.save_hyperparameters(ignore=["encoder"])
        self.decoder = PyramidDecoder(encoder.spec.channels, out_channels=num_classes, dec_channels=dec_channels)
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
        self.ignore_index = int(ignore_index)
        self._meters: dict[str, SegmentationMeter] = {}

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, K, H, W)`` class logits of the last frame of each ``(B, 3, T, H, W)`` clip."""
        out, x = self.encode(video)
        pyramid = out.pyramid
        last = [p[:, :, -1:] for p in pyramid]  # the labelled frame is the last: decode each stage's last step
        return self.decoder(last, (1, x.shape[-2], x.shape[-1]))[:, :, 0]

    def _loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        mask = batch["mask"]
        check_shape(mask, "B H W", name="SegmentationTransfer mask")
        logits = self(batch["video"])
        if logits.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                f"SegmentationTransfer: mask is {tuple(mask.shape[-2:])} but the frames are {tuple(logits.shape[-2:])}"
            )
        loss = F.cross_entropy(logits, mask.long(), ignore_index=self.ignore_index)
        return loss, logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["mask"]))
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        loss, logits = self._loss(batch)
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=len(batch["mask"]), sync_dist=True)
        meter = self._meters.get(stage)
        if meter is None:
            meter = self._meters[stage] = SegmentationMeter(
                self.num_classes, ignore_index=self.ignore_index, class_names=self.class_names
            )
        meter.update(logits.argmax(dim=1), batch["mask"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_end(self, stage: str) -> None:
        meter = self._meters.pop(stage, None)
        if self.trainer.sanity_checking:
            return
        if meter is None or meter.confmat is None:  # a rank without batches still joins the reduce below
            meter = SegmentationMeter(self.num_classes, ignore_index=self.ignore_index, class_names=self.class_names)
            meter.confmat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=self.device)
        meter.confmat = self.trainer.strategy.reduce(meter.confmat, reduce_op="sum")  # all ranks' pixels
        result = meter.compute()
        for key in ("miou", "pixel_accuracy", "mean_accuracy"):
            self.log(f"{stage}/{key}", result[key])
        self.last_metrics = result


def transfer_optimizer(
    module: torch.nn.Module,
    encoder: torch.nn.Module,
    *,
    lr: float,
    encoder_lr_scale: float,
    weight_decay: float,
    max_steps: int | None,
    freeze_encoder: bool,
    warmup_steps: int = 0,
) -> Any:
    """AdamW over a transfer module: its head (every parameter outside ``encoder``) at ``lr``, the encoder at
    ``lr * encoder_lr_scale`` unless frozen; with ``max_steps`` a per-step cosine decay to 0, and with
    ``warmup_steps`` a linear ramp from ``lr / warmup_steps`` over the first steps (detection heads need it: an
    FCOS fine-tuning started at full rate can stall for good, see
    :class:`~stssl.eval.detection_protocol.DetectionProtocol`). Lightning's ``configure_optimizers`` format.

    Example:
        >>> head, enc = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        >>> module = torch.nn.ModuleDict({"head": head, "enc": enc})
        >>> out = transfer_optimizer(module, enc, lr=1.0, encoder_lr_scale=0.1, weight_decay=0.0, max_steps=10,
        ...                          freeze_encoder=False, warmup_steps=4)
        >>> sched = out["lr_scheduler"]["scheduler"]
        >>> rates = []
        >>> for _ in range(5):
        ...     rates.append(round(out["optimizer"].param_groups[0]["lr"], 3))
        ...     out["optimizer"].step(); sched.step()
        >>> rates  # steps 0-4: (step + 1) / 4 of the cosine, then the cosine alone
        [0.25, 0.488, 0.678, 0.794, 0.655]
        >>> out["optimizer"].param_groups[1]["lr"]  # the encoder's at step 5: 0.1 x cosine 0.5
        0.05
    """
    if warmup_steps < 0:
        raise ValueError(f"transfer_optimizer: warmup_steps must be >= 0, got {warmup_steps}")
    encoder_ids = {id(p) for p in encoder.parameters()}
    groups: list[dict[str, Any]] = [{"params": [p for p in module.parameters() if id(p) not in encoder_ids],
                                     "lr": float(lr)}]
    if not freeze_encoder:
        groups.append({"params": list(encoder.parameters()), "lr": float(lr) * float(encoder_lr_scale)})
    optimizer = torch.optim.AdamW(groups, lr=float(lr), weight_decay=float(weight_decay))
    if not max_steps and not warmup_steps:
        return optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    if not warmup_steps:
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(max_steps or 1))
    else:
        total = int(max_steps or 0)
        warm = min(int(warmup_steps), total) if total else int(warmup_steps)  # a short run warms up throughout

        def factor(step: int) -> float:
            cosine = 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total)) if total else 1.0
            return min(1.0, (step + 1) / warm) * cosine

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
