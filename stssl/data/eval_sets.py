"""Readers for evaluation sets: plain typed records of tensors and paths, no model or Lightning code.

- stssl scene format (:func:`read_scene_eval`): the semantic maps and COCO boxes of a scene folder, thin over
  :mod:`stssl.worlds.scene_io`.
- Cityscapes-style folders (:func:`cityscapes_items`, :func:`read_cityscapes_item`):
  ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` with ``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png``;
  label ids become the standard 19 train ids (255 = ignore). :func:`cityscapes_clip_paths` finds the frames
  around an annotated one in ``leftImg8bit_sequence`` for per-clip models.
- COCO JSON detection (:func:`read_coco_detection`): per-image boxes ``xyxy`` and contiguous labels.
- DAVIS-2017 (:func:`davis_sequences`, :func:`read_davis_sequence`): ``JPEGImages/480p/<seq>/*.jpg``,
  ``Annotations/480p/<seq>/*.png`` (palette PNGs whose indices are object ids) and ``ImageSets/2017/<split>.txt``.

Every reader raises :class:`EvalSetError` naming the missing or malformed file, or the missing key.

Example:
    >>> labelids_to_trainids(torch.tensor([[7, 26, 0, 33]])).tolist()  # road, car, unlabeled, bicycle
    [[0, 13, 255, 18]]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_TRAIN_IDS",
    "CityscapesItem",
    "CocoDetectionSet",
    "DavisSequence",
    "DetectionTarget",
    "EvalSetError",
    "SceneEvalSet",
    "cityscapes_clip_paths",
    "cityscapes_items",
    "coco_detection_from_dict",
    "davis_sequences",
    "labelids_to_trainids",
    "read_cityscapes_item",
    "read_coco_detection",
    "read_davis_sequence",
    "read_image",
    "read_label_png",
    "read_scene_eval",
]


class EvalSetError(ValueError):
    """An evaluation set's folder or file does not have the expected layout; the message names the file."""


# ------------------------------------------------------------------------------------------------ images
def read_image(path: str | Path) -> torch.Tensor:
    """Read an image file as uint8 ``(H, W, 3)`` RGB."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise EvalSetError(f"{path}: missing image")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except OSError as err:
        raise EvalSetError(f"{path}: cannot read image ({err})") from err
    return torch.from_numpy(arr.copy())


def read_label_png(path: str | Path) -> torch.Tensor:
    """Read a label PNG (palette ``P`` or grayscale ``L``/``I``) as its raw indices, uint8 ``(H, W)``.

    For palette PNGs (DAVIS annotations) the palette indices are returned, not the colours.

    Raises:
        EvalSetError: a missing file, or an RGB/RGBA image (colours are not ids).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise EvalSetError(f"{path}: missing label image")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise EvalSetError(f"{path}: label image has mode {im.mode}; expected a palette (P) or "
                                   "grayscale (L) PNG whose values are ids")
            arr = np.asarray(im)
    except OSError as err:
        raise EvalSetError(f"{path}: cannot read label image ({err})") from err
    if arr.size and (int(arr.max()) > 255 or int(arr.min()) < 0):
        raise EvalSetError(f"{path}: ids span [{int(arr.min())}, {int(arr.max())}]; expected 0..255")
    return torch.from_numpy(arr.astype(np.uint8))


# --------------------------------------------------------------------------------------- COCO detection
@dataclass
class DetectionTarget:
    """The ground-truth boxes of one image.

    Attributes:
        image_id: the COCO image ``id``.
        file_name: the image's ``file_name`` as in the JSON.
        path: the image file (``image_dir / file_name``), or ``None`` when no image folder was given.
        height: image height in pixels.
        width: image width in pixels.
        boxes: float32 ``(N, 4)`` ``x1, y1, x2, y2`` pixels (COCO ``[x, y, w, h]`` converted).
        labels: int64 ``(N,)`` contiguous class indices into :attr:`CocoDetectionSet.categories`.
        iscrowd: bool ``(N,)``.
        instance_ids: int64 ``(N,)`` ``instance_id`` of each box (stssl scenes), ``-1`` where absent.
    """

    image_id: int
    file_name: str
    path: Path | None
    height: int
    width: int
    boxes: torch.Tensor
    labels: torch.Tensor
    iscrowd: torch.Tensor
    instance_ids: torch.Tensor

    def as_torchmetrics_target(self) -> dict[str, torch.Tensor]:
        """``{"boxes", "labels", "iscrowd"}`` as ``torchmetrics.detection.MeanAveragePrecision`` takes them."""
        return {"boxes": self.boxes, "labels": self.labels, "iscrowd": self.iscrowd.long()}


