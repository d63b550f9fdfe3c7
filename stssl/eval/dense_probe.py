"""Frozen dense probes: per-pixel linear and kNN semantic segmentation on an encoder's frozen feature maps.

The clip-level probes (:mod:`stssl.eval.probe`) ask what a pooled vector knows; this asks what every location of a
feature map knows, without training the encoder or a decoder — the linear segmentation probe of DINO (Caron et al.
2021), STEGO and Leopart, with a kNN twin. The appearance pretexts (jigsaw, relative position, colorization,
inpainting) and the dense objectives are meant to teach exactly this, while a clip-level motion probe cannot see it.

How it scores (:class:`DenseProbeProtocol`):

1. The frozen encoder (BatchNorm statistics recalibrated on the train clips first, as the clip probe does) maps
   each labelled clip to the last time step of one pyramid ``stage``: ``(D, h, w)`` per labelled frame
   (:func:`frame_feature_maps`).
2. ``train_pixels`` pixels of the train masks are drawn at random (:func:`sample_pixels`); their features are the
   maps bilinearly upsampled to the mask (:func:`pixel_features`).
3. Linear: a multinomial logistic regression (:func:`~stssl.eval.probe.fit_linear_classifier`, L-BFGS) on them.
   Test logits are computed on the feature grid and bilinearly upsampled to the mask — exactly the logits of the
   upsampled features, because the standardised linear map is affine and bilinear weights sum to 1 — and every
   test pixel is scored (mIoU, pixel accuracy, per-class IoU; :class:`~stssl.eval.segmentation.SegmentationMeter`).
4. kNN: ``knn_train_pixels`` random train pixels (a draw of their own) vote (cosine, ``k``, temperature) for
   ``knn_test_pixels`` random test pixels (an unbiased sample of the test confusion matrix; scoring every pixel
   would cost ``test pixels x train pixels x D``).

Example:
    >>> feats = torch.arange(8.0).reshape(1, 2, 2, 2)  # (N, D, h, w)
    >>> masks = torch.zeros(1, 4, 4, dtype=torch.long)
    >>> frame, y, x = sample_pixels(masks, 3, seed=0)
    >>> pixel_features(feats, masks.shape[-2:], frame, y, x).shape
    torch.Size([3, 2])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.eval.probe import pyramid_level, scaled_video
from stssl.eval.protocols import EncoderFactory, Protocol, WorldSplit, stride8_stage

__all__ = ["DenseProbeProtocol", "frame_feature_maps", "pixel_features", "sample_pixels"]


@torch.no_grad()
def frame_feature_maps(
    encoder: Encoder,
    loader: Iterable[Mapping[str, Any]],
    *,
    stage: int = -1,
    normalize: tuple[float, float] | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen ``encoder``'s map of every labelled frame, and the frames' masks.

    Args:
        encoder: any encoder; it runs in eval mode without gradients (its mode is restored afterwards).
        loader: yields dicts with ``video`` ``(B, C, T, H, W)`` (uint8 is divided by 255) whose **last** frame is
            the labelled one, and ``mask`` ``(B, H, W)`` int class indices.
        stage: the ``pyramid`` level (negative counts from the last); its last time step is the frame's map.
        normalize: ``(mean, std)`` applied to ``[0, 1]`` frames (the encoder's pretraining input), or ``None``.
        device: where the encoder runs (default: where its parameters are).

    Returns:
        float32 ``(N, D, h, w)`` maps and int64 ``(N, H, W)`` masks, on the CPU.

    Raises:
        ValueError: a batch without ``mask``, a ``stage`` outside the pyramid, or an empty loader.
    """
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    maps: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    try:
        for i, batch in enumerate(loader):
            if "mask" not in batch:
                raise ValueError(f"frame_feature_maps: batch {i} has no 'mask' (keys {sorted(batch)}); "
                                 "a dense probe needs per-pixel labels")
            video = batch["video"]
            sizes = check_shape(video, "B C T H W", name=f"frame_feature_maps: batch {i} ['video']")
            check_shape(batch["mask"], "B H W", sizes, name=f"frame_feature_maps: batch {i} ['mask']")
            pyramid = encoder(scaled_video(video.to(device), normalize)).pyramid
            maps.append(pyramid_level(pyramid, stage, "frame_feature_maps")[:, :, -1].float().cpu())
            masks.append(torch.as_tensor(batch["mask"]).to(torch.int64).cpu())
    finally:
        encoder.train(was_training)
    if not maps:
        raise ValueError("frame_feature_maps: the loader gave no batches")
    return torch.cat(maps), torch.cat(masks)


