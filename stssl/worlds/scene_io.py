"""The stssl scene format: one folder per rendered (or recorded) sequence.

Files (see README.md, "Scene format"):

- ``video.mp4``: H.264, short GOP, the frames.
- ``calib.json``: ``{"K": 3x3 pixels, "width": W, "height": H, "fps": f}``; ``K`` is at ``width`` x ``height``.
- ``poses.txt``: KITTI odometry format, one line per frame, 12 numbers: the row-major 3x4 ``world_from_camera``
  matrix, metres.
- ``depth.npz``: array ``depth`` ``(T, H, W)`` float32 metric depth along the optical axis (z), 0 = invalid.
- ``semantic.npz``: array ``semantic`` ``(T, H, W)`` uint8, with ``classes.json`` (list of class names).
- ``boxes.json``: COCO-format object boxes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

VIDEO_FILE = "video.mp4"
CALIB_FILE = "calib.json"
POSES_FILE = "poses.txt"
DEPTH_FILE = "depth.npz"
SEMANTIC_FILE = "semantic.npz"
CLASSES_FILE = "classes.json"
BOXES_FILE = "boxes.json"


class SceneFormatError(ValueError):
    """A scene folder or one of its files does not follow the stssl scene format."""


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
    missing = [k for k in ("K", "width", "height") if k not in raw]
    if missing:
        raise SceneFormatError(f"{path}: missing keys {missing}; expected K (3x3 pixels), width, height, fps")
    K = np.asarray(raw["K"], dtype=np.float64)
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
