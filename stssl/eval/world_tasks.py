"""Labelled probe tasks derived from the procedural worlds' ground truth.

Ego-motion (:func:`ego_motion_labels`): is the camera going straight, turning left or turning right over a
clip? The label comes from the ground-truth poses and is defined by motion (a street looks much the same whichever
way the car is about to turn), so it probes what a spatio-temporal pretext task learned beyond appearance.

The yaw of a clip is the heading change from its first to its last frame, measured in the first camera's frame
(camera convention of :mod:`stssl.types`: ``x`` right, ``y`` down, ``z`` forward): with
``first_from_last = inv(world_from_camera[0]) @ world_from_camera[-1]`` and ``R`` its rotation, the last
camera's forward axis is ``R[:, 2]`` and ``yaw = atan2(R[0, 2], R[2, 2])``. A positive yaw turns the forward axis
towards ``+x``: a **right** turn (a rotation about the downward ``y`` axis).

The driving world (:mod:`stssl.worlds.driving`) drives at 10 m/s and 10 fps (1 m per frame) on a 48 m street grid;
at each intersection it turns with probability 0.5 along a quarter circle of radius 8 m, which takes about 12.6
frames (~7 degrees per frame). A clip of 8 frames at stride 2 (15 frames) spans a whole turn, so its yaw is
about 0, +-90 degrees or something in between when it only overlaps the arc. Defaults here:

- ``yaw_threshold_deg = 20``: ``|yaw| < 20`` is straight; 20 degrees is about three frames into an arc.
- ``margin_deg = 5`` (dataset only): clips with ``15 <= |yaw| < 25`` are ambiguous and dropped.
- The camera turns at half the intersections and a turn lasts ~13 of the 48 frames between them, so about 78 %
  of the clips are straight; :func:`ego_motion_dataset` therefore keeps every turning clip and an evenly spaced subset of straight clips as
  large as the mean turning class (``balance=True``), per split.
- Default seeds: the route is a function of the seed alone; among seeds 0-23 these splits hold about as many left
  as right turns. Measured with the defaults (200 frames, clip_len 8, stride 2, step 2): train seeds
  0, 1, 2, 5, 6, 8, 10, 11 give 568 / 80 / 77 straight / left / right clips (19 ambiguous dropped), balanced to
  78 / 80 / 77; test seeds 12, 17, 18 give 168 / 50 / 48 (13 dropped), balanced to 49 / 50 / 48.

Caveat: the classes also differ in appearance (mid-turn frames show intersections and oblique facades). With a
random-init ``r3d_tiny``, a clip of one frame repeated scores about 0.5-0.6 on the balanced test set, the real
clips about 0.8 (chance 0.34), so compare encoders against each other, never against chance alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from stssl.checks import check_shape
from stssl.data.dataset import ClipDataset
from stssl.data.sampling import clip_pattern, place_pattern, sliding_anchors
from stssl.data.sources import scene_records
from stssl.types import ClipSample
from stssl.worlds.scene_io import ensure_world, read_poses, scene_dir_name

__all__ = [
    "EGO_MOTION_CLASSES",
    "LabelledClips",
    "WorldProbeInfo",
    "clip_yaw_deg",
    "ego_motion_dataset",
    "ego_motion_labels",
    "world_probe_dataset",
]

logger = logging.getLogger(__name__)

#: Class names of :func:`ego_motion_labels`, by index.
EGO_MOTION_CLASSES = ("straight", "left", "right")
STRAIGHT, LEFT, RIGHT = range(3)

DEFAULT_TRAIN_SEEDS = (0, 1, 2, 5, 6, 8, 10, 11)
DEFAULT_TEST_SEEDS = (12, 17, 18)


def clip_yaw_deg(world_from_camera: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Heading change (degrees) from the first to the last pose of each clip; positive = turning right.

    Args:
        world_from_camera: ``(..., T, 4, 4)`` camera poses (camera ``x`` right, ``y`` down, ``z`` forward).

    Returns:
        float64 ``(...)`` yaw in degrees, in ``(-180, 180]``.

    Example:
        >>> import math
        >>> c, s = math.cos(0.3), math.sin(0.3)
        >>> turned = torch.tensor([[c, 0, s, 0], [0, 1, 0, 0], [-s, 0, c, 0], [0, 0, 0, 1]])  # about +y (down)
        >>> round(float(clip_yaw_deg(torch.stack([torch.eye(4), turned]))), 2)  # forward turned towards +x
        17.19
    """
    poses = torch.as_tensor(world_from_camera, dtype=torch.float64)
    if poses.dim() < 3 or poses.shape[-2:] != (4, 4) or poses.shape[-3] < 1:
        raise ValueError(f"clip_yaw_deg: world_from_camera must be (..., T, 4, 4) with T >= 1, got {tuple(poses.shape)}")
    R_first, R_last = poses[..., 0, :3, :3], poses[..., -1, :3, :3]
    R = R_first.transpose(-1, -2) @ R_last  # rotation of first_from_last
    return torch.rad2deg(torch.atan2(R[..., 0, 2], R[..., 2, 2]))


