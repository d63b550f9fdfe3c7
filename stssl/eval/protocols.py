"""Evaluation protocols of ``stssl-eval``: each one scores encoders and returns a JSON-able dict.

A protocol gets *encoder factories* — ``{"pretrained": make, "scratch": make}``, each call a fresh encoder (the
checkpoint's weights, or a random init of the same architecture) — and a run directory for its plots and
per-sample outputs. Protocols that train (segmentation) train one head per factory (and per label fraction), so
pretrained and scratch see the same labels, steps and seeds.

- :class:`ProbeProtocol`: frozen kNN + linear probe on the world ego-motion task (:mod:`stssl.eval.world_tasks`).
- :class:`SegmentationProtocol`: semantic segmentation transfer (:class:`~stssl.modules.dense_transfer.
  SegmentationTransfer`) on world scenes, at several label fractions: mIoU per fraction and the label-efficiency
  curve (``label_efficiency.png``).
- :class:`PropagationProtocol`: label propagation (DAVIS protocol, :func:`~stssl.eval.propagation.propagate_labels`)
  of the first frame's semantic mask through held-out world sequences by frozen dense-feature affinity; J&F.
- :class:`DepthPoseProtocol`: the depth (Eigen) and pose (ATE) metrics of a depth + ego-motion checkpoint on
  scene folders (the full trained module is needed, not only its encoder).

World scenes are rendered once per (world, seed, size) into a cache (``root``, default ``$STSSL_CACHE`` or
``~/.cache/stssl/worlds``); train and test scenes come from disjoint seeds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from stssl.encoders.base import Encoder

__all__ = [
    "DepthPoseProtocol",
    "EncoderFactory",
    "PropagationProtocol",
    "Protocol",
    "ProbeProtocol",
    "SegmentationProtocol",
    "WorldSplit",
    "dense_frame_features",
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
    """Frozen-feature kNN and linear probes on the world ego-motion task (straight / left / right).

    Args:
        split: the world scenes (default: :mod:`stssl.eval.world_tasks`'s balanced seeds, 200 frames, 64x192).
        size: ``(H, W)`` of the clips fed to the encoder (default: the rendered size).
        clip_len / frame_stride / step: clip sampling.
        pool: ``"mean"`` or ``"grid2"`` (:func:`~stssl.eval.probe.extract_features`).
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
        bn_recalibrate: bool = True,
        k: int = 20,
        temperature: float = 0.07,
        epochs: int = 100,
        weight_decay: float = 1e-3,
        batch_size: int = 16,
        seed: int = 0,
    ) -> None:
        from stssl.eval.world_tasks import DEFAULT_TEST_SEEDS, DEFAULT_TRAIN_SEEDS

        self.split = split or WorldSplit("driving", DEFAULT_TRAIN_SEEDS, DEFAULT_TEST_SEEDS, 200, 64, 192)
        self.size, self.clip_len, self.frame_stride, self.step = size, clip_len, frame_stride, step
        self.pool, self.bn_recalibrate, self.k, self.temperature = pool, bn_recalibrate, k, temperature
        self.epochs, self.weight_decay, self.batch_size, self.seed = epochs, weight_decay, batch_size, seed

    def run(self, encoders: dict[str, EncoderFactory], out_dir: Path) -> dict[str, Any]:
        from stssl.eval.probe import (
            extract_features,
            knn_classify,
            linear_probe,
            mean_class_accuracy,
            recalibrate_batchnorm,
        )
        from stssl.eval.world_tasks import ego_motion_dataset

        train, test, info = ego_motion_dataset(
            self.split.scenes("train"), self.split.scenes("test"), clip_len=self.clip_len,
            frame_stride=self.frame_stride, step=self.step, size=self.size,
        )
        num_classes = len(info.class_names)
        result: dict[str, Any] = {"task": "ego_motion", "class_names": list(info.class_names),
                                  "class_counts": info.counts, **self.split.describe()}
        for name, make in encoders.items():
            encoder = make()
            loader = DataLoader(train, batch_size=self.batch_size)
            if self.bn_recalibrate:
                recalibrate_batchnorm(encoder, loader)
            train_x, train_y = extract_features(encoder, loader, pool=self.pool)
            test_x, test_y = extract_features(encoder, DataLoader(test, batch_size=self.batch_size), pool=self.pool)
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


# -------------------------------------------------------------------------------------------- segmentation