def sample_pixels(
    masks: torch.Tensor, count: int, *, ignore_index: int | None = 255, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` distinct random pixels of ``masks`` ``(N, H, W)`` whose label is not ``ignore_index``
    (all of them when fewer are left): int64 ``(frame, row, column)`` index vectors, sorted by frame."""
    check_shape(masks, "N H W", name="sample_pixels: masks")
    if count < 1:
        raise ValueError(f"sample_pixels: count must be >= 1, got {count}")
    flat = masks.reshape(-1)
    kept = torch.arange(flat.numel()) if ignore_index is None else (flat != ignore_index).nonzero().squeeze(1)
    if kept.numel() == 0:
        raise ValueError(f"sample_pixels: every pixel of the {masks.shape[0]} masks is ignore_index={ignore_index}")
    if kept.numel() > count:
        pick = torch.randperm(kept.numel(), generator=torch.Generator().manual_seed(seed))[:count]
        kept = kept[pick.sort().values]
    h, w = masks.shape[-2:]
    return kept // (h * w), (kept // w) % h, kept % w


def pixel_features(
    maps: torch.Tensor, size: Sequence[int], frame: torch.Tensor, y: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """Features ``(P, D)`` at pixels ``(frame, y, x)`` of ``size`` ``(H, W)`` masks: the maps ``(N, D, h, w)``
    bilinearly upsampled to ``size`` (``align_corners=False``), one frame at a time."""
    check_shape(maps, "N D h w", name="pixel_features: maps")
    out = maps.new_empty(len(frame), maps.shape[1])
    for n in frame.unique().tolist():
        rows = (frame == n).nonzero().squeeze(1)
        up = F.interpolate(maps[n : n + 1], size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)[0]
        out[rows] = up[:, y[rows], x[rows]].T
    return out


class DenseProbeProtocol(Protocol):
    """Frozen per-pixel linear and kNN segmentation probes of one pyramid stage (see the module docstring).

    Args:
        split: world scenes (default: driving, train seeds 0-3, test seeds 1000-1001, 64 frames at 96x288).
        size: ``(H, W)`` of the frames and masks (masks by nearest neighbour).
        clip_len / frame_stride: frames per clip, the labelled frame last (1 for frame encoders; a 3D CNN's
            context, e.g. 4).
        frame_step: every how many world frames one is labelled, in train and test scenes (consecutive frames
            are near copies; a Cityscapes tree serves its annotated images).
        stage: the pyramid level probed (``None``: the one whose spatial stride is closest to 8; negative counts
            from the last).
        train_pixels: pixels drawn from the train masks to fit the linear probe.
        knn_train_pixels / knn_test_pixels: the kNN's reference pixels (drawn from the train masks) and the test
            pixels it scores.
        k / temperature: kNN votes.
        epochs / weight_decay: the linear probe's L-BFGS iterations and L2.
        bn_recalibrate: recompute BatchNorm statistics on the train clips first (fair to random init).
        batch_size: clips per encoder call.
        normalize: ``(mean, std)`` of the encoder's pretraining input, or ``None`` (``[0, 1]`` frames).
        ignore_index: mask value that is neither trained on nor scored.
        seed: the pixel draws and the linear probe's initial weights.
        cityscapes_root: a Cityscapes-style tree to use instead of the world (``train`` / ``val``, 19 classes).
    """

    name = "dense_probe"

    def __init__(
        self,
        split: WorldSplit | None = None,
        size: tuple[int, int] = (64, 192),
        clip_len: int = 1,
        frame_stride: int = 1,
        frame_step: int = 4,
        stage: int | None = None,
        train_pixels: int = 40000,
        knn_train_pixels: int = 20000,
        knn_test_pixels: int = 50000,
        k: int = 20,
        temperature: float = 0.07,
        epochs: int = 100,
        weight_decay: float = 1e-3,
        bn_recalibrate: bool = True,
        batch_size: int = 8,
        normalize: tuple[float, float] | None = None,
        ignore_index: int = 255,
        seed: int = 0,
        cityscapes_root: str | None = None,
    ) -> None:
        counts = {"clip_len": clip_len, "frame_stride": frame_stride, "frame_step": frame_step,
                  "train_pixels": train_pixels, "knn_train_pixels": knn_train_pixels,
                  "knn_test_pixels": knn_test_pixels, "k": k, "epochs": epochs, "batch_size": batch_size}
        bad = {key: v for key, v in counts.items() if int(v) < 1}
        if bad:
            raise ValueError(f"DenseProbeProtocol: {bad} must be >= 1")
        if temperature <= 0:
            raise ValueError(f"DenseProbeProtocol: temperature must be > 0, got {temperature}")
        self.split = split or WorldSplit(test_seeds=(1000, 1001))
        self.size = (int(size[0]), int(size[1]))
        self.clip_len, self.frame_stride, self.frame_step = int(clip_len), int(frame_stride), int(frame_step)
        self.stage = None if stage is None else int(stage)
        self.train_pixels, self.knn_train_pixels = int(train_pixels), int(knn_train_pixels)
        self.knn_test_pixels, self.k, self.temperature = int(knn_test_pixels), int(k), float(temperature)
        self.epochs, self.weight_decay, self.bn_recalibrate = int(epochs), float(weight_decay), bool(bn_recalibrate)
        self.batch_size, self.normalize, self.ignore_index = int(batch_size), normalize, int(ignore_index)
        self.seed, self.cityscapes_root = int(seed), cityscapes_root

    def data(self, split: str) -> Any:
        """The labelled clips of ``"train"`` or ``"test"`` (items with ``video`` and ``mask``)."""
        from stssl.data.labelled import CityscapesClips, SemanticClips

        kwargs: dict[str, Any] = dict(clip_len=self.clip_len, frame_stride=self.frame_stride, size=self.size)
        if self.cityscapes_root is not None:
            return CityscapesClips(self.cityscapes_root, {"train": "train", "test": "val"}[split], **kwargs)
        return SemanticClips(self.split.scenes(split), frames=range(0, self.split.frames, self.frame_step), **kwargs)

    def run(self, encoders: dict[str, EncoderFactory], out_dir: Path) -> dict[str, Any]:
        from stssl.eval.probe import fit_linear_classifier, knn_classify, recalibrate_batchnorm
        from stssl.eval.segmentation import SegmentationMeter

        train, test = self.data("train"), self.data("test")
        classes = list(train.classes)
        if list(test.classes) != classes:
            raise ValueError(f"DenseProbeProtocol: train classes {classes} differ from test classes {test.classes}")
        num_classes = len(classes)
        source = {"cityscapes_root": self.cityscapes_root} if self.cityscapes_root else self.split.describe()
        result: dict[str, Any] = {"classes": classes, "train_frames": len(train), "test_frames": len(test),
                                  "input_size": list(self.size), "clip_len": self.clip_len, **source}
        for name, make in encoders.items():
            encoder = make()
            stage = stride8_stage(encoder) if self.stage is None else self.stage
            train_loader = DataLoader(train, batch_size=self.batch_size)
            if self.bn_recalibrate:
                recalibrate_batchnorm(encoder, train_loader, normalize=self.normalize)
            train_maps, train_masks = frame_feature_maps(encoder, train_loader, stage=stage, normalize=self.normalize)
            test_maps, test_masks = frame_feature_maps(encoder, DataLoader(test, batch_size=self.batch_size),
                                                       stage=stage, normalize=self.normalize)
            size = train_masks.shape[-2:]
            picked = sample_pixels(train_masks, self.train_pixels, ignore_index=self.ignore_index, seed=self.seed)
            x = pixel_features(train_maps, size, *picked)
            y = train_masks[picked]
            probe = fit_linear_classifier(x, y, epochs=self.epochs, weight_decay=self.weight_decay,
                                          num_classes=num_classes, seed=self.seed)
            linear = SegmentationMeter(num_classes, self.ignore_index, classes)
            for start in range(0, len(test_maps), self.batch_size):
                logits = probe.logits_map(test_maps[start : start + self.batch_size])
                up = F.interpolate(logits, size=tuple(test_masks.shape[-2:]), mode="bilinear", align_corners=False)
                linear.update(up.argmax(1).cpu(), test_masks[start : start + self.batch_size])
            refs = sample_pixels(train_masks, self.knn_train_pixels, ignore_index=self.ignore_index,
                                 seed=self.seed + 1)
            queries = sample_pixels(test_masks, self.knn_test_pixels, ignore_index=self.ignore_index,
                                    seed=self.seed + 2)
            pred = knn_classify(pixel_features(train_maps, size, *refs), train_masks[refs],
                                pixel_features(test_maps, test_masks.shape[-2:], *queries),
                                k=self.k, temperature=self.temperature, num_classes=num_classes)
            knn = SegmentationMeter(num_classes, self.ignore_index, classes)
            knn.update(pred.cpu(), test_masks[queries])
            result[name] = {
                "stage": stage,
                "feature_size": list(train_maps.shape[-2:]),
                "linear": linear.compute(),
                "linear_train_loss": probe.loss,
                "knn": knn.compute(),
                "train_pixels": len(y),
                "knn_test_pixels": len(pred),
            }
        return result