@dataclass
class CocoDetectionSet:
    """A COCO detection set: contiguous categories and one :class:`DetectionTarget` per image (JSON order).

    Attributes:
        categories: class names; index ``i`` is label ``i``.
        category_ids: the COCO ``id`` of each contiguous label (sorted ascending).
        items: the images.
        source: where it was read from (for messages).
    """

    categories: list[str]
    category_ids: list[int]
    items: list[DetectionTarget]
    source: str = ""

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> DetectionTarget:
        return self.items[index]


def _require(obj: dict, keys: Sequence[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise EvalSetError(f"{where}: expected a JSON object with keys {', '.join(keys)}, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise EvalSetError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)}")


def coco_detection_from_dict(
    coco: dict,
    source: str = "<dict>",
    image_dir: str | Path | None = None,
    *,
    check_images: bool = True,
    drop_degenerate: bool = True,
) -> CocoDetectionSet:
    """Per-image targets from a COCO detection dict (``images``, ``annotations``, ``categories``).

    Labels are contiguous: the COCO category ids sorted ascending map to ``0..C-1``. Images without
    annotations get empty ``(0, 4)`` boxes. Boxes with zero width or height are dropped when
    ``drop_degenerate`` (as torchvision's detection references do).

    Args:
        coco: the parsed JSON.
        source: the file it came from (named in errors).
        image_dir: folder holding the images (``file_name`` relative to it); ``None`` leaves ``path`` unset.
        check_images: with ``image_dir``, fail at once on the first missing image file.
        drop_degenerate: drop boxes with ``w <= 0`` or ``h <= 0``.

    Raises:
        EvalSetError: a missing key (named with its record), an annotation for an unknown image or category.
    """
    _require(coco, ("images", "annotations", "categories"), source)
    categories = sorted(coco["categories"], key=lambda c: c.get("id", 0) if isinstance(c, dict) else 0)
    for i, cat in enumerate(categories):
        _require(cat, ("id", "name"), f"{source}: categories[{i}]")
    category_ids = [int(c["id"]) for c in categories]
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    per_image: dict[int, list[dict]] = {}
    for i, img in enumerate(coco["images"]):
        _require(img, ("id", "file_name"), f"{source}: images[{i}]")
        per_image[int(img["id"])] = []
    for i, ann in enumerate(coco["annotations"]):
        _require(ann, ("image_id", "category_id", "bbox"), f"{source}: annotations[{i}]")
        if int(ann["image_id"]) not in per_image:
            raise EvalSetError(f"{source}: annotations[{i}] has image_id {ann['image_id']} not in images")
        if int(ann["category_id"]) not in label_of:
            raise EvalSetError(f"{source}: annotations[{i}] has category_id {ann['category_id']} not in categories")
        if len(ann["bbox"]) != 4:
            raise EvalSetError(f"{source}: annotations[{i}] bbox must be [x, y, w, h], got {ann['bbox']}")
        per_image[int(ann["image_id"])].append(ann)
    root = Path(image_dir) if image_dir is not None else None
    items = []
    for img in coco["images"]:
        anns = per_image[int(img["id"])]
        if drop_degenerate:
            anns = [a for a in anns if float(a["bbox"][2]) > 0 and float(a["bbox"][3]) > 0]
        xywh = torch.tensor([[float(v) for v in a["bbox"]] for a in anns], dtype=torch.float32).reshape(-1, 4)
        path = root / img["file_name"] if root is not None else None
        if path is not None and check_images and not path.is_file():
            raise EvalSetError(f"{path}: missing image (images entry id {img['id']} of {source})")
        items.append(
            DetectionTarget(
                image_id=int(img["id"]),
                file_name=str(img["file_name"]),
                path=path,
                height=int(img.get("height", -1)),
                width=int(img.get("width", -1)),
                boxes=torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1),
                labels=torch.tensor([label_of[int(a["category_id"])] for a in anns], dtype=torch.int64),
                iscrowd=torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool),
                instance_ids=torch.tensor([int(a.get("instance_id", -1)) for a in anns], dtype=torch.int64),
            )
        )
    return CocoDetectionSet([str(c["name"]) for c in categories], category_ids, items, source)


