"""Evaluation protocols of ``stssl-eval``: each one scores encoders and returns a JSON-able dict.

A protocol gets *encoder factories* — ``{"pretrained": make, "scratch": make}``, each call a fresh encoder (the
checkpoint's weights, or a random init of the same architecture) — and a run directory for its plots and
per-sample outputs. Protocols that train (:class:`TransferProtocol`: segmentation, detection, fine-tuning) train
one head per factory and label fraction, so pretrained and scratch see the same labels, steps and seeds.

- :class:`ProbeProtocol`: frozen kNN + linear probe on the world ego-motion task (:mod:`stssl.eval.world_tasks`) or
  class-per-folder video sets.
- :class:`~stssl.eval.dense_probe.DenseProbeProtocol`: frozen per-pixel linear + kNN segmentation probes of one
  pyramid stage (mIoU), on world scenes or a Cityscapes-style tree.
- :class:`FinetuneProtocol`: full fine-tuning (encoder + linear layer) on the same clip sets at label fractions.
- :class:`SegmentationProtocol`: semantic segmentation transfer (:class:`~stssl.modules.dense_transfer.
  SegmentationTransfer`) on world scenes or a Cityscapes-style tree, at several label fractions: mIoU per fraction
  and the label-efficiency curve (``label_efficiency.png``).
- :class:`~stssl.eval.detection_protocol.DetectionProtocol`: FCOS on the encoder's pyramid, COCO mAP per fraction.
- :class:`PropagationProtocol`: label propagation (DAVIS protocol, :func:`~stssl.eval.propagation.propagate_labels`)
  of the first frame's masks through DAVIS-2017 or held-out world sequences by frozen dense-feature affinity; J&F.
- :class:`DepthPoseProtocol`: the depth (Eigen) and pose (ATE) metrics of a depth + ego-motion checkpoint on
  scene folders (the full trained module is needed, not only its encoder).

World scenes are rendered once per (world, seed, size) into a cache (``root``, default ``$STSSL_CACHE`` or
``~/.cache/stssl/worlds``); train and test scenes come from disjoint seeds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from stssl.data.labelled import select_labelled
from stssl.encoders.base import Encoder

__all__ = [
    "DepthPoseProtocol",
    "EncoderFactory",
    "FinetuneProtocol",
    "PropagationProtocol",
    "Protocol",
    "ProbeProtocol",
    "SegmentationProtocol",
    "TransferProtocol",
    "WorldSplit",
    "clip_classification_sets",
    "dense_frame_features",
    "loss_summary",
    "stride8_stage",
    "plot_metric_curve",
]

logger = logging.getLogger(__name__)

#: Builds a fresh encoder (pretrained weights or a random init) on each call.
EncoderFactory = Callable[[], Encoder]


def _cache_root(root: str | None) -> Path:
    return Path(root or os.environ.get("STSSL_CACHE") or Path("~/.cache/stssl/worlds").expanduser())


class WorldSplit:
    """Train and test scenes of a rendered world, from disjoint seeds.

    Args:
        world: a name of :data:`stssl.worlds.WORLDS`.
        train_seeds / test_seeds: world seeds of each split (must not overlap).
        frames / height / width: rendered scene size.
        root: scene cache folder (default ``$STSSL_CACHE`` or ``~/.cache/stssl/worlds``).
    """

    def __init__(
        self,
        world: str = "driving",
        train_seeds: Sequence[int] = (0, 1, 2, 3),
        test_seeds: Sequence[int] = (1000,),
        frames: int = 64,
        height: int = 96,
        width: int = 288,
        root: str | None = None,
    ) -> None:
        shared = sorted(set(train_seeds) & set(test_seeds))
        if shared:
            raise ValueError(f"WorldSplit: seeds {shared} are in both train_seeds and test_seeds (scene leakage)")
        if not train_seeds or not test_seeds:
            raise ValueError(f"WorldSplit: train_seeds {list(train_seeds)} and test_seeds {list(test_seeds)} must be non-empty")
        self.world, self.frames, self.height, self.width, self.root = world, int(frames), int(height), int(width), root
        self.train_seeds, self.test_seeds = [int(s) for s in train_seeds], [int(s) for s in test_seeds]

    def scenes(self, split: str) -> list[Path]:
        """The scene folders of ``"train"`` or ``"test"``, rendered on first use."""
        from stssl.worlds.scene_io import ensure_world

        seeds = {"train": self.train_seeds, "test": self.test_seeds}[split]
        root = _cache_root(self.root)
        return [ensure_world(self.world, root, seed=s, frames=self.frames, height=self.height, width=self.width)
                for s in seeds]

    def describe(self) -> dict[str, Any]:
        return {"world": self.world, "train_seeds": self.train_seeds, "test_seeds": self.test_seeds,
                "frames": self.frames, "size": [self.height, self.width]}


class Protocol:
    """Base class: ``run(encoders, out_dir) -> dict`` scores each named encoder factory."""

    name = "protocol"

    def run(self, encoders: dict[str, EncoderFactory], out_dir: Path) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------- probes


class ProbeProtocol(Protocol):
    """Frozen-feature kNN and linear probes: on the world ego-motion task (straight / left / right), or on
    class-per-folder video sets (UCF101 style, ``train_root`` / ``test_root``: ``<root>/<class>/<video>``).

    Args:
        split: the world scenes (default: :mod:`stssl.eval.world_tasks`'s balanced seeds, 200 frames, 64x192).
        train_root / test_root: class-per-folder video sets to probe instead of the world task (both or neither;
            the classes are the folder names, and must be the same in both).
        clips_per_video: clips per video of a class-folder set (evenly spaced).
        size: ``(H, W)`` of the clips fed to the encoder (default: the rendered size).
        clip_len / frame_stride / step: clip sampling.
        pool: ``"mean"`` or ``"grid2"`` (:func:`~stssl.eval.probe.extract_features`).
        stage: the encoder ``pyramid`` level probed (-1: the last; a per-layer benchmark runs one per level).
        bn_recalibrate: recompute BatchNorm statistics on the train clips first (fair to random init).
        k / temperature: kNN.
        epochs / weight_decay: the linear probe's L-BFGS iterations and L2.
        batch_size: feature-extraction batch.
        seed: the linear probe's seed.
    """

    name = "probe"

    def __init__(
        self,
        split: WorldSplit | None = None,
        size: tuple[int, int] | None = None,
        clip_len: int = 8,
        frame_stride: int = 2,
        step: int = 2,
        pool: str = "mean",
        stage: int = -1,
        bn_recalibrate: bool = True,
        k: int = 20,
        temperature: float = 0.07,
        epochs: int = 100,
        weight_decay: float = 1e-3,
        batch_size: int = 16,
        seed: int = 0,
        train_root: str | None = None,
        test_root: str | None = None,
        clips_per_video: int = 1,
    ) -> None:
        from stssl.eval.world_tasks import DEFAULT_TEST_SEEDS, DEFAULT_TRAIN_SEEDS

        if (train_root is None) != (test_root is None):
            raise ValueError(f"ProbeProtocol: give both train_root and test_root or neither, got {train_root}, {test_root}")
        self.train_root, self.test_root, self.clips_per_video = train_root, test_root, int(clips_per_video)

        self.split = split or WorldSplit("driving", DEFAULT_TRAIN_SEEDS, DEFAULT_TEST_SEEDS, 200, 64, 192)
        self.size, self.clip_len, self.frame_stride, self.step = size, clip_len, frame_stride, step
        self.pool, self.bn_recalibrate, self.k, self.temperature = pool, bn_recalibrate, k, temperature
        self.stage = int(stage)
        self.epochs, self.weight_decay, self.batch_size, self.seed = epochs, weight_decay, batch_size, seed

    def sets(self) -> tuple[Any, Any, list[str], dict[str, Any]]:
        """``(train, test, class names, description)``: the labelled clip sets this protocol scores."""
        return clip_classification_sets(self.split, self.train_root, self.test_root, clip_len=self.clip_len,
                                        frame_stride=self.frame_stride, step=self.step, size=self.size,
                                        clips_per_video=self.clips_per_video)

    def run(self, encoders: dict[str, EncoderFactory], out_dir: Path) -> dict[str, Any]:
        from stssl.eval.probe import (
            extract_features,
            knn_classify,
            linear_probe,
            mean_class_accuracy,
            recalibrate_batchnorm,
        )

        train, test, class_names, source = self.sets()
        result: dict[str, Any] = {"class_names": class_names, "pool": self.pool, "stage": self.stage, **source}
        num_classes = len(class_names)
        for name, make in encoders.items():
            encoder = make()
            loader = DataLoader(train, batch_size=self.batch_size)
            if self.bn_recalibrate:
                recalibrate_batchnorm(encoder, loader)
            train_x, train_y = extract_features(encoder, loader, pool=self.pool, stage=self.stage)
            test_loader = DataLoader(test, batch_size=self.batch_size)
            test_x, test_y = extract_features(encoder, test_loader, pool=self.pool, stage=self.stage)
            knn = knn_classify(train_x, train_y, test_x, k=self.k, temperature=self.temperature, num_classes=num_classes)
            linear = linear_probe(train_x, train_y, test_x, test_y, epochs=self.epochs, weight_decay=self.weight_decay,
                                  num_classes=num_classes, seed=self.seed)
            result[name] = {
                "knn_acc": float((knn == test_y).float().mean()),
                "knn_mean_class_acc": mean_class_accuracy(knn, test_y, num_classes),
                "linear_acc": linear["acc"],
                "linear_mean_class_acc": linear["mean_class_acc"],
            }
            majority = int(torch.bincount(train_y, minlength=num_classes).argmax())
            result["chance"] = float((test_y == majority).float().mean())
        return result


def clip_classification_sets(
    split: WorldSplit,
    train_root: str | None,
    test_root: str | None,
    *,
    clip_len: int,
    frame_stride: int,
    step: int,
    size: tuple[int, int] | None,
    clips_per_video: int,
) -> tuple[Any, Any, list[str], dict[str, Any]]:
    """Labelled clip sets: class-per-folder video sets (``train_root`` / ``test_root``) or, without them, the world
    ego-motion task of ``split`` (:func:`~stssl.eval.world_tasks.ego_motion_dataset`).

    Returns:
        ``(train, test, class names, description)``; items have ``video`` uint8 ``(3, T, H, W)`` and ``label``.
    """
    from stssl.data.dataset import ClipDataset
    from stssl.data.sources import class_folder_records
    from stssl.eval.world_tasks import ego_motion_dataset

    if train_root is None or test_root is None:
        train, test, info = ego_motion_dataset(split.scenes("train"), split.scenes("test"), clip_len=clip_len,
                                               frame_stride=frame_stride, step=step, size=size)
        return train, test, list(info.class_names), {"task": "ego_motion", "class_counts": info.counts,
                                                     **split.describe()}
    train_records, train_classes = class_folder_records(train_root)
    test_records, test_classes = class_folder_records(test_root)
    if train_classes != test_classes:
        raise ValueError(f"{train_root} has classes {train_classes} but {test_root} has {test_classes}")
    kwargs: dict[str, Any] = dict(clip_len=clip_len, frame_stride=frame_stride, size=size, mode="uniform",
                                  clips_per_video=clips_per_video)
    return (ClipDataset(train_records, **kwargs), ClipDataset(test_records, **kwargs), list(train_classes),
            {"task": "class_folders", "train_root": train_root, "test_root": test_root})


# -------------------------------------------------------------------------------------------- segmentation


def loss_summary(losses: Sequence[float], window: int = 10) -> dict[str, float | int]:
    """What a transfer run's per-step training losses say: the mean of the first and of the last ``window`` finite
    ones, and how many steps had a non-finite loss (a diverged head shows here, not only as a zero score).

    Example:
        >>> loss_summary([4.0, 3.0, float("nan"), 2.0, 1.0], window=2)
        {'train_loss_first': 3.5, 'train_loss_last': 1.5, 'train_loss_nonfinite_steps': 1}
    """
    finite = [float(v) for v in losses if math.isfinite(v)]
    first = sum(finite[:window]) / len(finite[:window]) if finite else float("nan")
    last = sum(finite[-window:]) / len(finite[-window:]) if finite else float("nan")
    return {"train_loss_first": first, "train_loss_last": last, "train_loss_nonfinite_steps": len(losses) - len(finite)}


def _loss_history() -> Any:
    """A Lightning callback that keeps every training step's loss, detached, in ``.losses`` (read them after the
    fit: no device sync per step; Lightning is imported lazily)."""
    import lightning as L

    class LossHistory(L.Callback):
        def __init__(self) -> None:
            self.losses: list[torch.Tensor] = []

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            if loss is not None:
                self.losses.append(loss.detach())

    return LossHistory()


class TransferProtocol(Protocol):
    """Base of the protocols that train a head per encoder and label fraction (segmentation, detection).

    For each encoder factory and each fraction ``f`` of ``label_fractions``, a fresh encoder + the subclass's
    LightningModule (:meth:`make_model`) trains for ``max_steps`` steps on the frames
    :func:`~stssl.data.labelled.select_labelled` marks labelled at ``f`` — the same frames, steps and seed for every
    encoder — and is then scored on the test set (its ``last_metrics`` after ``trainer.test``, with the training
    loss at the start and the end and the number of non-finite loss steps, :func:`loss_summary`). The step budget is
    the same at every fraction (small fractions revisit their frames more often), as label-efficiency studies
    usually fix it. The curve of :attr:`metric` against the fraction is written to :attr:`curve_file`.

    Args (shared by the subclasses):
        split: world scenes (default: driving, train seeds 0-3, test seed 1000, 64 frames).
        size: ``(H, W)`` frames (and labels) are resized to (``None``: as stored, where a subclass allows it).
        clip_len / frame_stride: frames per clip (the labelled frame is the last) — ``1`` for frame encoders.
        label_fractions: fractions of the train frames that are labelled.
        max_steps / batch_size / lr / encoder_lr_scale / weight_decay: training (AdamW, cosine decay).
        freeze_encoder: train only the head (a frozen dense probe) instead of fine-tuning.
        normalize: ``(mean, std)`` of the encoder's pretraining input (``None`` = ``[0, 1]`` frames).
        eval_every: evaluate every N-th test item only (1 = all).
        seed: seeds heads, label selection and the batch order.
        num_workers: data loader workers.
        warmup_steps: linear learning-rate warm-up before the cosine decay (0: none; at most ``max_steps``).
    """

    #: the metric drawn against the label fraction, its axis label and the PNG's file name
    metric, ylabel, curve_file = "", "", ""

    def __init__(
        self,
        split: WorldSplit | None = None,
        size: tuple[int, int] | None = (64, 192),
        clip_len: int = 1,
        frame_stride: int = 1,
        label_fractions: Sequence[float] = (0.01, 0.1, 1.0),
        max_steps: int = 300,
        batch_size: int = 8,
        lr: float = 1e-3,
        encoder_lr_scale: float = 1.0,
        weight_decay: float = 1e-4,
        freeze_encoder: bool = False,
        normalize: tuple[float, float] | None = None,
        eval_every: int = 1,
        seed: int = 0,
        num_workers: int = 0,
        warmup_steps: int = 0,
    ) -> None:
        owner = type(self).__name__
        if not label_fractions or any(not 0 < f <= 1 for f in label_fractions):
            raise ValueError(f"{owner}: label_fractions must be in (0, 1], got {list(label_fractions)}")
        if max_steps < 1 or batch_size < 1 or eval_every < 1:
            raise ValueError(
                f"{owner}: max_steps, batch_size and eval_every must be >= 1, got {max_steps}, {batch_size}, "
                f"{eval_every}"
            )
        if warmup_steps < 0:
            raise ValueError(f"{owner}: warmup_steps must be >= 0, got {warmup_steps}")
        self.split = split or WorldSplit()
        self.size: tuple[int, int] | None = None if size is None else (int(size[0]), int(size[1]))
        self.clip_len, self.frame_stride = int(clip_len), int(frame_stride)
        self.label_fractions = sorted(float(f) for f in label_fractions)
        self.max_steps, self.batch_size, self.lr = int(max_steps), int(batch_size), float(lr)
        self.encoder_lr_scale, self.weight_decay = float(encoder_lr_scale), float(weight_decay)
        self.freeze_encoder, self.normalize = bool(freeze_encoder), normalize
        self.eval_every, self.seed, self.num_workers = int(eval_every), int(seed), int(num_workers)
        self.warmup_steps = int(warmup_steps)

    # -- what a subclass provides
    def data(self, split: str, fraction: float = 1.0) -> Any:
        """The ``"train"`` set at a label fraction, or the ``"test"`` set."""
        raise NotImplementedError

    def make_model(self, encoder: Encoder, test: Any) -> Any:
        """A fresh LightningModule over ``encoder`` with a ``last_metrics`` dict after ``trainer.test``."""
        raise NotImplementedError

    def class_names(self, data: Any) -> list[str]:
        """The classes a data set labels (train and test must agree)."""
        raise NotImplementedError

    def collate(self) -> Callable | None:
        """The data loaders' ``collate_fn`` (``None``: the default)."""
        return None

    def describe(self, test: Any) -> dict[str, Any]:
        """Extra result keys about the data (its source, counts); by default the world split."""
        return self.split.describe()

    # -- the shared loop
    def _head_kwargs(self) -> dict[str, Any]:
        return dict(freeze_encoder=self.freeze_encoder, lr=self.lr, encoder_lr_scale=self.encoder_lr_scale,
                    weight_decay=self.weight_decay, normalize=self.normalize, max_steps=self.max_steps,
                    warmup_steps=self.warmup_steps)

    def run(self, encoders: dict[str, EncoderFactory], out_dir: Path) -> dict[str, Any]:
        import lightning as L

        test = self.data("test")
        result: dict[str, Any] = {"label_fractions": self.label_fractions, "max_steps": self.max_steps,
                                  "warmup_steps": self.warmup_steps,
                                  "input_size": None if self.size is None else list(self.size),
                                  "clip_len": self.clip_len,
                                  "classes": self.class_names(test), **self.describe(test)}
        if self.eval_every > 1:
            test = Subset(test, range(0, len(test), self.eval_every))
        result["test_frames"] = len(test)
        collate = self.collate()
        for fraction in self.label_fractions:
            train = self.data("train", fraction)
            if self.class_names(train) != result["classes"]:
                raise ValueError(f"{type(self).__name__}: the train set's classes {self.class_names(train)} differ "
                                 f"from the test set's {result['classes']}")
            for name, make in encoders.items():
                L.seed_everything(self.seed, workers=True, verbose=False)
                model = self.make_model(make(), test)
                loader = DataLoader(train, batch_size=min(self.batch_size, len(train)), shuffle=True,
                                    collate_fn=collate, generator=torch.Generator().manual_seed(self.seed),
                                    num_workers=self.num_workers)
                history = _loss_history()
                trainer = L.Trainer(
                    max_steps=self.max_steps, max_epochs=-1, accelerator="auto", devices=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, default_root_dir=str(out_dir), callbacks=[history],
                )
                started = time.perf_counter()
                trainer.fit(model, loader)
                train_s = time.perf_counter() - started
                trainer.test(model, DataLoader(test, batch_size=self.batch_size, collate_fn=collate,
                                               num_workers=self.num_workers), verbose=False)
                losses = loss_summary([float(v) for v in history.losses])
                if losses["train_loss_nonfinite_steps"]:
                    logger.warning("%s %s @ %.3g labels: %d of %d training steps had a non-finite loss", self.name,
                                   name, fraction, losses["train_loss_nonfinite_steps"], len(history.losses))
                metrics = {**model.last_metrics, **losses, "labelled_frames": len(train), "train_s": round(train_s, 1)}
                result.setdefault(name, {})[str(fraction)] = metrics
                logger.info("%s %s @ %.3g labels (%d frames): %s %.4f", self.name, name, fraction, len(train),
                            self.metric, metrics[self.metric])
        plot_metric_curve(result, out_dir / self.curve_file, list(encoders), metric=self.metric, ylabel=self.ylabel)
        return result


