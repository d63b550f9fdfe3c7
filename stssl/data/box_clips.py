"""Box-labelled clips for detection transfer: each item is a clip ending at a frame with COCO boxes.

:class:`BoxClips` serves scene folders (:mod:`stssl.worlds.scene_io`: ``video.mp4`` + ``boxes.json``, COCO format
with one image per frame, ``id`` = frame index) for detection transfer, per frame (``clip_len=1``) or per clip (the
``clip_len - 1`` frames before the labelled one give temporal context). Boxes are rescaled to the served size;
frames with an ``images`` entry but no boxes are kept as negatives. :func:`~stssl.data.labelled.select_labelled`
picks which frames count as labelled at a label fraction, the same frames for every encoder.

Boxes smaller than ``min_box_size`` (either side, in served pixels) are kept but marked ``iscrowd``: COCO
evaluation then ignores them (a detection on one is neither a hit nor a false positive) and
:class:`~stssl.modules.detection_transfer.DetectionTransfer` does not train on them — the driving world has cars of
one or two pixels that no stride-8 detector can find.

Scenes are decoded once, at construction, into memory (uint8 at the served size), as
:class:`~stssl.data.labelled.SemanticClips` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from stssl.data.labelled import clip_ending_at, load_scene_frames, pick_labelled

__all__ = ["BoxClips", "collate_boxes", "scale_boxes"]


def scale_boxes(boxes: torch.Tensor, src_size: tuple[int, int], dst_size: tuple[int, int]) -> torch.Tensor:
    """Rescale ``xyxy`` pixel boxes from an image of ``src_size`` ``(H, W)`` to ``dst_size``, clipped to it.

    Box corners are pixel-edge coordinates (``0..W``), so a box spanning the whole image still does after scaling.

    Args:
        boxes: float ``(N, 4)`` ``x1, y1, x2, y2``.
        src_size / dst_size: ``(H, W)``.

    Example:
        >>> scale_boxes(torch.tensor([[10.0, 4.0, 30.0, 12.0]]), (16, 40), (8, 80)).tolist()
        [[20.0, 2.0, 60.0, 6.0]]
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"scale_boxes: boxes must be (N, 4) xyxy, got {tuple(boxes.shape)}")
    (h0, w0), (h1, w1) = src_size, dst_size
    factor = boxes.new_tensor([w1 / w0, h1 / h0, w1 / w0, h1 / h0])
    limit = boxes.new_tensor([w1, h1, w1, h1])
    return torch.minimum((boxes * factor).clamp(min=0), limit)