class SegmentationProtocol(Protocol):
    """Semantic segmentation transfer at several label fractions (the label-efficiency curve).

    For each encoder factory and each fraction ``f`` of ``label_fractions``, a fresh encoder +
    :class:`~stssl.modules.dense_transfer.SegmentationTransfer` decoder trains for ``max_steps`` steps on the
    frames :func:`~stssl.data.labelled.select_labelled` marks labelled at ``f`` (the same frames for every
    encoder), then is scored on every frame of the test scenes: mIoU (classes present in prediction or ground
    truth), pixel accuracy and per-class IoU. The step budget is the same at every fraction (small fractions
    revisit their frames more often), as label-efficiency studies usually fix it.

    Args:
        split: world scenes with ``semantic.npz`` (default: driving, train seeds 0-3, test seed 1000, 64 frames).
        size: ``(H, W)`` frames and masks are resized to.
        clip_len / frame_stride: frames per clip (the labelled frame is the last) — ``1`` for frame encoders.
        label_fractions: fractions of the train frames that are labelled.
        max_steps / batch_size / lr / encoder_lr_scale / weight_decay: training (AdamW, cosine decay).
        freeze_encoder: train only the decoder (a frozen dense probe) instead of fine-tuning.
        normalize: ``(mean, std)`` of the encoder's pretraining input (``None`` = ``[0, 1]`` frames).
        eval_every: also evaluate every N frames of the test scenes only (1 = all frames).
        seed: seeds heads, label selection and the batch order.
        num_workers: data loader workers.
    """

    name = "segmentation"

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
    ) -> None:
        if not label_fractions or any(not 0 < f <= 1 for f in label_fractions):
            raise ValueError(f"SegmentationProtocol: label_fractions must be in (0, 1], got {list(label_fractions)}")
        if max_steps < 1 or batch_size < 1 or eval_every < 1:
            raise ValueError(
                f"SegmentationProtocol: max_steps, batch_size and eval_every must be >= 1, got {max_steps}, "
                f"{batch_size}, {eval_every}"
            )
        self.split = split or WorldSplit()
        self.size = (int(size[0]), int(size[1]))
        self.clip_len, self.frame_stride = int(clip_len), int(frame_stride)
        self.label_fractions = sorted(float(f) for f in label_fractions)
        self.max_steps, self.batch_size, self.lr = int(max_steps), int(batch_size), float(lr)
        self.encoder_lr_scale, self.weight_decay = float(encoder_lr_scale), float(weight_decay)
        self.freeze_encoder, self.normalize = bool(freeze_encoder), normalize
        self.eval_every, self.seed, self.num_workers = int(eval_every), int(seed), int(num_workers)

    def _data(self, fraction: float) -> Any:
        from stssl.data.labelled import SemanticClips

        return SemanticClips(self.split.scenes("train"), clip_len=self.clip_len, frame_stride=self.frame_stride,
                             size=self.size, label_fraction=fraction, seed=self.seed)

    def run(self, encoders: dict[str, EncoderFactory], out_dir: Path) -> dict[str, Any]:
        import lightning as L

        from stssl.data.labelled import SemanticClips
        from stssl.modules.dense_transfer import SegmentationTransfer

        test = SemanticClips(self.split.scenes("test"), clip_len=self.clip_len, frame_stride=self.frame_stride,
                             size=self.size)
        if self.eval_every > 1:
            test.items = test.items[:: self.eval_every]
        classes = test.classes or []
        result: dict[str, Any] = {"classes": classes, "label_fractions": self.label_fractions,
                                  "max_steps": self.max_steps, "test_frames": len(test), **self.split.describe()}
        for fraction in self.label_fractions:
            train = self._data(fraction)
            if train.classes != classes:
                raise ValueError(f"SegmentationProtocol: train classes {train.classes} differ from test {classes}")
            for name, make in encoders.items():
                L.seed_everything(self.seed, workers=True, verbose=False)
                model = SegmentationTransfer(
                    make(), len(classes), class_names=classes, freeze_encoder=self.freeze_encoder, lr=self.lr,
                    encoder_lr_scale=self.encoder_lr_scale, weight_decay=self.weight_decay, normalize=self.normalize,
                    max_steps=self.max_steps,
                )
                gen = torch.Generator().manual_seed(self.seed)
                loader = DataLoader(train, batch_size=min(self.batch_size, len(train)), shuffle=True, drop_last=False,
                                    generator=gen, num_workers=self.num_workers)
                trainer = L.Trainer(
                    max_steps=self.max_steps, max_epochs=-1, accelerator="auto", devices=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, default_root_dir=str(out_dir),
                )
                started = time.perf_counter()
                trainer.fit(model, loader)
                train_s = time.perf_counter() - started
                trainer.test(model, DataLoader(test, batch_size=self.batch_size, num_workers=self.num_workers),
                             verbose=False)
                metrics = dict(model.last_metrics)
                metrics.update(labelled_frames=len(train), train_s=round(train_s, 1))
                result.setdefault(name, {})[str(fraction)] = metrics
                logger.info("segmentation %s @ %.3g labels (%d frames): mIoU %.4f", name, fraction, len(train),
                            metrics["miou"])
        plot_label_efficiency(result, out_dir / "label_efficiency.png", list(encoders))
        return result


