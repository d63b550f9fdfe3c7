"""The stssl scene format: one folder per rendered (or recorded) sequence.

Files (all frames of a scene share one resolution ``H`` x ``W``; ``T`` frames):

- ``video.mp4``: H.264 (libx264, yuv420p, CRF 18, GOP 10, no B-frames) written with PyAV; ``H`` and ``W``
  must be even (yuv420p halves the chroma planes).
- ``calib.json``: ``{"K": 3x3 pixels, "width": W, "height": H, "fps": f}``; ``K`` is at ``width`` x ``height``.
- ``poses.txt``: KITTI odometry format, one line per frame, 12 numbers: the row-major 3x4 ``world_from_camera``
  matrix, metres. Camera frame: ``x`` right, ``y`` down, ``z`` forward (OpenCV/KITTI).
- ``depth.npz``: array ``depth`` ``(T, H, W)`` float32 metric depth along the optical axis (z), 0 = invalid.
- ``semantic.npz``: array ``semantic`` ``(T, H, W)`` uint8 class indices, with ``classes.json`` (list of class
  names; index ``i`` names class ``i``).
- ``boxes.json``: COCO-format object boxes: ``images`` (one per frame, ``id`` = frame index), ``annotations``
  (``bbox`` ``[x, y, w, h]`` pixels, ``instance_id`` stable across frames), ``categories``.
- ``meta.json`` (optional): how the scene was made (world name, seed, knobs).

Every reader raises :class:`SceneFormatError` naming the file and what it expected. Folders are written to a
temporary sibling and renamed into place (:func:`ensure_world`), so a folder with the final name is complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "Scene",
    "SceneFormatError",
    "read_calib",
    "write_calib",
    "read_poses",
    "write_poses",
    "read_depth",
    "read_semantic",
    "read_boxes",
    "read_video",
    "write_video",
    "write_scene",
    "read_scene",
    "scene_dir_name",
    "ensure_world",
]

VIDEO_FILE = "video.mp4"
CALIB_FILE = "calib.json"
POSES_FILE = "poses.txt"
DEPTH_FILE = "depth.npz"
SEMANTIC_FILE = "semantic.npz"
CLASSES_FILE = "classes.json"
BOXES_FILE = "boxes.json"
META_FILE = "meta.json"
REQUIRED_FILES = (VIDEO_FILE, CALIB_FILE, POSES_FILE, DEPTH_FILE, SEMANTIC_FILE, CLASSES_FILE, BOXES_FILE)


class SceneFormatError(ValueError):
    """A scene folder or one of its files does not follow the stssl scene format."""


@dataclass
class Scene:
    """A sequence with exact ground truth.

    Attributes:
        frames: uint8 ``(T, H, W, 3)`` RGB, or ``None`` when read without the video.
        K: float64 ``(3, 3)`` intrinsics in pixels at ``H`` x ``W``.
        world_from_camera: float64 ``(T, 4, 4)`` camera poses, metres (camera ``x`` right, ``y`` down,
            ``z`` forward).
        depth: float32 ``(T, H, W)`` z-depth in metres, 0 = invalid (sky, nothing hit).
        semantic: uint8 ``(T, H, W)`` indices into ``classes``.
        classes: class names.
        boxes: COCO dict (``images``, ``annotations``, ``categories``), one image per frame.
        fps: frames per second.
        meta: how the scene was made (world, seed, knobs); free-form.
    """

    frames: torch.Tensor | None
    K: torch.Tensor
    world_from_camera: torch.Tensor
    depth: torch.Tensor
    semantic: torch.Tensor
    classes: list[str]
    boxes: dict
    fps: float
    meta: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.depth.shape[0])

    @property
    def height(self) -> int:
        return int(self.depth.shape[1])

    @property
    def width(self) -> int:
        return int(self.depth.shape[2])


def _missing(path: Path, what: str) -> SceneFormatError:
    return SceneFormatError(f"{path}: missing; a scene folder needs {path.name} ({what})")


def read_calib(scene_dir: str | Path) -> dict:
    """Read ``calib.json``: returns ``{"K": (3, 3) float64 ndarray, "width": int, "height": int, "fps": float}``.

    Raises:
        SceneFormatError: naming the file when it is missing or malformed.
    """
    path = Path(scene_dir) / CALIB_FILE
    if not path.is_file():
        raise SceneFormatError(f"{path}: missing; a scene folder needs {CALIB_FILE} with keys K, width, height, fps")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SceneFormatError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise SceneFormatError(f"{path}: expected a JSON object with keys K, width, height, fps")
    missing = [k for k in ("K", "width", "height") if k not in raw]
    if missing:
        raise SceneFormatError(f"{path}: missing keys {missing}; expected K (3x3 pixels), width, height, fps")
    try:
        K = np.asarray(raw["K"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise SceneFormatError(f"{path}: key 'K' must be a 3x3 list of numbers ({err})") from err
    if K.shape != (3, 3):
        raise SceneFormatError(f"{path}: key 'K' must be 3x3, got shape {K.shape}")
    return {"K": K, "width": int(raw["width"]), "height": int(raw["height"]), "fps": float(raw.get("fps", 10.0))}


def write_calib(scene_dir: str | Path, K: np.ndarray, width: int, height: int, fps: float) -> Path:
    """Write ``calib.json`` (``K`` in pixels at ``width`` x ``height``)."""
    path = Path(scene_dir) / CALIB_FILE
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"write_calib: K must be (3, 3), got {K.shape}")
    path.write_text(json.dumps({"K": K.tolist(), "width": int(width), "height": int(height), "fps": float(fps)}, indent=1))
    return path


def write_poses(scene_dir: str | Path, world_from_camera: np.ndarray | torch.Tensor) -> Path:
    """Write ``poses.txt`` (KITTI odometry: row-major 3x4 ``world_from_camera`` per line).

    Args:
        scene_dir: the scene folder.
        world_from_camera: ``(T, 4, 4)`` (or ``(T, 3, 4)``).
    """
    poses = np.asarray(world_from_camera, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"write_poses: world_from_camera must be (T, 4, 4) or (T, 3, 4), got {poses.shape}")
    path = Path(scene_dir) / POSES_FILE
    np.savetxt(path, poses[:, :3, :4].reshape(len(poses), 12), fmt="%.9e")
    return path


def read_poses(scene_dir: str | Path) -> np.ndarray:
    """Read ``poses.txt`` as float64 ``(T, 4, 4)`` ``world_from_camera``.

    Raises:
        SceneFormatError: naming the file when it is missing or a line does not hold 12 numbers.
    """
    path = Path(scene_dir) / POSES_FILE
    if not path.is_file():
        raise _missing(path, "KITTI odometry poses, 12 numbers per line")
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            vals = [float(v) for v in line.split()]
        except ValueError as err:
            raise SceneFormatError(f"{path}: line {i + 1} is not numeric ({err})") from err
        if len(vals) != 12:
            raise SceneFormatError(f"{path}: line {i + 1} has {len(vals)} numbers, expected 12 (row-major 3x4)")
        rows.append(vals)
    if not rows:
        raise SceneFormatError(f"{path}: no poses; expected one line of 12 numbers per frame")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3, :4] = np.asarray(rows).reshape(-1, 3, 4)
    return poses


def _read_npz(path: Path, key: str, ndim: int, what: str) -> np.ndarray:
    if not path.is_file():
        raise _missing(path, what)
    try:
        with np.load(path) as data:
            if key not in data.files:
                raise SceneFormatError(f"{path}: no array '{key}' (found {data.files}); expected {what}")
            arr = data[key]
    except SceneFormatError:
        raise
    except Exception as err:  # zipfile/pickle errors vary by numpy version
        raise SceneFormatError(f"{path}: not a readable .npz file ({err}); expected {what}") from err
    if arr.ndim != ndim:
        raise SceneFormatError(f"{path}: array '{key}' has shape {arr.shape}; expected {what}")
    return arr


def read_depth(scene_dir: str | Path) -> np.ndarray:
    """Read ``depth.npz`` as float32 ``(T, H, W)`` z-depth in metres (0 = invalid)."""
    path = Path(scene_dir) / DEPTH_FILE
    return _read_npz(path, "depth", 3, "array 'depth' (T, H, W) float32 metres").astype(np.float32, copy=False)


def read_semantic(scene_dir: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read ``semantic.npz`` (uint8 ``(T, H, W)``) and ``classes.json``; checks indices name a class."""
    path = Path(scene_dir) / SEMANTIC_FILE
    sem = _read_npz(path, "semantic", 3, "array 'semantic' (T, H, W) uint8 class indices")
    cpath = Path(scene_dir) / CLASSES_FILE
    if not cpath.is_file():
        raise _missing(cpath, "JSON list of class names")
    try:
        classes = json.loads(cpath.read_text())
    except json.JSONDecodeError as err:
        raise SceneFormatError(f"{cpath}: not valid JSON ({err}); expected a list of class names") from err
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise SceneFormatError(f"{cpath}: expected a JSON list of class names, got {type(classes).__name__}")
    if sem.size and int(sem.max()) >= len(classes):
        raise SceneFormatError(f"{path}: class index {int(sem.max())} but {cpath.name} names {len(classes)} classes")
    return sem.astype(np.uint8, copy=False), classes


