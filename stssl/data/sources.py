"""Where videos come from: manifests, scene folders, KITTI raw, class folders, plain folders of videos.

Every loader returns :class:`VideoRecord` objects: a path (a video file or a folder of frames) plus what is
known about it (class label, intrinsics at a calibration size, a frame-count hint, the scene folder).
:func:`load_sources` detects the layout of each path it is given.

Example:
    >>> rec = VideoRecord("clips/a.mp4", label=3)
    >>> rec.label, rec.K is None
    (3, True)
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stssl.data.readers import FRAME_SUFFIXES

__all__ = [
    "VIDEO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "MANIFEST_EXTENSIONS",
    "VideoRecord",
    "SourceError",
    "read_manifest",
    "write_manifest",
    "scene_records",
    "kitti_raw_records",
    "class_folder_records",
    "video_folder_records",
    "load_sources",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
IMAGE_EXTENSIONS = tuple(sorted(FRAME_SUFFIXES))  # what the frames reader decodes
MANIFEST_EXTENSIONS = (".csv", ".jsonl")

LAYOUTS = """recognised layouts:
  - a manifest file (.csv or .jsonl) with a 'path' column
  - a video file (""" + ", ".join(VIDEO_EXTENSIONS) + """)
  - a scene folder (calib.json + video.mp4), or a folder of scene folders
  - KITTI raw: a date folder with calib_cam_to_cam.txt and <date>_drive_XXXX_sync/image_02/data/*.png,
    or a folder of date folders
  - class folders: root/<class>/<video files> (labels = sorted class index)
  - a folder of video files
  - a folder of frames (""" + ", ".join(IMAGE_EXTENSIONS) + ")"


class SourceError(ValueError):
    """A source path, manifest or calibration file cannot be understood (the message names the file)."""


@dataclass
class VideoRecord:
    """One video and what is known about it.

    Attributes:
        path: a video file or a folder of frames.
        backend: reader backend hint (e.g. ``"frames"``), or None to use the dataset's choice.
        label: class label, when known.
        K: ``(3, 3)`` float64 intrinsics in pixels at ``calib_size``, or None.
        calib_size: ``(H, W)`` at which ``K`` is expressed; None means the video's own frame size.
        num_frames: frame-count hint (e.g. from a probed manifest); readers are the authority.
        scene_dir: the scene folder (stssl scene format) this video belongs to, for ground truth.
    """

    path: str
    backend: str | None = None
    label: int | None = None
    K: np.ndarray | None = field(default=None, repr=False)
    calib_size: tuple[int, int] | None = None
    num_frames: int | None = None
    scene_dir: str | None = None

    def __post_init__(self) -> None:
        self.path = str(self.path)
        if self.K is not None:
            K = np.array(self.K, dtype=np.float64)  # a private copy
            if K.shape != (3, 3):
                raise SourceError(f"{self.path}: intrinsics K must be 3x3, got shape {K.shape}")
            self.K = K
        if self.calib_size is not None:
            h, w = (int(v) for v in self.calib_size)
            if h <= 0 or w <= 0:
                raise SourceError(f"{self.path}: calib_size must be positive (H, W), got {self.calib_size}")
            self.calib_size = (h, w)


# ----------------------------------------------------------------------------------------------- manifests
_NUMBER_SPLIT = str.maketrans({",": " ", ";": " ", "[": " ", "]": " "})


def _numbers(value: object, where: str, column: str, count: int | None = None) -> list[float]:
    items: list[object] = []
    if isinstance(value, (list, tuple)):
        for v in value:
            items.extend(v if isinstance(v, (list, tuple)) else [v])
    else:
        items.extend(str(value).translate(_NUMBER_SPLIT).split())
    try:
        out = [float(v) for v in items]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SourceError(f"{where}, column '{column}': expected numbers, got {value!r}") from None
    if count is not None and len(out) != count:
        raise SourceError(f"{where}, column '{column}': expected {count} numbers, got {len(out)} ({value!r})")
    if not all(math.isfinite(v) for v in out):
        raise SourceError(f"{where}, column '{column}': numbers must be finite, got {value!r}")
    return out


def _int(value: object, where: str, column: str, minimum: int | None = None) -> int:
    try:
        f = float(value)  # type: ignore[arg-type]
        if not f.is_integer():
            raise ValueError
        out = int(f)
    except (TypeError, ValueError):
        raise SourceError(f"{where}, column '{column}': expected an integer, got {value!r}") from None
    if minimum is not None and out < minimum:
        raise SourceError(f"{where}, column '{column}': expected an integer >= {minimum}, got {out}")
    return out


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _record_from_row(row: dict, where: str, base: Path) -> VideoRecord:
    if _blank(row.get("path")):
        raise SourceError(f"{where}, column 'path': missing or empty (every row needs a video path)")
    p = Path(str(row["path"]).strip()).expanduser()
    path = p if p.is_absolute() else base / p
    label = None if _blank(row.get("label")) else _int(row["label"], where, "label", minimum=0)
    num_frames = None if _blank(row.get("num_frames")) else _int(row["num_frames"], where, "num_frames", 0)
    has_size = not _blank(row.get("width")) or not _blank(row.get("height"))
    calib_size = None
    if has_size:
        if _blank(row.get("width")) or _blank(row.get("height")):
            raise SourceError(f"{where}, columns 'width'/'height': give both or neither")
        calib_size = (_int(row["height"], where, "height", 1), _int(row["width"], where, "width", 1))
    K = None
    fxy = [c for c in ("fx", "fy", "cx", "cy") if not _blank(row.get(c))]
    if not _blank(row.get("K")):
        if fxy:
            raise SourceError(f"{where}: give intrinsics either as 'K' or as fx,fy,cx,cy, not both")
        K = np.asarray(_numbers(row["K"], where, "K", 9), dtype=np.float64).reshape(3, 3)
    elif fxy:
        missing = [c for c in ("fx", "fy", "cx", "cy") if c not in fxy]
        if missing:
            raise SourceError(f"{where}: intrinsics need all of fx, fy, cx, cy; missing {missing}")
        fx, fy, cx, cy = (_numbers(row[c], where, c, 1)[0] for c in ("fx", "fy", "cx", "cy"))
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    if K is not None and (K[0, 0] <= 0 or K[1, 1] <= 0):
        raise SourceError(f"{where}: focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")
    backend = None if _blank(row.get("backend")) else str(row["backend"]).strip()
    scene_dir = None
    if not _blank(row.get("scene_dir")):
        s = Path(str(row["scene_dir"]).strip()).expanduser()
        scene_dir = str(s if s.is_absolute() else base / s)
    return VideoRecord(str(path), backend, label, K, calib_size, num_frames, scene_dir)


def read_manifest(path: str | Path) -> list[VideoRecord]:
    """Read a CSV (header row) or JSONL (one object per line) manifest.

    Columns / keys: ``path`` (required; relative paths resolve against the manifest's folder), and optional
    ``label`` (int >= 0), ``K`` (9 numbers, row-major; in CSV separated by spaces, commas or semicolons),
    or ``fx, fy, cx, cy``; ``width``, ``height`` (the size ``K`` is expressed at; default the video's size),
    ``num_frames``, ``backend``, ``scene_dir``. Other columns are ignored; blank cells mean "unknown".

    Raises:
        SourceError: naming the file, line and column of the first bad value.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: manifest not found")
    suffix = path.suffix.lower()
    base = path.resolve().parent
    records: list[VideoRecord] = []
    if suffix == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "path" not in [c.strip() for c in reader.fieldnames]:
                raise SourceError(f"{path}, line 1: CSV header must contain a 'path' column, got {reader.fieldnames}")
            for row in reader:
                row = {(k or "").strip(): v for k, v in row.items()}
                if all(_blank(v) for v in row.values()):
                    continue
                records.append(_record_from_row(row, f"{path}, line {reader.line_num}", base))
    elif suffix == ".jsonl":
        with path.open() as f:
            for num, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise SourceError(f"{path}, line {num}: not valid JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise SourceError(f"{path}, line {num}: expected a JSON object, got {type(row).__name__}")
                records.append(_record_from_row(row, f"{path}, line {num}", base))
    else:
        raise SourceError(f"{path}: unknown manifest type {suffix!r}; use one of {MANIFEST_EXTENSIONS}")
    if not records:
        raise SourceError(f"{path}: manifest has no rows")
    return records


def write_manifest(records: Iterable[VideoRecord], path: str | Path, extra: Sequence[dict] | None = None) -> Path:
    """Write records as a CSV or JSONL manifest (by suffix); paths are written relative to its folder.

    Args:
        records: the records to write.
        path: the manifest file (``.csv`` or ``.jsonl``).
        extra: optional per-record dicts of extra columns (e.g. ``fps``, ``class``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_EXTENSIONS:
        raise SourceError(f"{path}: unknown manifest type {suffix!r}; use one of {MANIFEST_EXTENSIONS}")
    base = path.resolve().parent
    rows = []
    records = list(records)
    def relative(where: str) -> str:
        p = Path(where).resolve()
        try:
            return p.relative_to(base).as_posix()
        except ValueError:
            return str(p)

    for i, rec in enumerate(records):
        row: dict = {"path": relative(rec.path)}
        if rec.label is not None:
            row["label"] = rec.label
        if rec.num_frames is not None:
            row["num_frames"] = rec.num_frames
        if rec.backend is not None:
            row["backend"] = rec.backend
        if rec.K is not None:
            row["K"] = [float(v) for v in rec.K.reshape(-1)]
            if rec.calib_size is not None:
                row["height"], row["width"] = rec.calib_size
        if rec.scene_dir is not None:
            row["scene_dir"] = relative(rec.scene_dir)
        if extra is not None:
            row.update(extra[i])
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        columns: list[str] = []
        for r in rows:
            columns.extend(c for c in r if c not in columns)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (" ".join(repr(x) for x in v) if isinstance(v, list) else v) for k, v in r.items()})
    return path


# ----------------------------------------------------------------------------------------------- scenes
def _is_scene(d: Path) -> bool:
    from stssl.worlds.scene_io import CALIB_FILE, VIDEO_FILE

    return (d / CALIB_FILE).is_file() and (d / VIDEO_FILE).is_file()


def scene_records(root: str | Path) -> list[VideoRecord]:
    """Records for a scene folder (``calib.json`` + ``video.mp4``) or a folder of scene folders (sorted).

    ``K`` comes from ``calib.json`` at ``(height, width)``; ``scene_dir`` points at the scene.
    """
    from stssl.worlds.scene_io import VIDEO_FILE, read_calib

    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder")
    scenes = [root] if _is_scene(root) else sorted(d for d in root.iterdir() if d.is_dir() and _is_scene(d))
    if not scenes:
        raise SourceError(f"{root}: no scene folders (calib.json + {VIDEO_FILE}) found")
    records = []
    for d in scenes:
        calib = read_calib(d)
        records.append(
            VideoRecord(str(d / VIDEO_FILE), K=calib["K"], calib_size=(calib["height"], calib["width"]), scene_dir=str(d))
        )
    return records


# ----------------------------------------------------------------------------------------------- KITTI raw
KITTI_CALIB = "calib_cam_to_cam.txt"


def _read_kitti_calib(path: Path, camera: str) -> tuple[np.ndarray, tuple[int, int]]:
    """``K`` (3x3, from ``P_rect_XX``) and ``(H, W)`` (from ``S_rect_XX``) of one KITTI camera."""
    cam = camera.removeprefix("image_")
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            key, _, rest = line.partition(":")
            values[key.strip()] = rest
    p_key, s_key = f"P_rect_{cam}", f"S_rect_{cam}"
    for key in (p_key, s_key):
        if key not in values:
            raise SourceError(f"{path}: missing '{key}' for camera {camera!r} (is this calib_cam_to_cam.txt?)")
    P = np.asarray(_numbers(values[p_key], str(path), p_key, 12), dtype=np.float64).reshape(3, 4)
    w, h = _numbers(values[s_key], str(path), s_key, 2)
    return P[:, :3].copy(), (int(round(h)), int(round(w)))


def kitti_raw_records(root: str | Path, camera: str = "image_02") -> list[VideoRecord]:
    """Records for KITTI raw drives: ``<date>/<date>_drive_XXXX_sync/<camera>/data/*.png``.

    ``root`` is a date folder (holding ``calib_cam_to_cam.txt``) or a folder of date folders. ``K`` is the left
    3x3 of ``P_rect_XX`` (rectified, pixels) at ``S_rect_XX``; each drive is a ``frames`` record.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder")
    dates = [root] if (root / KITTI_CALIB).is_file() else sorted(d.parent for d in root.glob(f"*/{KITTI_CALIB}"))
    if not dates:
        raise SourceError(f"{root}: no KITTI date folder with {KITTI_CALIB} found")
    records = []
    for date in dates:
        K, size = _read_kitti_calib(date / KITTI_CALIB, camera)
        for drive in sorted(d for d in date.iterdir() if d.is_dir()):
            frames = drive / camera / "data"
            if frames.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in frames.iterdir()):
                records.append(VideoRecord(str(frames), backend="frames", K=K, calib_size=size))
    if not records:
        raise SourceError(f"{root}: no drives with {camera}/data/*.png found next to {KITTI_CALIB}")
    return records


