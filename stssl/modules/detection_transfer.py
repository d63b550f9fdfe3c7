"""Detection transfer: torchvision's FCOS on the dense pyramid of any stssl encoder, scored by COCO mAP.

torchvision detectors take a list of ``(C, H, W)`` images and run a :class:`GeneralizedRCNNTransform` (normalise,
resize, pad into a batch) before the backbone. Here each clip's frames are folded into the channels,
``(3, T, H, W) -> (3 * T, H, W)``, so the detector's own machinery carries the whole clip to the backbone:

- :class:`ClipTransform` is that transform with resizing disabled (clips arrive at the size the boxes are in) and
  one mean/std for every folded channel; it still pads the batch to a multiple of ``size_divisible``.
- :class:`PyramidBackbone` unfolds the clip, runs the encoder and takes the **last** time step of the chosen
  pyramid stages (as :class:`~stssl.modules.dense_transfer.SegmentationTransfer` does: the labelled frame is the
  last, the frames before it are context), then a :class:`torchvision.ops.FeaturePyramidNetwork`.
- :class:`DetectionTransfer` is the LightningModule: FCOS (no pretrained weights) with one anchor per location of
  the backbone's stride (FCOS's scale ranges follow), AdamW + cosine, ``train/loss`` (+ FCOS's three terms), and
  ``val|test/map``, ``map_50``, ``map_75`` from :class:`torchmetrics.detection.MeanAveragePrecision`
  (pycocotools); :attr:`DetectionTransfer.last_metrics` keeps the last evaluation's full COCO summary.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from einops import rearrange
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.modules.dense_transfer import TransferHooks
from stssl.types import EncoderSpec

__all__ = ["ClipTransform", "DetectionTransfer", "PyramidBackbone", "default_stages"]

_EXTRA_LEVELS = ("none", "pool", "p6p7")


def default_stages(spec: EncoderSpec, min_stride: int = 8) -> tuple[int, ...]:
    """The pyramid stages a detector uses by default: the deepest stage of each spatial stride ``>= min_stride``.

    (FCOS and RetinaNet start at stride 8.) Encoders with one stride throughout (ViTs) give one stage; an
    encoder without any stage that coarse gives its deepest stage.

    Example:
        >>> spec = EncoderSpec(channels=(8, 16, 32, 64), strides=((1, 4, 4), (1, 8, 8), (2, 8, 8), (2, 16, 16)))
        >>> default_stages(spec)
        (2, 3)
    """
    deepest: dict[int, int] = {}
    for i, stride in enumerate(spec.strides):
        if stride[1] >= min_stride:
            deepest[stride[1]] = i
    return tuple(sorted(deepest.values())) or (len(spec.channels) - 1,)


class ClipTransform(GeneralizedRCNNTransform):
    """:class:`GeneralizedRCNNTransform` for clips folded into channels: normalises and pads, never resizes.

    Images are ``(3 * T, H, W)`` float; one ``mean``/``std`` applies to every channel. Boxes stay as given (they
    are already at the clip's size), so :meth:`postprocess` returns detections in the input's pixels.

    Args:
        mean / std: ``(x - mean) / std`` on every folded channel (``0, 1``: frames stay in ``[0, 1]``).
        size_divisible: the batch is zero-padded (right and bottom) to a multiple of this.
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0, size_divisible: int = 32) -> None:
        super().__init__(min_size=1, max_size=1, image_mean=[float(mean)], image_std=[float(std)],
                         size_divisible=int(size_divisible))

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return image, target

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(mean={self.image_mean[0]}, std={self.image_std[0]}, "
                f"size_divisible={self.size_divisible}, no resize)")