def read_boxes(scene_dir: str | Path) -> dict:
    """Read ``boxes.json`` (COCO: ``images``, ``annotations``, ``categories``)."""
    path = Path(scene_dir) / BOXES_FILE
    if not path.is_file():
        raise _missing(path, "COCO dict with images, annotations, categories")
    try:
        boxes = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SceneFormatError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(boxes, dict) or any(k not in boxes for k in ("images", "annotations", "categories")):
        raise SceneFormatError(f"{path}: expected a COCO dict with keys images, annotations, categories")
    for ann in boxes["annotations"]:
        if len(ann.get("bbox", ())) != 4:
            raise SceneFormatError(f"{path}: annotation {ann.get('id')} needs bbox [x, y, w, h]")
    return boxes


def write_video(path: str | Path, frames: torch.Tensor | np.ndarray, fps: float, crf: int = 18, gop: int = 10) -> Path:
    """Encode uint8 ``(T, H, W, 3)`` RGB frames to H.264 (yuv420p) with PyAV.

    Raises:
        ValueError: when ``H`` or ``W`` is odd (yuv420p needs even sizes) or the frames are not uint8 RGB.
    """
    import av

    arr = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"write_video({path}): frames must be uint8 (T, H, W, 3), got {arr.dtype} {arr.shape}")
    _, H, W, _ = arr.shape
    if H % 2 or W % 2:
        raise ValueError(f"write_video({path}): H.264 yuv420p needs even height and width, got {H}x{W}")
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": str(crf), "g": str(gop), "keyint_min": str(gop), "bf": "0", "threads": "1"}
        for img in arr:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def read_video(path: str | Path) -> torch.Tensor:
    """Decode a video with PyAV to uint8 ``(T, H, W, 3)`` RGB."""
    import av

    path = Path(path)
    if not path.is_file():
        raise _missing(path, "H.264 video")
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.FFmpegError as err:
        raise SceneFormatError(f"{path}: cannot decode video ({err})") from err
    if not frames:
        raise SceneFormatError(f"{path}: no video frames")
    return torch.from_numpy(np.stack(frames))


