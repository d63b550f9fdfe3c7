"""Labelled clips for dense transfer: each item is a clip ending at a labelled frame, with that frame's mask.

:class:`CityscapesClips` serves a Cityscapes-style tree the same way (read per item: the set does not fit memory).
:class:`SemanticClips` serves scene folders (:mod:`stssl.worlds.scene_io`: ``video.mp4`` + ``semantic.npz``) for
segmentation transfer, per frame (``clip_len=1``) or per clip (the ``clip_len - 1`` frames before the labelled one
give temporal context, as a video encoder sees them). :func:`select_labelled` picks which frames count as labelled
for a label fraction: the same picks for every encoder, so pretrained and scratch runs see the same labels.

Scenes are decoded once, at construction, into memory (uint8 at the served size: ``T * H * W * 3`` bytes per scene,
5.3 MB for a 64-frame 96x288 world scene), which suits evaluation sets; stream larger sets from files instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["CityscapesClips", "SemanticClips", "clip_ending_at", "load_scene_frames", "pick_labelled", "select_labelled"]


def load_scene_frames(
    scene: str | Path, size: tuple[int, int] | None = None, backend: str = "auto"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """All frames of a scene folder (``video.mp4``, else ``frames/``), resized: uint8 ``(T, 3, H, W)`` and the
    native ``(H0, W0)`` (to scale annotations made at it)."""
    from stssl.data.readers import open_video
    from stssl.transforms.functional import resize_clip

    scene = Path(scene)
    path = scene / "video.mp4" if (scene / "video.mp4").exists() else scene / "frames"
    with open_video(path, backend=backend) as reader:
        video = reader.read(list(range(len(reader)))).permute(3, 0, 1, 2)  # (3, T, H0, W0)
    native = (int(video.shape[-2]), int(video.shape[-1]))
    if size is not None and tuple(size) != native:
        video, _ = resize_clip(video, (int(size[0]), int(size[1])))
    return video.permute(1, 0, 2, 3).contiguous(), native


def select_labelled(counts: Sequence[int], fraction: float, *, seed: int = 0) -> list[tuple[int, int]]:
    """Which candidate frames are labelled at a label fraction: evenly spread over all scenes' candidates.

    The candidates of all scenes are laid end to end; ``n = max(1, round(fraction * total))`` of them are taken at
    an even spacing from a seeded offset, so small fractions still cover every part of every scene (a random draw
    can leave a scene out) and a smaller fraction's frames are not a random subset but an evenly thinned one.

    Args:
        counts: number of candidate frames per scene.
        fraction: in ``(0, 1]``.
        seed: picks the offset of the even grid.

    Returns:
        Sorted ``(scene, candidate)`` index pairs.

    Example:
        >>> select_labelled([10, 10], 0.1)
        [(0, 6), (1, 6)]
        >>> len(select_labelled([10, 10], 1.0))
        20
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"select_labelled: fraction must be in (0, 1], got {fraction}")
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts):
        raise ValueError(f"select_labelled: counts must be >= 0, got {counts}")
    total = sum(counts)
    if total == 0:
        raise ValueError("select_labelled: there are no candidate frames (counts are all 0)")
    n = min(total, max(1, round(fraction * total)))
    spacing = total / n
    offset = float(np.random.default_rng(seed).uniform(0.0, spacing))
    flat = np.minimum(np.floor(spacing * np.arange(n) + offset).astype(np.int64), total - 1)
    starts = np.cumsum([0, *counts])
    scene = np.searchsorted(starts, flat, side="right") - 1
    return [(int(s), int(f - starts[s])) for s, f in zip(scene, flat, strict=True)]


def pick_labelled(
    owner: str, candidates: Sequence[Sequence[int]], fraction: float, seed: int, context: str
) -> list[tuple[int, int]]:
    """``(scene, frame)`` items: :func:`select_labelled` over each scene's candidate frames.

    Raises:
        ValueError: when no scene has a candidate, naming ``owner`` and the ``context`` that rules frames out.
    """
    if sum(len(c) for c in candidates) == 0:
        raise ValueError(f"{owner}: no labelled frame has {context}")
    picked = select_labelled([len(c) for c in candidates], fraction, seed=seed)
    return [(s, candidates[s][i]) for s, i in picked]