def read_coco_detection(
    annotation_file: str | Path,
    image_dir: str | Path | None = None,
    *,
    check_images: bool = True,
    drop_degenerate: bool = True,
) -> CocoDetectionSet:
    """Read a COCO detection JSON (e.g. ``annotations/instances_val2017.json`` with images in ``val2017/``).

    See :func:`coco_detection_from_dict` for the conventions.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "instances.json")
        >>> _ = open(f, "w").write(json.dumps({"images": [{"id": 7, "file_name": "a.jpg", "height": 4, "width": 6}],
        ...     "annotations": [{"image_id": 7, "category_id": 3, "bbox": [1, 2, 3, 1]}],
        ...     "categories": [{"id": 3, "name": "car"}]}))
        >>> target = read_coco_detection(f)[0]
        >>> target.boxes.tolist(), target.labels.tolist()
        ([[1.0, 2.0, 4.0, 3.0]], [0])
    """
    path = Path(annotation_file)
    if not path.is_file():
        raise EvalSetError(f"{path}: missing COCO annotation file")
    try:
        coco = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EvalSetError(f"{path}: not valid JSON ({err})") from err
    return coco_detection_from_dict(coco, str(path), image_dir, check_images=check_images,
                                    drop_degenerate=drop_degenerate)


# --------------------------------------------------------------------------------------- scene format
@dataclass
class SceneEvalSet:
    """The evaluation ground truth of one stssl scene folder.

    Attributes:
        scene_dir: the folder.
        video_path: its ``video.mp4`` (frames are read with :mod:`stssl.data.readers` or ``scene_io.read_video``).
        semantic: uint8 ``(T, H, W)`` class indices into ``classes`` (no ignore label).
        classes: class names.
        detections: one :class:`DetectionTarget` per frame, ordered by frame (``image_id`` = frame index).
    """

    scene_dir: Path
    video_path: Path
    semantic: torch.Tensor
    classes: list[str]
    detections: CocoDetectionSet

    @property
    def num_frames(self) -> int:
        return int(self.semantic.shape[0])


def read_scene_eval(scene_dir: str | Path) -> SceneEvalSet:
    """Read the semantic maps (``semantic.npz`` + ``classes.json``) and boxes (``boxes.json``) of a scene folder.

    Raises:
        stssl.worlds.scene_io.SceneFormatError: naming the missing or malformed file (a ``ValueError``).
        EvalSetError: boxes that do not give one image per frame.
    """
    from stssl.worlds import scene_io

    d = Path(scene_dir)
    semantic, classes = scene_io.read_semantic(d)
    boxes_path = d / scene_io.BOXES_FILE
    detections = coco_detection_from_dict(scene_io.read_boxes(d), str(boxes_path))
    T = semantic.shape[0]
    detections.items.sort(key=lambda item: item.image_id)
    if [item.image_id for item in detections.items] != list(range(T)):
        raise EvalSetError(f"{boxes_path}: images must have ids 0..{T - 1} "
                           f"(one per frame of {scene_io.SEMANTIC_FILE})")
    return SceneEvalSet(d, d / scene_io.VIDEO_FILE, torch.from_numpy(np.ascontiguousarray(semantic)), classes,
                        detections)


# ----------------------------------------------------------------------------------------- Cityscapes
#: The 19 Cityscapes evaluation classes, in train-id order.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# label id -> train id for the labels that are evaluated (cityscapesScripts' labels.py); all others -> 255.
_EVALUATED_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
#: uint8 ``(256,)`` lookup table from Cityscapes label ids to train ids (255 = ignore).
CITYSCAPES_TRAIN_IDS = torch.full((256,), 255, dtype=torch.uint8)
CITYSCAPES_TRAIN_IDS[list(_EVALUATED_LABEL_IDS)] = torch.arange(19, dtype=torch.uint8)