def write_scene(scene: Scene, out_dir: str | Path) -> Path:
    """Write ``scene`` as a scene folder (see the module docstring); returns the folder.

    Raises:
        ValueError: when the scene's arrays disagree in shape or its frames have odd sizes.
    """
    out = Path(out_dir)
    if scene.frames is None:
        raise ValueError("write_scene: scene.frames is None; a scene folder needs its video")
    T, H, W = scene.depth.shape
    if tuple(scene.frames.shape) != (T, H, W, 3) or tuple(scene.semantic.shape) != (T, H, W):
        raise ValueError(
            f"write_scene: frames {tuple(scene.frames.shape)}, depth {(T, H, W)} and semantic "
            f"{tuple(scene.semantic.shape)} must agree as (T, H, W, 3) / (T, H, W)"
        )
    if tuple(scene.world_from_camera.shape) != (T, 4, 4):
        raise ValueError(f"write_scene: world_from_camera must be ({T}, 4, 4), got {tuple(scene.world_from_camera.shape)}")
    out.mkdir(parents=True, exist_ok=True)
    write_video(out / VIDEO_FILE, scene.frames, scene.fps)
    write_calib(out, np.asarray(scene.K, dtype=np.float64), W, H, scene.fps)
    write_poses(out, np.asarray(scene.world_from_camera))
    np.savez_compressed(out / DEPTH_FILE, depth=np.asarray(scene.depth, dtype=np.float32))
    np.savez_compressed(out / SEMANTIC_FILE, semantic=np.asarray(scene.semantic, dtype=np.uint8))
    (out / CLASSES_FILE).write_text(json.dumps(list(scene.classes)))
    (out / BOXES_FILE).write_text(json.dumps(scene.boxes))
    (out / META_FILE).write_text(json.dumps(scene.meta, indent=1, default=str))
    return out