def clip_ending_at(video: torch.Tensor, t: int, clip_len: int, frame_stride: int) -> torch.Tensor:
    """The ``(3, T, H, W)`` clip of ``clip_len`` frames ``frame_stride`` apart ending at frame ``t`` of a
    ``(T_all, 3, H, W)`` scene."""
    idx = [t - (clip_len - 1 - i) * frame_stride for i in range(clip_len)]
    return video[idx].permute(1, 0, 2, 3)


class SemanticClips(Dataset):
    """Clips of scene folders ending at a labelled frame, with its semantic mask.

    Args:
        scenes: scene folders with ``video.mp4`` (or a frame folder), ``semantic.npz`` and ``classes.json``.
        clip_len: frames per clip; the labelled frame is the last one. ``1`` serves single frames.
        frame_stride: frames between clip frames.
        size: served ``(H, W)`` (frames resized bilinearly with antialiasing, masks by nearest neighbour);
            ``None`` keeps the scenes' size (all scenes must then share it).
        label_fraction: fraction of the candidate frames that are labelled (:func:`select_labelled`).
        seed: the label selection's seed.
        frames: optional subset of frame indices per scene that may be labelled (e.g. a held-out range).
        backend: video reader backend (:func:`stssl.data.open_video`).

    Items: ``{"video": uint8 (3, T, H, W), "mask": int64 (H, W), "scene": int, "frame": int}`` (class indices of
    ``classes``; what the scene marks as unknown stays as given).

    Raises:
        ValueError: when the scenes disagree on class names, a scene is shorter than one clip, or no frame is left.
    """

    def __init__(
        self,
        scenes: Sequence[str | Path],
        *,
        clip_len: int = 1,
        frame_stride: int = 1,
        size: tuple[int, int] | None = None,
        label_fraction: float = 1.0,
        seed: int = 0,
        frames: Sequence[int] | None = None,
        backend: str = "auto",
    ) -> None:
        from stssl.worlds.scene_io import read_semantic

        if clip_len < 1 or frame_stride < 1:
            raise ValueError(f"SemanticClips: clip_len and frame_stride must be >= 1, got {clip_len}, {frame_stride}")
        if not scenes:
            raise ValueError("SemanticClips: scenes is empty")
        self.scenes = [Path(s) for s in scenes]
        self.clip_len, self.frame_stride = int(clip_len), int(frame_stride)
        self.videos: list[torch.Tensor] = []  # (T, 3, H, W) uint8 per scene
        self.masks: list[torch.Tensor] = []  # (T, H, W) int64 per scene
        self.classes: list[str] | None = None
        span = (self.clip_len - 1) * self.frame_stride
        candidates: list[list[int]] = []
        for scene in self.scenes:
            semantic, classes = read_semantic(scene)
            if self.classes is None:
                self.classes = list(classes)
            elif list(classes) != self.classes:
                raise ValueError(
                    f"SemanticClips: {scene}/classes.json lists {classes}, but {self.scenes[0]} lists {self.classes}; "
                    "all scenes of one evaluation must share the class list"
                )
            video, _ = load_scene_frames(scene, size, backend)
            mask = torch.from_numpy(np.asarray(semantic, dtype=np.int64))
            if mask.shape[0] != video.shape[0]:
                raise ValueError(
                    f"SemanticClips: {scene}: semantic.npz has {mask.shape[0]} frames, the video {video.shape[0]}"
                )
            if size is not None and tuple(mask.shape[1:]) != tuple(size):
                mask = F.interpolate(mask[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()
            if self.videos and video.shape[1:] != self.videos[0].shape[1:]:
                raise ValueError(
                    f"SemanticClips: {scene} has frames of {tuple(video.shape[2:])}, {self.scenes[0]} of "
                    f"{tuple(self.videos[0].shape[2:])}; pass size=(H, W)"
                )
            allowed = range(video.shape[0]) if frames is None else [int(f) for f in frames if 0 <= int(f) < video.shape[0]]
            cand = [t for t in allowed if t >= span]
            candidates.append(cand)
            self.videos.append(video)
            self.masks.append(mask)
        self.items = pick_labelled(
            "SemanticClips", candidates, label_fraction, seed,
            f"{span} frames of context before it (clip_len={clip_len}, frame_stride={frame_stride}) in "
            f"{[str(s) for s in self.scenes]}",
        )
        self.label_fraction = float(label_fraction)

    @property
    def num_classes(self) -> int:
        return len(self.classes or [])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        scene, t = self.items[index]
        video = clip_ending_at(self.videos[scene], t, self.clip_len, self.frame_stride)
        return {"video": video, "mask": self.masks[scene][t], "scene": scene, "frame": t}

    def __repr__(self) -> str:
        return (
            f"SemanticClips({len(self.scenes)} scenes, {len(self)} labelled frames, fraction={self.label_fraction}, "
            f"clip_len={self.clip_len}, stride={self.frame_stride}, classes={self.classes})"
        )


class CityscapesClips(Dataset):
    """Cityscapes-style semantic segmentation items in :class:`SemanticClips`' format, read per item.

    ``clip_len = 1`` serves the annotated images (``leftImg8bit``); a longer clip takes the frames before each
    annotated one from ``leftImg8bit_sequence`` (:func:`~stssl.data.eval_sets.cityscapes_clip_paths`). Labels are
    the 19 train ids, 255 = ignore (:data:`~stssl.data.eval_sets.CITYSCAPES_CLASSES`).

    Args:
        root: the tree's root (``leftImg8bit/<split>/<city>/*_leftImg8bit.png``, ``gtFine/...``).
        split: ``"train"``, ``"val"``, ...
        clip_len / frame_stride: frames per clip (the annotated frame last) and their spacing.
        size: served ``(H, W)`` (frames bilinear with antialiasing, labels nearest); ``None`` keeps the native size.
        label_fraction / seed: which annotated images count as labelled (:func:`select_labelled`).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        clip_len: int = 1,
        frame_stride: int = 1,
        size: tuple[int, int] | None = None,
        label_fraction: float = 1.0,
        seed: int = 0,
    ) -> None:
        from stssl.data.eval_sets import CITYSCAPES_CLASSES, cityscapes_items

        if clip_len < 1 or frame_stride < 1:
            raise ValueError(f"CityscapesClips: clip_len and frame_stride must be >= 1, got {clip_len}, {frame_stride}")
        self.root, self.split = Path(root), split
        self.clip_len, self.frame_stride = int(clip_len), int(frame_stride)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.classes = list(CITYSCAPES_CLASSES)
        items = cityscapes_items(root, split)
        self.items = [items[i] for _, i in select_labelled([len(items)], label_fraction, seed=seed)]
        self.label_fraction = float(label_fraction)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        from stssl.data.eval_sets import cityscapes_clip_paths, read_cityscapes_item, read_image
        from stssl.transforms.functional import resize_clip

        item = self.items[index]
        image, label = read_cityscapes_item(item)
        if self.clip_len == 1:
            frames = image[None]
        else:
            offsets = [-(self.clip_len - 1 - i) * self.frame_stride for i in range(self.clip_len - 1)]
            before = [read_image(p) for p in cityscapes_clip_paths(self.root, item, offsets, self.split)]
            frames = torch.stack([*before, image])
        video = frames.permute(3, 0, 1, 2)  # (3, T, H, W) uint8
        mask = label.long()
        if self.size is not None:
            video, _ = resize_clip(video, self.size, None)
            mask = F.interpolate(mask[None, None].float(), size=self.size, mode="nearest")[0, 0].long()
        return {"video": video, "mask": mask, "scene": 0, "frame": index}

    def __repr__(self) -> str:
        return (f"CityscapesClips({self.root}, split={self.split!r}, {len(self)} items, "
                f"fraction={self.label_fraction}, clip_len={self.clip_len})")
