"""Labelled clips for dense transfer: each item is a clip ending at a labelled frame, with that frame's mask.

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

__all__ = ["SemanticClips", "select_labelled"]


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
        from stssl.eval.depth_pose import load_frames
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
            video_path = scene / "video.mp4" if (scene / "video.mp4").exists() else scene / "frames"
            video, _ = load_frames(video_path, size=size, backend=backend)
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
        if sum(len(c) for c in candidates) == 0:
            raise ValueError(
                f"SemanticClips: no labelled frame has {span} frames of context before it (clip_len={clip_len}, "
                f"frame_stride={frame_stride}) in {[str(s) for s in self.scenes]}"
            )
        picked = select_labelled([len(c) for c in candidates], label_fraction, seed=seed)
        self.items = [(s, candidates[s][i]) for s, i in picked]
        self.label_fraction = float(label_fraction)

    @property
    def num_classes(self) -> int:
        return len(self.classes or [])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        scene, t = self.items[index]
        idx = [t - (self.clip_len - 1 - i) * self.frame_stride for i in range(self.clip_len)]
        video = self.videos[scene][idx].permute(1, 0, 2, 3)  # (3, T, H, W)
        return {"video": video, "mask": self.masks[scene][t], "scene": scene, "frame": t}

    def __repr__(self) -> str:
        return (
            f"SemanticClips({len(self.scenes)} scenes, {len(self)} labelled frames, fraction={self.label_fraction}, "
            f"clip_len={self.clip_len}, stride={self.frame_stride}, classes={self.classes})"
        )
