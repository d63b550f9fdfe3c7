"""The detection protocol of ``stssl-eval``: FCOS transfer at several label fractions, COCO mAP per fraction.

:class:`DetectionProtocol` is a :class:`~stssl.eval.protocols.TransferProtocol`, like segmentation: for each encoder
factory and label fraction, a fresh encoder + :class:`~stssl.modules.detection_transfer.DetectionTransfer` trains
for the same number of steps on the same labelled frames, and is scored on every frame of the test scenes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from stssl.encoders.base import Encoder
from stssl.eval.protocols import TransferProtocol, WorldSplit

__all__ = ["DetectionProtocol"]


class DetectionProtocol(TransferProtocol):
    """Object detection transfer (FCOS on the encoder's pyramid) at several label fractions.

    A :class:`~stssl.eval.protocols.TransferProtocol` whose head is
    :class:`~stssl.modules.detection_transfer.DetectionTransfer` (frames without boxes are negatives), scored on
    every frame of the test scenes with COCO mAP (``map``,
    ``map_50``, ``map_75``, ``map_small``, ..., ``mar_100``). Boxes smaller than ``min_box_size`` served pixels are
    ignored in training and evaluation (COCO ``iscrowd``), see :class:`~stssl.data.box_clips.BoxClips`. Writes
    ``detection_efficiency.png`` (test mAP against the labelled fraction).

    Args:
        split: world scenes with ``boxes.json`` (default: driving, train seeds 0-3, test seed 1000, 64 frames).
        size: ``(H, W)`` frames are resized to (boxes are scaled with them).
        clip_len / frame_stride: frames per clip (the labelled frame is the last) — ``1`` for frame encoders.
        label_fractions: fractions of the train frames that are labelled.
        max_steps / batch_size / lr / encoder_lr_scale / weight_decay: training (AdamW, cosine decay).
        freeze_encoder: train only the FPN and head (a frozen detection probe) instead of fine-tuning.
        normalize: ``(mean, std)`` of the encoder's pretraining input (``None`` = ``[0, 1]`` frames).
        stages / fpn_channels / extra_levels: the detector's pyramid
            (:class:`~stssl.modules.detection_transfer.PyramidBackbone`).
        min_box_size: boxes with a side below this (served pixels) are ignored.
        eval_every: evaluate every N-th frame of the test scenes only (1 = all frames).
        seed: seeds the detector, label selection and the batch order.
        num_workers: data loader workers.
        warmup_steps: linear learning-rate warm-up steps. FCOS needs a few (its reference schedules warm up too):
            without, the R3D tiny preset from a random init (seed 0) stalls at 100 % of the world's labels (loss
            1.17, mAP 0.033); 30 steps of warm-up: loss 0.82, mAP 0.165.
    """

    name = "detection"
    metric, ylabel, curve_file = "map", "test mAP (COCO)", "detection_efficiency.png"

    def __init__(
        self,
        split: WorldSplit | None = None,
        size: tuple[int, int] = (64, 192),
        clip_len: int = 1,
        frame_stride: int = 1,
        label_fractions: Sequence[float] = (0.1, 1.0),
        max_steps: int = 300,
        batch_size: int = 8,
        lr: float = 1e-3,
        encoder_lr_scale: float = 1.0,
        weight_decay: float = 1e-4,
        freeze_encoder: bool = False,
        normalize: tuple[float, float] | None = None,
        stages: Sequence[int] | None = None,
        fpn_channels: int = 64,
        extra_levels: str = "none",
        min_box_size: float = 4.0,
        eval_every: int = 1,
        seed: int = 0,
        num_workers: int = 0,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(split, size, clip_len, frame_stride, label_fractions, max_steps, batch_size, lr,
                         encoder_lr_scale, weight_decay, freeze_encoder, normalize, eval_every, seed, num_workers,
                         warmup_steps)
        self.stages = None if stages is None else [int(s) for s in stages]
        self.fpn_channels, self.extra_levels, self.min_box_size = int(fpn_channels), extra_levels, float(min_box_size)

    def data(self, split: str, fraction: float = 1.0) -> Any:
        from stssl.data.box_clips import BoxClips

        return BoxClips(self.split.scenes(split), clip_len=self.clip_len, frame_stride=self.frame_stride,
                        size=self.size, label_fraction=fraction, seed=self.seed, min_box_size=self.min_box_size)

    def class_names(self, data: Any) -> list[str]:
        return list(data.categories)

    def collate(self) -> Callable | None:
        from stssl.data.box_clips import collate_boxes

        return collate_boxes

    def describe(self, test: Any) -> dict[str, Any]:
        return {"test_boxes": test.box_counts(), "min_box_size": self.min_box_size, **self.split.describe()}

    def make_model(self, encoder: Encoder, test: Any) -> Any:
        from stssl.modules.detection_transfer import DetectionTransfer

        categories = self.class_names(test)
        return DetectionTransfer(encoder, len(categories) + 1, class_names=categories, stages=self.stages,
                                 fpn_channels=self.fpn_channels, extra_levels=self.extra_levels, **self._head_kwargs())