# ----------------------------------------------------------------------------------------------- folders
def _videos_in(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def class_folder_records(root: str | Path) -> tuple[list[VideoRecord], list[str]]:
    """UCF101-style ``root/<class>/<video>``: returns records (label = index in sorted class names) and names.

    Class folders without videos are skipped (and get no label).
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and _videos_in(d))
    if not classes:
        raise SourceError(f"{root}: no class folders with video files ({', '.join(VIDEO_EXTENSIONS)}) found")
    records = [VideoRecord(str(p), label=i) for i, c in enumerate(classes) for p in _videos_in(root / c)]
    return records, classes


def video_folder_records(root: str | Path, recursive: bool = False) -> list[VideoRecord]:
    """Records for every video file in ``root`` (sorted; recursively if asked), unlabelled."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder")
    it = root.rglob("*") if recursive else root.iterdir()
    paths = sorted(p for p in it if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not paths:
        raise SourceError(f"{root}: no video files found")
    return [VideoRecord(str(p)) for p in paths]


def _detect(path: Path) -> list[VideoRecord]:
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in MANIFEST_EXTENSIONS:
            return read_manifest(path)
        if suffix in VIDEO_EXTENSIONS:
            return [VideoRecord(str(path))]
        raise SourceError(f"{path}: a file that is neither a manifest nor a video; {LAYOUTS}")
    if not path.is_dir():
        raise SourceError(f"{path}: no such file or folder")
    if _is_scene(path):
        return scene_records(path)
    if (path / KITTI_CALIB).is_file() or any(path.glob(f"*/{KITTI_CALIB}")):
        return kitti_raw_records(path)
    subdirs = sorted(d for d in path.iterdir() if d.is_dir())
    if any(_is_scene(d) for d in subdirs):
        return scene_records(path)
    if _videos_in(path):
        return video_folder_records(path)
    if any(_videos_in(d) for d in subdirs):
        return class_folder_records(path)[0]
    if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir() if p.is_file()):
        return [VideoRecord(str(path), backend="frames")]
    raise SourceError(f"{path}: layout not recognised; {LAYOUTS}")


def load_sources(specs: str | Path | Sequence[str | Path]) -> list[VideoRecord]:
    """Records from one or more paths, detecting each path's layout (see ``LAYOUTS`` in the error message).

    Args:
        specs: a path or a list of paths: manifests, videos, scene folders, KITTI raw, class folders,
            folders of videos or of frames.

    Raises:
        SourceError: naming the path and listing the recognised layouts.
    """
    if isinstance(specs, (str, Path)):
        specs = [specs]
    if not specs:
        raise SourceError(f"load_sources: no paths given; {LAYOUTS}")
    records: list[VideoRecord] = []
    for spec in specs:
        records.extend(_detect(Path(spec).expanduser()))
    return records