def collate_boxes(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch :class:`BoxClips` items: videos stacked, boxes / labels / iscrowd as per-clip lists.

    Returns:
        ``{"video": (B, 3, T, H, W), "boxes": [(N_i, 4)], "labels": [(N_i,)], "iscrowd": [(N_i,)],
        "scene": int64 (B,), "frame": int64 (B,)}`` — the lists are what torchvision detectors take.

    Example:
        >>> item = {"video": torch.zeros(3, 2, 8, 8, dtype=torch.uint8), "boxes": torch.zeros(0, 4),
        ...         "labels": torch.zeros(0, dtype=torch.int64), "iscrowd": torch.zeros(0, dtype=torch.bool),
        ...         "scene": 0, "frame": 3}
        >>> batch = collate_boxes([item, item])
        >>> tuple(batch["video"].shape), len(batch["boxes"]), batch["frame"].tolist()
        ((2, 3, 2, 8, 8), 2, [3, 3])
    """
    if not items:
        raise ValueError("collate_boxes: no items")
    return {
        "video": torch.stack([it["video"] for it in items]),
        "boxes": [it["boxes"] for it in items],
        "labels": [it["labels"] for it in items],
        "iscrowd": [it["iscrowd"] for it in items],
        "scene": torch.tensor([int(it["scene"]) for it in items], dtype=torch.int64),
        "frame": torch.tensor([int(it["frame"]) for it in items], dtype=torch.int64),
    }


class BoxClips(Dataset):
    """Clips of scene folders ending at a box-labelled frame, with that frame's boxes at the served size.

    Args:
        scenes: scene folders with ``video.mp4`` (or a ``frames`` folder) and ``boxes.json``.
        clip_len: frames per clip; the labelled frame is the last one. ``1`` serves single frames.
        frame_stride: frames between clip frames.
        size: served ``(H, W)`` (frames resized bilinearly with antialiasing, boxes scaled and clipped);
            ``None`` keeps the scenes' size (all scenes must then share it).
        label_fraction: fraction of the candidate frames that are labelled (:func:`select_labelled`).
        seed: the label selection's seed.
        frames: optional subset of frame indices per scene that may be labelled.
        min_box_size: boxes whose width or height (served pixels) is below this are marked ``iscrowd`` (ignored).
        backend: video reader backend (:func:`stssl.data.open_video`).

    Items: ``{"video": uint8 (3, T, H, W), "boxes": float32 (N, 4) xyxy pixels at the served size, "labels": int64
    (N,) 1-based category index (0 is the detector's background), "iscrowd": bool (N,), "scene": int, "frame": int}``;
    batch them with :func:`collate_boxes`. ``categories[i]`` names label ``i + 1``.

    Raises:
        ValueError: when scenes disagree on categories, ``boxes.json`` was annotated at another size than the video,
            a scene is shorter than one clip, or no frame is left.
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
        min_box_size: float = 0.0,
        backend: str = "auto",
    ) -> None:
        from stssl.data.eval_sets import coco_detection_from_dict
        from stssl.worlds.scene_io import BOXES_FILE, read_boxes

        if clip_len < 1 or frame_stride < 1:
            raise ValueError(f"BoxClips: clip_len and frame_stride must be >= 1, got {clip_len}, {frame_stride}")
        if min_box_size < 0:
            raise ValueError(f"BoxClips: min_box_size must be >= 0, got {min_box_size}")
        if not scenes:
            raise ValueError("BoxClips: scenes is empty")
        self.scenes = [Path(s) for s in scenes]
        self.clip_len, self.frame_stride = int(clip_len), int(frame_stride)
        self.min_box_size = float(min_box_size)
        self.videos: list[torch.Tensor] = []  # (T, 3, H, W) uint8 per scene
        self.targets: list[dict[int, dict[str, torch.Tensor]]] = []  # per scene: frame -> boxes/labels/iscrowd
        self.categories: list[str] = []
        span = (self.clip_len - 1) * self.frame_stride
        candidates: list[list[int]] = []
        for n, scene in enumerate(self.scenes):
            source = str(scene / BOXES_FILE)
            coco = coco_detection_from_dict(read_boxes(scene), source)
            if n == 0:
                self.categories = list(coco.categories)
            elif coco.categories != self.categories:
                raise ValueError(
                    f"BoxClips: {source} lists categories {coco.categories}, but {self.scenes[0]} lists "
                    f"{self.categories}; all scenes of one evaluation must share them"
                )
            video, native = load_scene_frames(scene, size, backend)  # (T, 3, H, W) and (H0, W0)
            served = (int(video.shape[-2]), int(video.shape[-1]))
            if self.videos and video.shape[1:] != self.videos[0].shape[1:]:
                raise ValueError(
                    f"BoxClips: {scene} has frames of {served}, {self.scenes[0]} of "
                    f"{tuple(self.videos[0].shape[2:])}; pass size=(H, W)"
                )
            per_frame: dict[int, dict[str, torch.Tensor]] = {}
            for target in coco.items:
                if (target.height, target.width) not in ((-1, -1), native):
                    raise ValueError(
                        f"BoxClips: {source} image {target.image_id} is {target.height}x{target.width} but the "
                        f"video is {native[0]}x{native[1]}; boxes must be in the video's pixels"
                    )
                if not 0 <= target.image_id < video.shape[0]:
                    raise ValueError(
                        f"BoxClips: {source} has image id {target.image_id}; expected frame indices 0..{video.shape[0] - 1}"
                    )
                boxes = scale_boxes(target.boxes, native, served)
                keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
                boxes = boxes[keep]
                small = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) < self.min_box_size
                per_frame[target.image_id] = {
                    "boxes": boxes,
                    "labels": target.labels[keep] + 1,
                    "iscrowd": target.iscrowd[keep] | small,
                }
            allowed = range(video.shape[0]) if frames is None else [int(f) for f in frames]
            candidates.append([t for t in allowed if t >= span and t in per_frame])
            self.videos.append(video)
            self.targets.append(per_frame)
        self.items = pick_labelled(
            "BoxClips", candidates, label_fraction, seed,
            f"boxes and {span} frames of context before it (clip_len={clip_len}, frame_stride={frame_stride}) in "
            f"{[str(s) for s in self.scenes]}",
        )
        self.label_fraction = float(label_fraction)

    @property
    def size(self) -> tuple[int, int]:
        """Served ``(H, W)``."""
        return int(self.videos[0].shape[-2]), int(self.videos[0].shape[-1])

    def box_counts(self) -> dict[str, int]:
        """Boxes over the served items: ``{"boxes", "ignored", "empty_frames"}`` (ignored = ``iscrowd``)."""
        targets = [self.targets[s][t] for s, t in self.items]
        return {
            "boxes": sum(len(t["boxes"]) for t in targets),
            "ignored": sum(int(t["iscrowd"].sum()) for t in targets),
            "empty_frames": sum(int(bool((~t["iscrowd"]).sum() == 0)) for t in targets),
        }

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene, t = self.items[index]
        target = self.targets[scene][t]
        return {
            "video": clip_ending_at(self.videos[scene], t, self.clip_len, self.frame_stride),  # (3, T, H, W)
            "boxes": target["boxes"].clone(),
            "labels": target["labels"].clone(),
            "iscrowd": target["iscrowd"].clone(),
            "scene": scene,
            "frame": t,
        }

    def __repr__(self) -> str:
        return (
            f"BoxClips({len(self.scenes)} scenes, {len(self)} labelled frames, fraction={self.label_fraction}, "
            f"clip_len={self.clip_len}, stride={self.frame_stride}, size={self.size}, categories={self.categories})"
        )