def labelids_to_trainids(label_ids: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Map Cityscapes label ids (``*_labelIds.png`` values) to the 19 train ids; everything else becomes 255."""
    ids = label_ids if isinstance(label_ids, torch.Tensor) else torch.from_numpy(np.asarray(label_ids))
    if ids.is_floating_point() or (ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > 255)):
        raise ValueError("labelids_to_trainids: expected integer label ids in 0..255")
    return CITYSCAPES_TRAIN_IDS.to(ids.device)[ids.long()]


@dataclass
class CityscapesItem:
    """One annotated Cityscapes image: ``stem`` is ``<city>_<sequence>_<frame>`` (e.g. ``aachen_000000_000019``)."""

    stem: str
    city: str
    image: Path
    label: Path


def cityscapes_items(
    root: str | Path,
    split: str = "val",
    *,
    image_suffix: str = "_leftImg8bit.png",
    label_suffix: str = "_gtFine_labelIds.png",
    image_folder: str = "leftImg8bit",
    label_folder: str = "gtFine",
) -> list[CityscapesItem]:
    """List the image/label pairs of a Cityscapes-style tree, sorted by city then stem.

    Raises:
        EvalSetError: naming the missing split folder, an empty split, or the label file missing for an image.
    """
    root = Path(root)
    image_root = root / image_folder / split
    if not image_root.is_dir():
        raise EvalSetError(f"{image_root}: missing; a Cityscapes-style root needs "
                           f"{image_folder}/{split}/<city>/*{image_suffix}")
    items = []
    for image in sorted(image_root.glob(f"*/*{image_suffix}")):
        stem = image.name[: -len(image_suffix)]
        city = image.parent.name
        label = root / label_folder / split / city / f"{stem}{label_suffix}"
        if not label.is_file():
            raise EvalSetError(f"{label}: missing label for {image}")
        items.append(CityscapesItem(stem, city, image, label))
    if not items:
        raise EvalSetError(f"{image_root}: no images matching <city>/*{image_suffix}")
    return items


def read_cityscapes_item(
    item: CityscapesItem, *, map_to_train_ids: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one pair: uint8 ``(H, W, 3)`` RGB and uint8 ``(H, W)`` labels (train ids, 255 = ignore, unless
    ``map_to_train_ids=False``, which returns the raw ids).

    Raises:
        EvalSetError: a missing or unreadable file, or image and label sizes that differ.
    """
    image = read_image(item.image)
    label = read_label_png(item.label)
    if tuple(image.shape[:2]) != tuple(label.shape):
        raise EvalSetError(f"{item.label}: size {tuple(label.shape)} differs from {item.image} "
                           f"{tuple(image.shape[:2])}")
    return image, labelids_to_trainids(label) if map_to_train_ids else label


def cityscapes_clip_paths(
    root: str | Path,
    item: CityscapesItem,
    offsets: Sequence[int],
    split: str = "val",
    *,
    sequence_folder: str = "leftImg8bit_sequence",
    image_suffix: str = "_leftImg8bit.png",
) -> list[Path]:
    """Frames around an annotated one for per-clip models: ``<sequence_folder>/<split>/<city>/<city>_<seq>_
    <frame + offset:06d><image_suffix>`` for each offset (Cityscapes annotates frame 19 of each 30-frame snippet).

    Raises:
        EvalSetError: a stem that is not ``<city>_<seq>_<frame>``, or naming the first missing frame file.
    """
    parts = item.stem.rsplit("_", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        raise EvalSetError(f"{item.image}: stem {item.stem!r} is not <city>_<sequence>_<frame>")
    city, seq, frame = parts
    folder = Path(root) / sequence_folder / split / item.city
    paths = []
    for off in offsets:
        path = folder / f"{city}_{seq}_{int(frame) + off:0{len(parts[2])}d}{image_suffix}"
        if not path.is_file():
            raise EvalSetError(f"{path}: missing sequence frame (offset {off} of {item.stem})")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------- DAVIS
@dataclass
class DavisSequence:
    """One DAVIS sequence.

    Attributes:
        name: the sequence (folder) name.
        frame_names: frame file stems in order (``00000``, ``00001``, ...).
        frames: uint8 ``(T, H, W, 3)`` RGB, or ``None`` when read without frames.
        first_mask: uint8 ``(H, W)`` object ids of frame 0 (0 = background, 255 = void).
        masks: uint8 ``(T, H, W)`` object ids of every frame, or ``None`` when not every frame is annotated
            (DAVIS test-dev gives only the first).
        num_objects: the largest object id in ``first_mask`` (DAVIS's object count).
    """

    name: str
    frame_names: list[str]
    frames: torch.Tensor | None
    first_mask: torch.Tensor
    masks: torch.Tensor | None
    num_objects: int


def davis_sequences(root: str | Path, split: str | None = "val", *, year: str = "2017",
                    resolution: str = "480p") -> list[str]:
    """Sequence names of a split from ``ImageSets/<year>/<split>.txt``; ``split=None`` lists every folder
    under ``JPEGImages/<resolution>``.

    Raises:
        EvalSetError: naming the missing list file or image folder.
    """
    root = Path(root)
    if split is None:
        folder = root / "JPEGImages" / resolution
        if not folder.is_dir():
            raise EvalSetError(f"{folder}: missing; a DAVIS root needs JPEGImages/{resolution}/<sequence>/*.jpg")
        return sorted(p.name for p in folder.iterdir() if p.is_dir())
    listing = root / "ImageSets" / year / f"{split}.txt"
    if not listing.is_file():
        raise EvalSetError(f"{listing}: missing; a DAVIS root lists its {split} sequences there")
    return [line.strip() for line in listing.read_text().splitlines() if line.strip()]


def read_davis_sequence(root: str | Path, name: str, *, resolution: str = "480p",
                        load_frames: bool = True) -> DavisSequence:
    """Read a sequence's frames and palette-PNG annotations (indices = object ids).

    Frames are the ``*.jpg`` files of ``JPEGImages/<resolution>/<name>`` sorted by name; annotations are the
    ``Annotations/<resolution>/<name>/<stem>.png`` of the same stems.

    Raises:
        EvalSetError: naming a missing folder, the first frame's missing annotation, or a size mismatch.
    """
    root = Path(root)
    image_dir = root / "JPEGImages" / resolution / name
    mask_dir = root / "Annotations" / resolution / name
    if not image_dir.is_dir():
        raise EvalSetError(f"{image_dir}: missing; expected the frames of DAVIS sequence {name!r} (*.jpg)")
    images = sorted(image_dir.glob("*.jpg"))
    if not images:
        raise EvalSetError(f"{image_dir}: no *.jpg frames")
    if not mask_dir.is_dir():
        raise EvalSetError(f"{mask_dir}: missing; expected the annotations of DAVIS sequence {name!r} (*.png)")
    stems = [p.stem for p in images]
    first_path = mask_dir / f"{stems[0]}.png"
    if not first_path.is_file():
        raise EvalSetError(f"{first_path}: missing first-frame annotation of DAVIS sequence {name!r}")
    first_mask = read_label_png(first_path)
    mask_paths = [mask_dir / f"{s}.png" for s in stems]
    masks = None
    if all(p.is_file() for p in mask_paths):
        masks = torch.stack([first_mask] + [read_label_png(p) for p in mask_paths[1:]])
        bad = [p for p, m in zip(mask_paths, masks, strict=True) if m.shape != first_mask.shape]
        if bad:
            raise EvalSetError(f"{bad[0]}: size differs from {first_path} {tuple(first_mask.shape)}")
    frames = None
    if load_frames:
        frames = torch.stack([read_image(p) for p in images])
        if tuple(frames.shape[1:3]) != tuple(first_mask.shape):
            raise EvalSetError(f"{first_path}: size {tuple(first_mask.shape)} differs from the frames "
                               f"{tuple(frames.shape[1:3])} in {image_dir}")
    valid = first_mask[first_mask != 255]
    num_objects = int(valid.max()) if valid.numel() else 0
    return DavisSequence(name, stems, frames, first_mask, masks, num_objects)