def ego_motion_labels(world_from_camera: torch.Tensor | np.ndarray, *, yaw_threshold_deg: float = 20.0) -> int:
    """The ego-motion class of one clip: 0 straight, 1 left, 2 right (:data:`EGO_MOTION_CLASSES`).

    Args:
        world_from_camera: ``(T, 4, 4)`` poses of the clip's frames.
        yaw_threshold_deg: ``|yaw| < threshold`` is straight; otherwise the sign of :func:`clip_yaw_deg` decides
            (negative = left, positive = right).

    Example:
        >>> import math
        >>> c, s = math.cos(-0.5), math.sin(-0.5)
        >>> left = torch.tensor([[c, 0, s, 0], [0, 1, 0, 0], [-s, 0, c, 0], [0, 0, 0, 1]])
        >>> ego_motion_labels(torch.stack([torch.eye(4), torch.eye(4)])), ego_motion_labels(torch.stack([torch.eye(4), left]))
        (0, 1)
    """
    poses = torch.as_tensor(world_from_camera)
    check_shape(poses, "T 4 4", name="ego_motion_labels: world_from_camera")
    if yaw_threshold_deg <= 0:
        raise ValueError(f"ego_motion_labels: yaw_threshold_deg must be > 0, got {yaw_threshold_deg}")
    return _label_from_yaw(float(clip_yaw_deg(poses)), yaw_threshold_deg)


def _label_from_yaw(yaw_deg: float, yaw_threshold_deg: float) -> int:
    """The class of a clip yaw (degrees): straight below the threshold, else left (negative) or right (positive)."""
    if abs(yaw_deg) < yaw_threshold_deg:
        return STRAIGHT
    return RIGHT if yaw_deg > 0 else LEFT


class LabelledClips(Dataset):
    """A subset of a :class:`~stssl.data.ClipDataset`'s items, each with a label computed beforehand.

    Items are the wrapped dataset's samples (uint8 ``video`` ``(C, T, H, W)``, ``frame_indices``, ``K`` ...) with
    ``label`` set; the frames actually read are checked against the ones the label was computed from.

    Args:
        clips: the dataset to draw from (deterministic mode: ``"sliding"`` or ``"uniform"``).
        indices: which items of ``clips`` to serve.
        labels: one int label per index.
        frame_indices: ``(len(indices), T)`` the frames each label was computed from.
        scenes: the scene (folder name) of each item.
        yaw_deg: the clip yaw of each item (for inspection).
    """

    def __init__(
        self,
        clips: ClipDataset,
        indices: Sequence[int],
        labels: Sequence[int],
        frame_indices: torch.Tensor,
        scenes: Sequence[str],
        yaw_deg: Sequence[float],
    ) -> None:
        if not len(indices) == len(labels) == len(frame_indices) == len(scenes) == len(yaw_deg):
            raise ValueError(
                f"LabelledClips: indices ({len(indices)}), labels ({len(labels)}), frame_indices "
                f"({len(frame_indices)}), scenes ({len(scenes)}) and yaw_deg ({len(yaw_deg)}) must be equally long"
            )
        self.clips = clips
        self.indices = [int(i) for i in indices]
        self.labels = [int(v) for v in labels]
        self.frame_indices = frame_indices
        self.scenes = list(scenes)
        self.yaw_deg = [float(v) for v in yaw_deg]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> ClipSample:
        sample = self.clips[self.indices[i]]
        if not torch.equal(sample["frame_indices"], self.frame_indices[i]):
            raise RuntimeError(
                f"LabelledClips: item {i} read frames {sample['frame_indices'].tolist()} but was labelled from "
                f"{self.frame_indices[i].tolist()}; the wrapped ClipDataset's item order changed"
            )
        sample["label"] = self.labels[i]
        return sample

    def class_counts(self, num_classes: int = len(EGO_MOTION_CLASSES)) -> list[int]:
        """Items per class, by class index."""
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=num_classes).tolist()


@dataclass
class WorldProbeInfo:
    """How :func:`world_probe_dataset` built its splits.

    Attributes:
        train_scenes / test_scenes: scene folders of each split.
        class_names: names by class index.
        raw_counts: per split, clips per class before balancing (ambiguous clips already dropped).
        counts: per split, clips per class served.
        dropped_ambiguous: per split, clips dropped for a yaw within the margin of the threshold.
        render_s: seconds spent rendering scenes that were not cached (0 when all were).
    """

    train_scenes: list[str]
    test_scenes: list[str]
    class_names: tuple[str, ...]
    raw_counts: dict[str, list[int]]
    counts: dict[str, list[int]]
    dropped_ambiguous: dict[str, int]
    render_s: float