def plot_label_efficiency(result: dict[str, Any], path: Path, names: Sequence[str]) -> Path:
    """mIoU against the labelled fraction (log x), one line per encoder; written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name in names:
        points = sorted((float(f), m["miou"]) for f, m in result.get(name, {}).items())
        if points:
            ax.plot([p[0] * 100 for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("labelled frames (%)")
    ax.set_ylabel("test mIoU")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- propagation


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
        video: float ``(3, T, H, W)`` in the encoder's input range.
        stage: pyramid stage index (default: the stage whose spatial stride is closest to 8).
        context: frames per clip (at least the encoder's ``spec.min_frames``).
        batch_size: clips per encoder call.
    """
    spec = encoder.spec
    if stage is None:
        stage = min(range(len(spec.strides)), key=lambda i: abs(spec.strides[i][1] - 8))
    if not 0 <= stage < len(spec.channels):
        raise ValueError(f"dense_frame_features: stage {stage} out of range for {len(spec.channels)} pyramid stages")
    context = max(int(context), int(spec.min_frames))
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
    """Label propagation of the first frame's semantic mask through held-out world sequences (DAVIS protocol).

    Each semantic class present in a sequence's first frame is an object (id = class index + 1); its mask is
    propagated by :func:`~stssl.eval.propagation.propagate_labels` over the frozen encoder's per-frame dense
    features (:func:`dense_frame_features`), upsampled to the mask size, and scored with J&F over all objects of
    all sequences (:class:`~stssl.eval.propagation.DavisMeter`).

    Args:
        split: world scenes (the test seeds are scored; the train seeds are unused).
        size: ``(H, W)`` frames are resized to (masks too).
        max_frames: frames of each sequence used (from the first).
        frame_stride: every how many frames a sequence is sampled.
        context / stage: see :func:`dense_frame_features`.
        topk / radius / temperature / memory: :func:`~stssl.eval.propagation.propagate_labels`'s ``topk``,
            ``radius``, ``temperature`` and ``context`` (previous frames).
        normalize: ``(mean, std)`` of the encoder's pretraining input, or ``None``.
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
    ) -> None:
        self.split = split or WorldSplit(test_seeds=(1000, 1001))
        self.size, self.max_frames, self.frame_stride = (int(size[0]), int(size[1])), int(max_frames), int(frame_stride)
        self.context, self.stage, self.topk, self.radius = int(context), stage, int(topk), float(radius)
        self.temperature, self.memory, self.normalize = float(temperature), int(memory), normalize

    def run(self, encoders: dict[str, EncoderFactory], out_dir: Path) -> dict[str, Any]:
        from stssl.data.labelled import SemanticClips
        from stssl.eval.propagation import DavisMeter, mask_to_onehot, propagate_labels

        scenes = self.split.scenes("test")
        data = SemanticClips(scenes, size=self.size)
        result: dict[str, Any] = {"objects": "semantic classes of frame 0", **self.split.describe()}
        for name, make in encoders.items():
            encoder = make().eval()
            meter = DavisMeter()
            for s, scene in enumerate(scenes):
                frames = list(range(0, data.videos[s].shape[0], self.frame_stride))[: self.max_frames]
                video = data.videos[s][frames].permute(1, 0, 2, 3).float() / 255.0  # (3, T, H, W)
                if self.normalize is not None:
                    video = (video - self.normalize[0]) / self.normalize[1]
                gt = data.masks[s][frames] + 1  # object ids: class + 1 (0 stays free for "background")
                present = torch.zeros(int(gt.max()) + 1, dtype=torch.bool)
                present[gt[0].unique()] = True
                gt = torch.where(present[gt], gt, torch.zeros_like(gt))  # objects = classes seen in frame 0
                feats = dense_frame_features(encoder, video, stage=self.stage, context=self.context)
                first = mask_to_onehot(gt[0], size=(feats.shape[-2], feats.shape[-1]), num_labels=int(gt.max()) + 1)
                soft = propagate_labels(feats, first, topk=self.topk, context=self.memory, radius=self.radius,
                                        temperature=self.temperature)
                up = F.interpolate(soft, size=self.size, mode="bilinear", align_corners=False)
                pred = up.argmax(dim=1)
                pred[0] = gt[0]
                meter.update(pred, gt, name=f"{scene.name}")
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