class PyramidBackbone(nn.Module):
    """An stssl encoder as a torchvision detection backbone: last time step of pyramid stages + FPN.

    Args:
        encoder: any :class:`~stssl.encoders.Encoder`.
        stages: pyramid stage indices, shallow to deep (default :func:`default_stages`).
        out_channels: FPN width (torchvision heads read :attr:`out_channels`; FCOS's GroupNorm needs a multiple
            of 32).
        extra_levels: ``"none"``, ``"pool"`` (a max-pooled level on top) or ``"p6p7"`` (RetinaNet/FCOS's two
            strided-conv levels).
        freeze_encoder: fix the encoder: no gradients, no graph (``torch.no_grad``), BatchNorm kept in eval mode.

    Shape:
        - input: ``(B, 3 * T, H, W)`` (a clip folded by ``"b c t h w -> b (c t) h w"``, as :class:`ClipTransform`
          passes it) or ``(B, 3, T, H, W)``.
        - output: ``OrderedDict`` of ``(B, out_channels, H / s, W / s)``, one per level of :attr:`strides`.

    Example:
        >>> from stssl.encoders import build_encoder
        >>> backbone = PyramidBackbone(build_encoder("resnet18_2d_tiny"), out_channels=32)
        >>> backbone.strides
        (8, 16, 32)
        >>> [tuple(f.shape) for f in backbone(torch.rand(1, 3 * 2, 64, 96)).values()]
        [(1, 32, 8, 12), (1, 32, 4, 6), (1, 32, 2, 3)]
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        stages: Sequence[int] | None = None,
        out_channels: int = 64,
        extra_levels: str = "none",
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        spec = encoder.spec
        chosen = default_stages(spec) if stages is None else tuple(int(s) for s in stages)
        if not chosen or any(not 0 <= s < len(spec.channels) for s in chosen) or list(chosen) != sorted(set(chosen)):
            raise ValueError(
                f"PyramidBackbone: stages must be increasing indices of the {len(spec.channels)} pyramid stages, "
                f"got {list(chosen)}"
            )
        if extra_levels not in _EXTRA_LEVELS:
            raise ValueError(f"PyramidBackbone: extra_levels must be one of {_EXTRA_LEVELS}, got {extra_levels!r}")
        if out_channels < 1:
            raise ValueError(f"PyramidBackbone: out_channels must be >= 1, got {out_channels}")
        self.encoder = encoder
        self.stages = chosen
        self.out_channels = int(out_channels)
        self.freeze_encoder = bool(freeze_encoder)
        extra: ExtraFPNBlock | None = None
        strides = [int(spec.strides[s][1]) for s in chosen]
        if extra_levels == "pool":
            extra = LastLevelMaxPool()
            strides.append(strides[-1] * 2)
        elif extra_levels == "p6p7":
            extra = LastLevelP6P7(self.out_channels, self.out_channels)
            strides += [strides[-1] * 2, strides[-1] * 4]
        #: spatial stride of each output level (FCOS's anchor sizes)
        self.strides = tuple(strides)
        self.fpn = FeaturePyramidNetwork([spec.channels[s] for s in chosen], self.out_channels, extra_blocks=extra)
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> PyramidBackbone:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # a frozen encoder keeps its BatchNorm statistics
        return self

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        C = self.encoder.spec.in_channels
        if images.ndim == 4:
            if images.shape[1] % C:
                raise ValueError(
                    f"PyramidBackbone: input has {images.shape[1]} channels, expected a multiple of {C} "
                    "(a clip folded as b (c t) h w)"
                )
            video = rearrange(images, "b (c t) h w -> b c t h w", c=C)
        else:
            check_shape(images, f"B {C} T H W", name="PyramidBackbone input")
            video = images
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            pyramid = self.encoder(video).pyramid
        last = OrderedDict((str(i), pyramid[s][:, :, -1]) for i, s in enumerate(self.stages))
        return self.fpn(last)


class DetectionTransfer(TransferHooks):
    """FCOS over an stssl encoder's pyramid, detecting in the last frame of each clip.

    Args:
        encoder: any :class:`~stssl.encoders.Encoder` (pretrained weights loaded, or a random init for scratch).
        num_classes: FCOS's classes **including background** (label 0, never a target): ``categories + 1``.
        class_names: the ``num_classes - 1`` category names of labels ``1..`` (per-class AP is reported when there
            are several).
        freeze_encoder: keep the encoder fixed (evaluation mode, no gradients) and train only the FPN and head.
        lr: AdamW learning rate of the FPN and head.
        encoder_lr_scale: the encoder's learning rate is ``lr * encoder_lr_scale`` when fine-tuned.
        weight_decay: AdamW weight decay.
        normalize: ``(mean, std)`` applied to the ``[0, 1]`` frames (:class:`ClipTransform`), as in the encoder's
            pretraining; ``None`` keeps ``[0, 1]``.
        stages / fpn_channels / extra_levels: :class:`PyramidBackbone`'s ``stages``, ``out_channels``,
            ``extra_levels``.
        score_thresh / nms_thresh / detections_per_img: FCOS post-processing (a low score threshold gives COCO
            mAP its whole precision-recall curve).
        center_sampling_radius: FCOS's positive-sample radius, in strides.
        size_divisible: batches are padded to a multiple of this.
        max_steps: when set, the learning rate decays by a cosine to 0 over this many steps.
        warmup_steps: linear learning-rate warm-up steps (:func:`~stssl.modules.dense_transfer.transfer_optimizer`).

    Batches (:func:`~stssl.data.box_clips.collate_boxes`): ``{"video": uint8 or float (B, 3, T, H, W), "boxes":
    [float (N_i, 4) xyxy pixels], "labels": [int64 (N_i,) in 1..num_classes - 1], "iscrowd": optional [bool
    (N_i,)]}``; ``iscrowd`` boxes are not trained on and are ignored by the mAP.
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
        normalize: tuple[float, float] | None = None,
        stages: Sequence[int] | None = None,
        fpn_channels: int = 64,
        extra_levels: str = "none",
        score_thresh: float = 0.05,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        center_sampling_radius: float = 1.5,
        size_divisible: int = 32,
        max_steps: int | None = None,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"DetectionTransfer: num_classes (background included) must be >= 2, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes - 1:
            raise ValueError(
                f"DetectionTransfer: class_names has {len(class_names)} names; expected num_classes - 1 = "
                f"{num_classes - 1} (background has none)"
            )
        if normalize is not None and (len(normalize) != 2 or float(normalize[1]) <= 0):
            raise ValueError(f"DetectionTransfer: normalize must be (mean, std) with std > 0, got {normalize}")
        if fpn_channels % 32:
            raise ValueError(f"DetectionTransfer: fpn_channels must be a multiple of 32 (FCOS's GroupNorm), got {fpn_channels}")
        self.save_hyperparameters(ignore=["encoder"])
        backbone = PyramidBackbone(encoder, stages=stages, out_channels=fpn_channels, extra_levels=extra_levels,
                                   freeze_encoder=freeze_encoder)
        anchors = AnchorGenerator(tuple((s,) for s in backbone.strides), ((1.0,),) * len(backbone.strides))
        self.detector = FCOS(backbone, num_classes, anchor_generator=anchors, score_thresh=score_thresh,
                             nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                             center_sampling_radius=center_sampling_radius)
        mean, std = normalize if normalize is not None else (0.0, 1.0)
        self.detector.transform = ClipTransform(float(mean), float(std), size_divisible)
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(1, num_classes)]
        self.freeze_encoder = bool(freeze_encoder)
        self.metrics = nn.ModuleDict({
            stage: MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=num_classes > 2)
            for stage in ("val", "test")
        })
        self.last_metrics: dict[str, Any] = {}

    @property
    def backbone(self) -> PyramidBackbone:
        return self.detector.backbone  # type: ignore[return-value]

    @property
    def encoder(self) -> Encoder:
        return self.backbone.encoder

    def _images(self, video: torch.Tensor) -> list[torch.Tensor]:
        check_shape(video, "B 3 T H W", name="DetectionTransfer video")
        x = video.float() / 255.0 if video.dtype == torch.uint8 else video.float()
        return list(rearrange(x, "b c t h w -> b (c t) h w").unbind(0))

    def forward(
        self, video: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """FCOS on ``(B, 3, T, H, W)`` clips: in training mode the loss terms for ``targets``; in evaluation mode
        one ``{"boxes" (K, 4) xyxy pixels, "scores" (K,), "labels" (K,) in 1..num_classes - 1}`` per clip (its last
        frame). FCOS scores every class by a sigmoid, background included (its logit is never a target), so
        background detections are dropped here."""
        out = self.detector(self._images(video), targets)
        if isinstance(out, dict):
            return out
        return [{key: value[det["labels"] > 0] for key, value in det.items()} for det in out]

    @staticmethod
    def _targets(batch: dict, *, with_crowd: bool) -> list[dict[str, torch.Tensor]]:
        crowds = batch.get("iscrowd") or [torch.zeros(len(b), dtype=torch.bool, device=b.device) for b in batch["boxes"]]
        if not len(batch["boxes"]) == len(batch["labels"]) == len(crowds) == len(batch["video"]):
            raise ValueError("DetectionTransfer: batch boxes, labels and iscrowd need one entry per clip")
        targets = []
        for boxes, labels, crowd in zip(batch["boxes"], batch["labels"], crowds, strict=True):
            check_shape(boxes, "N 4", name="DetectionTransfer boxes")
            crowd = crowd.bool()
            if with_crowd:
                targets.append({"boxes": boxes.float(), "labels": labels.long(), "iscrowd": crowd.long()})
            else:
                targets.append({"boxes": boxes[~crowd].float(), "labels": labels[~crowd].long()})
        return targets

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self(batch["video"], self._targets(batch, with_crowd=False))
        assert isinstance(losses, dict)
        loss = torch.stack(list(losses.values())).sum()
        B = len(batch["video"])
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=B)
        for key, value in losses.items():
            self.log(f"train/{key}", value.detach(), on_step=True, on_epoch=True, batch_size=B)
        return loss

    def _metric(self, stage: str) -> MeanAveragePrecision:
        metric = self.metrics[stage]
        assert isinstance(metric, MeanAveragePrecision)
        return metric

    def _eval_step(self, batch: dict, stage: str) -> None:
        preds = self(batch["video"])
        self._metric(stage).update(preds, self._targets(batch, with_crowd=True))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_end(self, stage: str) -> None:
        metric = self._metric(stage)
        if self.trainer.sanity_checking or not metric.update_called:
            metric.reset()
            return
        raw = metric.compute()  # all ranks' detections (torchmetrics syncs)
        metric.reset()
        result: dict[str, Any] = {k: float(v) for k, v in raw.items()
                                  if v.numel() == 1 and k != "classes" and not k.endswith("_per_class")}
        if "map_per_class" in raw and raw["map_per_class"].numel() > 1:
            for label, ap in zip(raw["classes"].tolist(), raw["map_per_class"].tolist(), strict=True):
                result[f"ap/{self.class_names[int(label) - 1]}"] = float(ap)
        for key in ("map", "map_50", "map_75"):
            self.log(f"{stage}/{key}", result[key])
        self.last_metrics = result