def read_scene(scene_dir: str | Path, load_video: bool = False) -> Scene:
    """Read a scene folder's ground truth (and, if ``load_video``, decode its frames with PyAV).

    Returns:
        A :class:`Scene` (``frames`` is ``None`` unless ``load_video``).

    Raises:
        SceneFormatError: naming the file that is missing, malformed or inconsistent with the others.
    """
    d = Path(scene_dir)
    if not d.is_dir():
        raise SceneFormatError(f"{d}: not a directory; expected a scene folder with {', '.join(REQUIRED_FILES)}")
    calib = read_calib(d)
    poses = read_poses(d)
    depth = read_depth(d)
    semantic, classes = read_semantic(d)
    boxes = read_boxes(d)
    T, H, W = depth.shape
    if (calib["height"], calib["width"]) != (H, W):
        raise SceneFormatError(f"{d / CALIB_FILE}: size {calib['height']}x{calib['width']} but depth is {H}x{W}")
    if semantic.shape != depth.shape:
        raise SceneFormatError(f"{d / SEMANTIC_FILE}: shape {semantic.shape} but depth has {depth.shape}")
    if len(poses) != T:
        raise SceneFormatError(f"{d / POSES_FILE}: {len(poses)} poses but depth has {T} frames")
    frames = None
    if load_video:
        frames = read_video(d / VIDEO_FILE)
        if tuple(frames.shape) != (T, H, W, 3):
            raise SceneFormatError(f"{d / VIDEO_FILE}: decoded {tuple(frames.shape)}, expected {(T, H, W, 3)}")
    elif not (d / VIDEO_FILE).is_file():
        raise _missing(d / VIDEO_FILE, "H.264 video")
    meta = {}
    if (d / META_FILE).is_file():
        try:
            meta = json.loads((d / META_FILE).read_text())
        except json.JSONDecodeError as err:
            raise SceneFormatError(f"{d / META_FILE}: not valid JSON ({err})") from err
    return Scene(
        frames=frames,
        K=torch.from_numpy(calib["K"]),
        world_from_camera=torch.from_numpy(poses),
        depth=torch.from_numpy(np.ascontiguousarray(depth)),
        semantic=torch.from_numpy(np.ascontiguousarray(semantic)),
        classes=classes,
        boxes=boxes,
        fps=calib["fps"],
        meta=meta,
    )


def scene_dir_name(name: str, *, frames: int, height: int, width: int, seed: int) -> str:
    """The folder name :func:`ensure_world` uses: ``<name>_s<seed>_<frames>x<height>x<width>``."""
    return f"{name}_s{seed}_{frames}x{height}x{width}"


def ensure_world(name: str, root: str | Path, *, frames: int, height: int, width: int, seed: int = 0) -> Path:
    """Render world ``name`` into ``root/<name>_s<seed>_<frames>x<height>x<width>/`` unless already there.

    The scene is written to a temporary folder in ``root`` and renamed into place, so an interrupted render
    never leaves a folder with the final name.

    Raises:
        KeyError: when ``name`` is not in :data:`stssl.worlds.WORLDS` (the message lists the choices).
    """
    from stssl.worlds import WORLDS

    if name not in WORLDS:
        raise KeyError(f"unknown world {name!r}; choose from {sorted(WORLDS)}")
    root = Path(root)
    final = root / scene_dir_name(name, frames=frames, height=height, width=width, seed=seed)
    if final.is_dir() and all((final / f).is_file() for f in REQUIRED_FILES):
        return final
    root.mkdir(parents=True, exist_ok=True)
    logger.info("rendering the %s world (seed %d, %d frames, %dx%d) into %s", name, seed, frames, height, width, final)
    started = time.perf_counter()
    scene = WORLDS[name](frames=frames, height=height, width=width, seed=seed)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp", dir=root))
    try:
        write_scene(scene, tmp)
        if final.exists():  # an incomplete leftover (or a concurrent writer finished first)
            if all((final / f).is_file() for f in REQUIRED_FILES):
                return final
            shutil.rmtree(final)
        os.replace(tmp, final)
        logger.info("rendered %s in %.1f s", final.name, time.perf_counter() - started)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