def _balanced_keep(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Indices to keep: every turning clip, and evenly spaced straight clips as many as the mean turning class."""
    counts = np.bincount(labels, minlength=num_classes)
    turning = counts[1:][counts[1:] > 0]
    target = int(round(turning.mean())) if len(turning) else int(counts[STRAIGHT])
    straight = np.flatnonzero(labels == STRAIGHT)
    if len(straight) > target:
        # evenly spaced over the split (in scene, then time order), deterministic
        straight = straight[np.round(np.linspace(0, len(straight) - 1, target)).astype(np.int64)]
    return np.sort(np.concatenate([straight, np.flatnonzero(labels != STRAIGHT)]))


def _split(
    scene_dirs: list[Path],
    split: str,
    *,
    clip_len: int,
    frame_stride: int,
    step: int,
    size: tuple[int, int] | None,
    yaw_threshold_deg: float,
    margin_deg: float,
    balance: bool,
    backend: str,
) -> tuple[LabelledClips, list[int], int]:
    records = [r for d in scene_dirs for r in scene_records(d)]
    clips = ClipDataset(
        records, clip_len=clip_len, frame_stride=frame_stride, size=size, mode="sliding", sliding_step=step,
        backend=backend,
    )
    pattern = clip_pattern(clip_len, frame_stride)
    # Label every window in ClipDataset's sliding order: records in order, then anchors lo, lo + step, ...
    items, labels, windows, scenes, yaws, dropped = [], [], [], [], [], 0
    item = 0
    for d in scene_dirs:
        poses = torch.from_numpy(read_poses(d))
        idx = place_pattern(sliding_anchors(len(poses), pattern, step, what=f"{d.name}: clip"), pattern)
        yaw = clip_yaw_deg(poses[idx])  # (N,)
        for w in range(len(idx)):
            y = float(yaw[w])
            if margin_deg > 0 and abs(abs(y) - yaw_threshold_deg) < margin_deg:
                dropped += 1
            else:
                items.append(item)
                labels.append(_label_from_yaw(y, yaw_threshold_deg))
                windows.append(idx[w])
                scenes.append(d.name)
                yaws.append(y)
            item += 1
    if item != len(clips):
        raise RuntimeError(f"world_probe_dataset ({split}): labelled {item} windows but ClipDataset has {len(clips)}")
    if not labels:
        raise ValueError(f"world_probe_dataset ({split}): no clips left in scenes {[d.name for d in scene_dirs]}")
    lab = np.asarray(labels, dtype=np.int64)
    raw_counts = np.bincount(lab, minlength=len(EGO_MOTION_CLASSES)).tolist()
    keep = _balanced_keep(lab, len(EGO_MOTION_CLASSES)) if balance else np.arange(len(lab))
    out = LabelledClips(
        clips,
        [items[i] for i in keep],
        lab[keep].tolist(),
        torch.stack([windows[i] for i in keep]),
        [scenes[i] for i in keep],
        [yaws[i] for i in keep],
    )
    return out, raw_counts, dropped


def ego_motion_dataset(
    train_scenes: Sequence[str | Path],
    test_scenes: Sequence[str | Path],
    *,
    clip_len: int = 8,
    frame_stride: int = 2,
    step: int = 2,
    size: tuple[int, int] | None = None,
    yaw_threshold_deg: float = 20.0,
    margin_deg: float = 5.0,
    balance: bool = True,
    backend: str = "auto",
) -> tuple[LabelledClips, LabelledClips, WorldProbeInfo]:
    """The ego-motion probe task (straight / left / right) on scene folders with poses, split by scene.

    Cuts every clip of ``clip_len`` frames at ``frame_stride`` whose start is ``step`` frames after the previous
    one (:class:`~stssl.data.ClipDataset` in ``sliding`` mode), labels it from the scene's ``poses.txt``
    (:func:`ego_motion_labels`), drops ambiguous clips and (``balance``) subsamples the straight class.

    Args:
        train_scenes / test_scenes: scene folders (:mod:`stssl.worlds.scene_io` format: ``video.mp4``,
            ``calib.json``, ``poses.txt``); no folder may be in both.
        clip_len / frame_stride / step: clip sampling.
        size: ``(H, W)`` of the served clips (default: the videos' size).
        yaw_threshold_deg: straight below it, left/right above (see the module docstring for the defaults).
        margin_deg: drop clips with ``| |yaw| - threshold | < margin`` (0 keeps all).
        balance: keep all turning clips and as many straight ones as the mean turning class, per split.
        backend: video reader backend (:func:`stssl.data.readers.open_video`).

    Returns:
        ``(train, test, info)``: two :class:`LabelledClips` (items: uint8 ``video`` ``(3, T, H, W)`` and int
        ``label``) and a :class:`WorldProbeInfo` with the class counts.

    Raises:
        ValueError: for empty or overlapping scene lists, bad thresholds, or a split without clips.
    """
    train_dirs, test_dirs = [Path(d) for d in train_scenes], [Path(d) for d in test_scenes]
    if not train_dirs or not test_dirs:
        raise ValueError(f"ego_motion_dataset: train_scenes {train_dirs} and test_scenes {test_dirs} must be non-empty")
    shared = sorted({d.resolve() for d in train_dirs} & {d.resolve() for d in test_dirs})
    if shared:
        raise ValueError(f"ego_motion_dataset: scenes {[str(d) for d in shared]} are in both splits (leakage)")
    if yaw_threshold_deg <= 0 or margin_deg < 0 or margin_deg >= yaw_threshold_deg:
        raise ValueError(
            f"ego_motion_dataset: need 0 <= margin_deg < yaw_threshold_deg, got {margin_deg}, {yaw_threshold_deg}"
        )
    kwargs = dict(
        clip_len=clip_len, frame_stride=frame_stride, step=step, size=size, yaw_threshold_deg=yaw_threshold_deg,
        margin_deg=margin_deg, balance=balance, backend=backend,
    )
    train, train_raw, train_drop = _split(train_dirs, "train", **kwargs)  # type: ignore[arg-type]
    test, test_raw, test_drop = _split(test_dirs, "test", **kwargs)  # type: ignore[arg-type]
    info = WorldProbeInfo(
        train_scenes=[d.name for d in train_dirs],
        test_scenes=[d.name for d in test_dirs],
        class_names=EGO_MOTION_CLASSES,
        raw_counts={"train": train_raw, "test": test_raw},
        counts={"train": train.class_counts(), "test": test.class_counts()},
        dropped_ambiguous={"train": train_drop, "test": test_drop},
        render_s=0.0,
    )
    return train, test, info


def world_probe_dataset(
    root: str | Path,
    *,
    train_seeds: Sequence[int] = DEFAULT_TRAIN_SEEDS,
    test_seeds: Sequence[int] = DEFAULT_TEST_SEEDS,
    world: str = "driving",
    frames: int = 200,
    height: int = 64,
    width: int = 192,
    **kwargs: Any,
) -> tuple[LabelledClips, LabelledClips, WorldProbeInfo]:
    """:func:`ego_motion_dataset` on rendered worlds: one scene per seed, train and test from disjoint seeds.

    Scenes are rendered (or found cached) with :func:`~stssl.worlds.ensure_world` under ``root``. Rendering
    costs about 0.1 s per frame at 64x192 on one CPU core (measured: 14 s for 150 frames), once per scene.

    Args:
        root: cache folder for the rendered scenes.
        train_seeds / test_seeds: world seeds of each split (must not overlap); the defaults hold about as many
            left as right turns (module docstring).
        world: a world of :data:`stssl.worlds.WORLDS` whose camera turns (``"driving"``).
        frames / height / width: rendered scene size (H.264 needs even sizes).
        **kwargs: clip sampling, thresholds and balancing of :func:`ego_motion_dataset` (``clip_len``,
            ``frame_stride``, ``step``, ``size``, ``yaw_threshold_deg``, ``margin_deg``, ``balance``, ``backend``).

    Returns:
        ``(train, test, info)`` as :func:`ego_motion_dataset`; ``info.render_s`` is the time spent rendering
        scenes that were not cached.

    Raises:
        ValueError: for overlapping or empty seed lists (and the errors of :func:`ego_motion_dataset`).
    """
    train_seeds, test_seeds = [int(s) for s in train_seeds], [int(s) for s in test_seeds]
    if not train_seeds or not test_seeds:
        raise ValueError(f"world_probe_dataset: train_seeds {train_seeds} and test_seeds {test_seeds} must be non-empty")
    shared = sorted(set(train_seeds) & set(test_seeds))
    if shared:
        raise ValueError(f"world_probe_dataset: seeds {shared} are in both train_seeds and test_seeds (scene leakage)")
    size_kw = dict(frames=frames, height=height, width=width)
    cached = {s for s in train_seeds + test_seeds if (Path(root) / scene_dir_name(world, seed=s, **size_kw)).is_dir()}
    started = time.perf_counter()
    dirs = {s: ensure_world(world, root, seed=s, **size_kw) for s in train_seeds + test_seeds}
    render_s = time.perf_counter() - started if len(cached) < len(dirs) else 0.0
    if render_s:
        logger.info("world_probe_dataset: rendered %d scenes in %.1f s", len(dirs) - len(cached), render_s)
    train, test, info = ego_motion_dataset([dirs[s] for s in train_seeds], [dirs[s] for s in test_seeds], **kwargs)
    info.render_s = round(render_s, 2)
    return train, test, info