class SegmentationProtocol(TransferProtocol):
    """Semantic segmentation transfer at several label fractions (the label-efficiency curve).

    A :class:`TransferProtocol` whose head is :class:`~stssl.modules.dense_transfer.SegmentationTransfer` (a
    pyramid decoder) and whose score is mIoU on every test frame (classes present in prediction or ground truth),
    with pixel accuracy and per-class IoU; the curve is ``label_efficiency.png``.

    Args:
        split ... num_workers: see :class:`TransferProtocol`.
        cityscapes_root: a Cityscapes-style tree to use instead of the world (``train`` split to train, ``val``
            to test; :class:`~stssl.data.labelled.CityscapesClips`, 19 classes, 255 ignored).
    """

    name = "segmentation"
    metric, ylabel, curve_file = "miou", "test mIoU", "label_efficiency.png"

    def __init__(
        self,
        split: WorldSplit | None = None,
        size: tuple[int, int] = (64, 192),
        clip_len: int = 1,
        frame_stride: int = 1,
        label_fractions: Sequence[float] = (0.01, 0.1, 1.0),
        max_steps: int = 300,
        batch_size: int = 8,
        lr: float = 1e-3,
        encoder_lr_scale: float = 1.0,
        weight_decay: float = 1e-4,
        freeze_encoder: bool = False,
        normalize: tuple[float, float] | None = None,
        eval_every: int = 1,
        seed: int = 0,
        num_workers: int = 0,
        cityscapes_root: str | None = None,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(split, size, clip_len, frame_stride, label_fractions, max_steps, batch_size, lr,
                         encoder_lr_scale, weight_decay, freeze_encoder, normalize, eval_every, seed, num_workers,
                         warmup_steps)
        self.cityscapes_root = cityscapes_root

    def data(self, split: str, fraction: float = 1.0) -> Any:
        from stssl.data.labelled import CityscapesClips, SemanticClips

        kwargs: dict[str, Any] = dict(clip_len=self.clip_len, frame_stride=self.frame_stride, size=self.size,
                                      label_fraction=fraction, seed=self.seed)
        if self.cityscapes_root is not None:
            return CityscapesClips(self.cityscapes_root, {"train": "train", "test": "val"}[split], **kwargs)
        return SemanticClips(self.split.scenes(split), **kwargs)

    def class_names(self, data: Any) -> list[str]:
        return list(data.classes)

    def describe(self, test: Any) -> dict[str, Any]:
        return {"cityscapes_root": self.cityscapes_root} if self.cityscapes_root else self.split.describe()

    def make_model(self, encoder: Encoder, test: Any) -> Any:
        from stssl.modules.dense_transfer import SegmentationTransfer

        return SegmentationTransfer(encoder, test.num_classes, class_names=test.classes, **self._head_kwargs())


class FinetuneProtocol(TransferProtocol):
    """Full fine-tuning for clip classification at several label fractions (encoder + linear layer, end to end).

    A :class:`TransferProtocol` on the clip sets :class:`ProbeProtocol` uses (the world ego-motion task, or
    class-per-folder video sets), with :class:`~stssl.modules.finetune.ClassificationTransfer` as the head: test
    accuracy and mean per-class accuracy per fraction of labelled train clips; the curve is
    ``finetune_efficiency.png``. ``freeze_encoder: true`` makes it a linear probe trained by SGD.

    Args:
        split ... num_workers: see :class:`TransferProtocol` (``size`` ``None`` keeps the videos' size).
        step / train_root / test_root / clips_per_video: the clip sets, as :class:`ProbeProtocol`'s.
        dropout: before the classifier.
    """

    name = "finetune"
    metric, ylabel, curve_file = "acc", "test accuracy", "finetune_efficiency.png"

    def __init__(
        self,
        split: WorldSplit | None = None,
        size: tuple[int, int] | None = None,
        clip_len: int = 8,
        frame_stride: int = 2,
        label_fractions: Sequence[float] = (0.1, 1.0),
        max_steps: int = 300,
        batch_size: int = 8,
        lr: float = 1e-3,
        encoder_lr_scale: float = 1.0,
        weight_decay: float = 1e-4,
        freeze_encoder: bool = False,
        normalize: tuple[float, float] | None = None,
        eval_every: int = 1,
        seed: int = 0,
        num_workers: int = 0,
        step: int = 2,
        train_root: str | None = None,
        test_root: str | None = None,
        clips_per_video: int = 1,
        dropout: float = 0.0,
        warmup_steps: int = 0,
    ) -> None:
        from stssl.eval.world_tasks import DEFAULT_TEST_SEEDS, DEFAULT_TRAIN_SEEDS

        split = split or WorldSplit("driving", DEFAULT_TRAIN_SEEDS, DEFAULT_TEST_SEEDS, 200, 64, 192)
        super().__init__(split, size, clip_len, frame_stride, label_fractions, max_steps, batch_size, lr,
                         encoder_lr_scale, weight_decay, freeze_encoder, normalize, eval_every, seed, num_workers,
                         warmup_steps)
        if (train_root is None) != (test_root is None):
            raise ValueError(f"FinetuneProtocol: give both train_root and test_root or neither, got {train_root}, {test_root}")
        self.step, self.train_root, self.test_root = int(step), train_root, test_root
        self.clips_per_video, self.dropout = int(clips_per_video), float(dropout)
        self._sets: tuple[Any, Any, list[str], dict[str, Any]] | None = None

    def _all(self) -> tuple[Any, Any, list[str], dict[str, Any]]:
        if self._sets is None:
            self._sets = clip_classification_sets(
                self.split, self.train_root, self.test_root, clip_len=self.clip_len, frame_stride=self.frame_stride,
                step=self.step, size=self.size, clips_per_video=self.clips_per_video)
        return self._sets

    def data(self, split: str, fraction: float = 1.0) -> Any:
        train, test, _, _ = self._all()
        if split == "test":
            return test
        return Subset(train, [i for _, i in select_labelled([len(train)], fraction, seed=self.seed)])

    def class_names(self, data: Any) -> list[str]:
        return self._all()[2]

    def describe(self, test: Any) -> dict[str, Any]:
        return self._all()[3]

    def make_model(self, encoder: Encoder, test: Any) -> Any:
        from stssl.modules.finetune import ClassificationTransfer

        names = self.class_names(test)
        return ClassificationTransfer(encoder, len(names), class_names=names, dropout=self.dropout,
                                      **self._head_kwargs())


def plot_metric_curve(result: dict[str, Any], path: Path, names: Sequence[str], *, metric: str, ylabel: str) -> Path:
    """``result[name][fraction][metric]`` against the labelled fraction (log x), one line per encoder (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name in names:
        points = sorted((float(f), m[metric]) for f, m in result.get(name, {}).items())
        if points:
            ax.plot([p[0] * 100 for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("labelled frames (%)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- propagation


def stride8_stage(encoder: Encoder) -> int:
    """The pyramid stage whose spatial stride is closest to 8: the default level of the dense frozen-feature
    protocols (label propagation, the dense probe), fine enough for masks yet past the first layers."""
    strides = encoder.spec.strides
    return min(range(len(strides)), key=lambda i: abs(strides[i][1] - 8))


@torch.no_grad()
def dense_frame_features(
    encoder: Encoder, video: torch.Tensor, *, stage: int | None = None, context: int = 1, batch_size: int = 8
) -> torch.Tensor:
    """Per-frame dense features of a video from any encoder: ``(T, D, h, w)``.

    Frame ``t``'s features are the last time step of pyramid stage ``stage`` for the clip of the ``context``
    frames ending at ``t`` (the first frame repeats before the video starts), so 3D CNNs see motion context and
    frame encoders (``context = 1``) see one frame.

    Args:
        encoder: any encoder (evaluation mode is the caller's choice).
        video: float ``(3, T, H, W)`` in the encoder's input range (moved to the encoder's device).
        stage: pyramid stage index (default: the stage whose spatial stride is closest to 8).
        context: frames per clip (at least the encoder's ``spec.min_frames``).
        batch_size: clips per encoder call.
    """
    spec = encoder.spec
    if stage is None:
        stage = stride8_stage(encoder)
    if not 0 <= stage < len(spec.channels):
        raise ValueError(f"dense_frame_features: stage {stage} out of range for {len(spec.channels)} pyramid stages")
    context = max(int(context), int(spec.min_frames))
    param = next(iter(encoder.parameters()), None)
    video = video.to(param.device if param is not None else video.device)  # where the encoder is
    T = video.shape[1]
    feats = []
    for start in range(0, T, batch_size):
        clips = []
        for t in range(start, min(T, start + batch_size)):
            idx = [max(0, t - context + 1 + i) for i in range(context)]
            clips.append(video[:, idx])
        pyramid = encoder(torch.stack(clips)).pyramid
        feats.append(pyramid[stage][:, :, -1])
    return torch.cat(feats)


class PropagationProtocol(Protocol):
    """Label propagation (DAVIS-2017 protocol): the first frame's masks, carried through each sequence by frozen
    dense-feature affinity, scored with J&F.

    Sequences come from a DAVIS-2017 tree (``davis_root``: ``JPEGImages/<res>/<seq>``, ``Annotations/<res>/<seq>``,
    object ids from the palette PNGs) or from held-out world scenes, where each semantic class present in the
    first frame is an object (id = class index + 1). The first mask is propagated by
    :func:`~stssl.eval.propagation.propagate_labels` over :func:`dense_frame_features` of frames resized to
    ``size``, upsampled (bilinear) to the annotation's resolution, and scored with J&F over all objects of all
    sequences (:class:`~stssl.eval.propagation.DavisMeter`; first and last frames excluded, as DAVIS does).
    Features are computed where the encoder is (``stssl-eval --device``).

    Args:
        split: world scenes (the test seeds are scored; the train seeds are unused).
        size: ``(H, W)`` the encoder sees.
        max_frames: frames of each sequence used (from the first; DAVIS sequences are 25-104 frames).
        frame_stride: every how many frames a sequence is sampled.
        context / stage: see :func:`dense_frame_features`.
        topk / radius / temperature / memory: :func:`~stssl.eval.propagation.propagate_labels`'s ``topk``,
            ``radius``, ``temperature`` and ``context`` (previous frames).
        normalize: ``(mean, std)`` of the encoder's pretraining input, or ``None``.
        davis_root / davis_split / davis_resolution: a DAVIS-2017 tree to score instead of the world.
    """

    name = "propagation"

    def __init__(
        self,
        split: WorldSplit | None = None,
        size: tuple[int, int] = (64, 192),
        max_frames: int = 32,
        frame_stride: int = 1,
        context: int = 1,
        stage: int | None = None,
        topk: int = 10,
        radius: float = 12.0,
        temperature: float = 0.07,
        memory: int = 20,
        normalize: tuple[float, float] | None = None,
        davis_root: str | None = None,
        davis_split: str = "val",
        davis_resolution: str = "480p",
    ) -> None:
        self.split = split or WorldSplit(test_seeds=(1000, 1001))
        self.size, self.max_frames, self.frame_stride = (int(size[0]), int(size[1])), int(max_frames), int(frame_stride)
        self.context, self.stage, self.topk, self.radius = int(context), stage, int(topk), float(radius)
        self.temperature, self.memory, self.normalize = float(temperature), int(memory), normalize
        self.davis_root, self.davis_split, self.davis_resolution = davis_root, davis_split, davis_resolution

    def sequences(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """``(name, frames uint8 (T, 3, H, W) at size, object ids int64 (T, H', W'))`` per sequence."""
        from stssl.transforms.functional import resize_clip

        out = []
        if self.davis_root is not None:
            from stssl.data.eval_sets import davis_sequences, read_davis_sequence

            for name in davis_sequences(self.davis_root, self.davis_split, resolution=self.davis_resolution):
                seq = read_davis_sequence(self.davis_root, name, resolution=self.davis_resolution)
                if seq.masks is None or seq.frames is None:
                    raise ValueError(f"PropagationProtocol: DAVIS sequence {name} lacks frames or per-frame masks")
                keep = list(range(0, seq.frames.shape[0], self.frame_stride))[: self.max_frames]
                video, _ = resize_clip(seq.frames[keep].permute(3, 0, 1, 2), self.size, None)
                out.append((name, video.permute(1, 0, 2, 3), seq.masks[keep].long()))
            return out
        from stssl.data.labelled import SemanticClips

        scenes = self.split.scenes("test")
        data = SemanticClips(scenes, size=self.size)
        for s, scene in enumerate(scenes):
            keep = list(range(0, data.videos[s].shape[0], self.frame_stride))[: self.max_frames]
            classes = data.masks[s][keep]
            # objects: the classes of frame 0, numbered 1..N (an id below N that no frame-0 pixel has would be
            # scored as an empty object, J = F = 1, by the DAVIS rules); other classes are background (0)
            ids = torch.zeros(int(classes.max()) + 1, dtype=torch.long)
            present = classes[0].unique()
            ids[present] = torch.arange(1, len(present) + 1)
            out.append((scene.name, data.videos[s][keep], ids[classes]))
        return out

    def run(self, encoders: dict[str, EncoderFactory], out_dir: Path) -> dict[str, Any]:
        from stssl.eval.propagation import DAVIS_VOID, DavisMeter, mask_to_onehot, propagate_labels

        sequences = self.sequences()
        source = {"davis_root": self.davis_root, "davis_split": self.davis_split} if self.davis_root else \
            {"objects": "semantic classes of frame 0", **self.split.describe()}
        result: dict[str, Any] = {**source, "sequences": [name for name, _, _ in sequences]}
        for name, make in encoders.items():
            encoder = make().eval()
            meter = DavisMeter()
            for seq_name, frames, gt in sequences:
                video = frames.permute(1, 0, 2, 3).float() / 255.0  # (3, T, H, W)
                if self.normalize is not None:
                    video = (video - self.normalize[0]) / self.normalize[1]
                feats = dense_frame_features(encoder, video, stage=self.stage, context=self.context)
                objects = gt[0][gt[0] != DAVIS_VOID]
                first = mask_to_onehot(gt[0], size=(feats.shape[-2], feats.shape[-1]),
                                       num_labels=int(objects.max()) + 1 if objects.numel() else 1).to(feats.device)
                soft = propagate_labels(feats, first, topk=self.topk, context=self.memory, radius=self.radius,
                                        temperature=self.temperature)
                up = F.interpolate(soft, size=tuple(gt.shape[-2:]), mode="bilinear", align_corners=False)
                pred = up.argmax(1).cpu()
                pred[0] = torch.where(gt[0] == DAVIS_VOID, torch.zeros_like(gt[0]), gt[0])  # frame 0 is given
                meter.update(pred, gt, name=seq_name)
            result[name] = meter.compute()
        return result


# ------------------------------------------------------------------------------------------- depth + pose


class DepthPoseProtocol(Protocol):
    """Depth (Eigen) and pose (ATE) metrics of a depth + ego-motion checkpoint on scene folders.

    Needs the whole trained module (depth decoder and pose network), so it scores the ``checkpoint`` given to
    ``stssl-eval`` (``encoders`` are not used: a random-init baseline has no trained decoder). The same
    evaluation as ``stssl-train validate`` (:class:`~stssl.modules.DepthPoseEvaluator`), per scene and combined.

    Args:
        scenes: scene folders with ground truth (default: the split's test scenes).
        split: world scenes used when ``scenes`` is empty.
        size: ``(H, W)`` the networks see (default: the training run's ``data.size``, stored in the checkpoint).
        min_depth / max_depth: the evaluation range (default: the task's; KITTI Eigen: 1e-3 and 80 m).
        task_name: the depth task's name in the module.
        garg_crop: the KITTI Eigen crop (for KITTI-raw scenes).
    """

    name = "depth_pose"

    def __init__(
        self,
        scenes: Sequence[str] = (),
        split: WorldSplit | None = None,
        size: tuple[int, int] | None = None,
        min_depth: float | None = None,
        max_depth: float | None = None,
        task_name: str = "depth_motion",
        garg_crop: bool = False,
    ) -> None:
        self.scenes, self.split, self.size = [str(s) for s in scenes], split or WorldSplit(), size
        self.min_depth, self.max_depth, self.task_name, self.garg_crop = min_depth, max_depth, task_name, garg_crop
        self.checkpoint: str | None = None  # set by the harness

    def run(self, encoders: dict[str, EncoderFactory], out_dir: Path) -> dict[str, Any]:
        from stssl.eval.depth_pose import combine_scene_metrics, evaluate_scene
        from stssl.modules.depth_eval import depth_pose_predictors, find_task, load_ssl_module

        if not self.checkpoint:
            raise ValueError("DepthPoseProtocol: needs a checkpoint of a depth + ego-motion run (--checkpoint)")
        size = self.size
        if size is None:
            ckpt = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
            size = (ckpt.get("datamodule_hyper_parameters") or {}).get("size")
            if size is None:
                raise ValueError(f"DepthPoseProtocol: {self.checkpoint} does not record data.size; set size: [H, W]")
        module = load_ssl_module(self.checkpoint, torch.device("cpu")).eval()
        task = find_task(module, self.task_name)
        depth_fn, pose_fn = depth_pose_predictors(module, task)
        min_depth = task.min_depth if self.min_depth is None else self.min_depth
        max_depth = task.max_depth if self.max_depth is None else self.max_depth
        scenes = [Path(s) for s in self.scenes] or self.split.scenes("test")
        results = []
        (out_dir / "scenes").mkdir(parents=True, exist_ok=True)
        for scene in scenes:
            res = evaluate_scene(scene, depth_fn, pose_fn, size=(int(size[0]), int(size[1])), min_depth=min_depth,
                                 max_depth=max_depth, garg_crop=self.garg_crop)
            results.append(res)
            (out_dir / "scenes" / f"{scene.name}.json").write_text(json.dumps(res, indent=1, default=float))
        return {"pretrained": combine_scene_metrics(results), "scenes": [str(s) for s in scenes],
                "size": list(size), "depth_range": [min_depth, max_depth]}
