"""KITTI raw drives as stssl scene folders: velodyne ground-truth depth and OXTS (GPS/IMU) camera poses.

A KITTI raw download is laid out as::

    <date>/calib_cam_to_cam.txt   calib_velo_to_cam.txt   calib_imu_to_velo.txt
    <date>/<date>_drive_XXXX_sync/image_0[0-3]/data/0000000000.png ...   (+ image_0X/timestamps.txt)
    <date>/<date>_drive_XXXX_sync/velodyne_points/data/0000000000.bin ...
    <date>/<date>_drive_XXXX_sync/oxts/data/0000000000.txt ...

Frames are matched across sensors by file stem; a few sync drives lack some velodyne scans.

Coordinate frames (all right-handed, metres, radians):

- velodyne: ``x`` forward, ``y`` left, ``z`` up. IMU (OXTS): ``x`` forward, ``y`` left, ``z`` up.
- camera ``0X`` (rectified, what ``P_rect_0X`` projects from): ``x`` right, ``y`` down, ``z`` forward — the stssl
  camera convention. ``calib_velo_to_cam.txt`` maps velodyne points into *unrectified* camera 0, ``R_rect_00``
  rotates them into rectified camera 0, and ``P_rect_0X = K_0X [I | b_0X]`` adds camera ``0X``'s offset
  ``b_0X = K_0X^-1 P_rect_0X[:, 3]`` from rectified camera 0 (camera 2 sits ~6 cm left of camera 0).
- OXTS world: Mercator ``x`` east, ``y`` north, ``z`` up (altitude), scaled by ``cos(latitude of the first
  frame)`` so that distances near the drive are metres; roll/pitch/yaw rotate the IMU about its ``x``/``y``/``z``
  (``R = Rz(yaw) Ry(pitch) Rx(roll)``; yaw 0 = east, counter-clockwise positive; positive pitch = nose down).

Poses are named ``a_from_b`` (4x4, maps points in frame ``b`` to frame ``a``). :func:`oxts_poses` returns
``world_from_camera`` with the world = the camera of the first frame, as ``poses.txt`` of the scene format wants.

Example:
    >>> P = np.array([[50.0, 0, 40, 0], [0, 50, 12, 0], [0, 0, 1, 0]])   # image_from_velo, velodyne = camera
    >>> points = np.array([[0.0, 0, 10, 1], [1, 0, 5, 1], [0, 0, 20, 1]], dtype=np.float32)
    >>> depth = project_to_depth(points, P, (24, 80))
    >>> float(depth[12, 40]), float(depth[12, 50]), int((depth > 0).sum())   # nearest of the two on (12, 40)
    (10.0, 5.0, 2)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from stssl.data.sources import SourceError

logger = logging.getLogger(__name__)

__all__ = [
    "CAMERAS",
    "EARTH_RADIUS",
    "KittiFormatError",
    "read_velodyne",
    "read_calib_file",
    "read_oxts",
    "camera_intrinsics",
    "camera_from_velodyne",
    "camera_from_imu",
    "project_to_depth",
    "velodyne_depth",
    "imu_poses",
    "oxts_poses",
    "kitti_drive_to_scene",
]

CAMERAS = ("image_00", "image_01", "image_02", "image_03")
CAM_TO_CAM = "calib_cam_to_cam.txt"
VELO_TO_CAM = "calib_velo_to_cam.txt"
IMU_TO_VELO = "calib_imu_to_velo.txt"
#: Earth radius at the equator (metres) that KITTI's devkit uses for its Mercator projection.
EARTH_RADIUS = 6378137.0
OXTS_VALUES = 30


class KittiFormatError(SourceError):
    """A KITTI raw file is missing or malformed (the message names the file and what was expected)."""


def _check_camera(camera: str) -> str:
    if camera not in CAMERAS:
        raise ValueError(f"unknown KITTI camera {camera!r}; choose from {list(CAMERAS)}")
    return camera.removeprefix("image_")


# ----------------------------------------------------------------------------------------------- readers
def read_velodyne(path: str | Path) -> np.ndarray:
    """Read one velodyne scan (``.bin``: little-endian float32 ``x, y, z, reflectance`` per point).

    Returns:
        float32 ``(N, 4)``: points in the velodyne frame (metres) and reflectance.

    Raises:
        KittiFormatError: naming the file when it is missing or its size is not a multiple of 16 bytes.
    """
    path = Path(path)
    if not path.is_file():
        raise KittiFormatError(f"{path}: velodyne scan not found")
    size = path.stat().st_size
    if size % 16:
        raise KittiFormatError(f"{path}: {size} bytes is not a whole number of velodyne points "
                               "(16 bytes each: float32 x, y, z, reflectance)")
    points = np.fromfile(path, dtype="<f4").reshape(-1, 4).astype(np.float32, copy=False)
    if not np.all(np.isfinite(points[:, :3])):
        raise KittiFormatError(f"{path}: velodyne scan holds non-finite coordinates")
    return points


def read_calib_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read a KITTI calibration text file (``key: numbers`` per line) into float64 arrays.

    Lines whose values are not all numbers (``calib_time: 09-Jan-2012 13:57:47``) are skipped; matrices stay
    flat (``P_rect_02`` has 12 numbers, row-major). ``calib_velo_to_cam.txt`` / ``calib_imu_to_velo.txt`` hold
    ``R`` (9) and ``T`` (3).

    Raises:
        KittiFormatError: naming the file when it is missing or holds no ``key: numbers`` line.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "calib_velo_to_cam.txt")
        >>> _ = open(path, "w").write("calib_time: 15-Mar-2012 11:37:16\\nR: 1 0 0 0 1 0 0 0 1\\nT: 0 0 -0.27\\n")
        >>> calib = read_calib_file(path)
        >>> sorted(calib), calib["T"].tolist()
        (['R', 'T'], [0.0, 0.0, -0.27])
    """
    path = Path(path)
    if not path.is_file():
        raise KittiFormatError(f"{path}: calibration file not found")
    out: dict[str, np.ndarray] = {}
    for line in path.read_text().splitlines():
        key, sep, rest = line.partition(":")
        if not sep or not key.strip():
            continue
        try:
            values = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError:
            continue
        if values.size:
            out[key.strip()] = values
    if not out:
        raise KittiFormatError(f"{path}: no 'key: numbers' lines; expected a KITTI calibration file")
    return out


def _entry(calib: dict[str, np.ndarray], key: str, size: int, path: Path) -> np.ndarray:
    if key not in calib:
        raise KittiFormatError(f"{path}: missing '{key}' ({size} numbers); found keys {sorted(calib)}")
    values = calib[key]
    if values.size != size:
        raise KittiFormatError(f"{path}: '{key}' has {values.size} numbers, expected {size}")
    if not np.all(np.isfinite(values)):
        raise KittiFormatError(f"{path}: '{key}' holds non-finite numbers")
    return values


def _rigid(path: Path) -> np.ndarray:
    """4x4 ``[R | T]`` from a ``calib_*_to_*.txt`` file (``R``: 9 numbers row-major, ``T``: 3)."""
    calib = read_calib_file(path)
    out = np.eye(4)
    out[:3, :3] = _entry(calib, "R", 9, path).reshape(3, 3)
    out[:3, 3] = _entry(calib, "T", 3, path)
    return out


def read_oxts(path: str | Path) -> np.ndarray:
    """Read one OXTS packet (``oxts/data/*.txt``: 30 numbers on one line, KITTI's ``dataformat.txt``).

    Returns:
        float64 ``(30,)``: ``lat, lon`` (degrees), ``alt`` (metres), ``roll, pitch, yaw`` (radians), then
        velocities, accelerations, angular rates, accuracies and status fields.

    Raises:
        KittiFormatError: naming the file when it is missing, not numeric or not 30 numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise KittiFormatError(f"{path}: OXTS packet not found")
    text = path.read_text().split()
    try:
        values = np.array([float(v) for v in text], dtype=np.float64)
    except ValueError as err:
        raise KittiFormatError(f"{path}: OXTS packet is not numeric ({err})") from None
    if values.size != OXTS_VALUES:
        raise KittiFormatError(f"{path}: OXTS packet has {values.size} numbers, expected {OXTS_VALUES}")
    if not np.all(np.isfinite(values[:6])):
        raise KittiFormatError(f"{path}: OXTS lat/lon/alt/roll/pitch/yaw must be finite, got {values[:6].tolist()}")
    return values


# ----------------------------------------------------------------------------------------------- calibration
def _cam_to_cam(calib_dir: Path, camera: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """``P_rect_0X`` (3, 4), ``R_rect_00`` (3, 3) and ``(H, W)`` from ``S_rect_0X``."""
    cam = _check_camera(camera)
    path = Path(calib_dir) / CAM_TO_CAM
    calib = read_calib_file(path)
    P = _entry(calib, f"P_rect_{cam}", 12, path).reshape(3, 4)
    R_rect = _entry(calib, "R_rect_00", 9, path).reshape(3, 3)
    w, h = _entry(calib, f"S_rect_{cam}", 2, path)
    if P[0, 0] <= 0 or P[1, 1] <= 0 or P[2, 2] == 0:
        raise KittiFormatError(f"{path}: 'P_rect_{cam}' is not a rectified projection (fx, fy > 0, P[2, 2] = 1)")
    return P, R_rect, (int(round(h)), int(round(w)))


def camera_intrinsics(calib_dir: str | Path, camera: str = "image_02") -> tuple[np.ndarray, tuple[int, int]]:
    """``K`` (float64 ``(3, 3)``, the left 3x3 of ``P_rect_0X``, pixels) and ``(H, W)`` from ``S_rect_0X``."""
    P, _, size = _cam_to_cam(Path(calib_dir), camera)
    return P[:, :3].copy(), size


def _rect0_to_camera(P: np.ndarray) -> np.ndarray:
    """``camera_from_rect0`` (4, 4): the translation ``K^-1 P[:, 3]`` that ``P_rect = K [I | b]`` encodes."""
    out = np.eye(4)
    out[:3, 3] = np.linalg.solve(P[:, :3], P[:, 3])
    return out


def camera_from_velodyne(calib_dir: str | Path, camera: str = "image_02") -> np.ndarray:
    """Rigid ``camera_from_velodyne`` (float64 ``(4, 4)``) into the rectified camera ``camera``.

    ``[I | b_0X] @ R_rect_00 @ [R | T]_velo_to_cam`` (see the module docstring); ``K @ camera_from_velodyne[:3]``
    equals the projection :func:`velodyne_depth` uses. ``R_rect_00`` is a rotation, so the result is rigid.
    """
    calib_dir = Path(calib_dir)
    P, R_rect, _ = _cam_to_cam(calib_dir, camera)
    rect0_from_cam0 = np.eye(4)
    rect0_from_cam0[:3, :3] = R_rect
    return _rect0_to_camera(P) @ rect0_from_cam0 @ _rigid(calib_dir / VELO_TO_CAM)


def camera_from_imu(calib_dir: str | Path, camera: str = "image_02") -> np.ndarray:
    """Rigid ``camera_from_imu`` (float64 ``(4, 4)``): :func:`camera_from_velodyne` @ ``calib_imu_to_velo.txt``."""
    calib_dir = Path(calib_dir)
    return camera_from_velodyne(calib_dir, camera) @ _rigid(calib_dir / IMU_TO_VELO)


# ----------------------------------------------------------------------------------------------- depth
def project_to_depth(points: np.ndarray, image_from_velo: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Sparse z-depth map from points and a 3x4 projection (the pure core of :func:`velodyne_depth`).

    Each point ``p`` goes to ``(u', v', z) = image_from_velo @ [x, y, z, 1]``; points with ``z <= 0`` (behind
    the camera) are dropped, the rest land on pixel ``(round(v'/z), round(u'/z))`` (row, column; pixel centres
    at integer coordinates, as ``P_rect`` defines them); pixels outside ``size`` are dropped; where several
    points land on one pixel the nearest (smallest ``z``) is kept. Other pixels are 0 (no data).

    Args:
        points: ``(N, 3)`` or ``(N, >=4)`` points (only ``x, y, z`` are used).
        image_from_velo: ``(3, 4)`` projection whose third row gives the camera's z-depth.
        size: ``(H, W)`` of the depth map.

    Returns:
        float32 ``(H, W)`` depth in the units of ``points`` (metres), 0 = invalid.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"project_to_depth: points must be (N, 3) or (N, 4), got shape {pts.shape}")
    P = np.asarray(image_from_velo, dtype=np.float64)
    if P.shape != (3, 4):
        raise ValueError(f"project_to_depth: image_from_velo must be (3, 4), got {P.shape}")
    H, W = (int(v) for v in size)
    if H <= 0 or W <= 0:
        raise ValueError(f"project_to_depth: size must be positive (H, W), got {size}")
    xyz = pts[:, :3].astype(np.float64)
    proj = xyz @ P[:, :3].T + P[:, 3]
    z = proj[:, 2]
    front = z > 0
    proj, z = proj[front], z[front]
    u = np.round(proj[:, 0] / z)
    v = np.round(proj[:, 1] / z)
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    flat = v[inside].astype(np.int64) * W + u[inside].astype(np.int64)
    z = z[inside]
    depth = np.zeros(H * W, dtype=np.float32)
    if flat.size:
        order = np.lexsort((z, flat))  # by pixel, then nearest first
        flat, z = flat[order], z[order]
        first = np.ones(flat.size, dtype=bool)
        first[1:] = flat[1:] != flat[:-1]
        depth[flat[first]] = z[first]
    return depth.reshape(H, W)


def _image_from_velodyne(calib_dir: Path, camera: str) -> tuple[np.ndarray, tuple[int, int]]:
    P, R_rect, size = _cam_to_cam(calib_dir, camera)
    rect0_from_cam0 = np.eye(4)
    rect0_from_cam0[:3, :3] = R_rect
    return P @ rect0_from_cam0 @ _rigid(calib_dir / VELO_TO_CAM), size


def velodyne_depth(points: np.ndarray, calib_dir: str | Path, camera: str = "image_02",
                   size: tuple[int, int] | None = None) -> np.ndarray:
    """Ground-truth z-depth of one velodyne scan in a rectified KITTI camera (monodepth2's protocol).

    Projects with ``P_rect_0X @ R_rect_00 @ [R | T]_velo_to_cam`` (see :func:`project_to_depth` for rounding,
    dropping and the nearest-point rule). Unlike monodepth2's ``generate_depth_map``, pixels are not shifted by
    one (its ``round(u) - 1`` is a MATLAB indexing leftover) and points are dropped by camera ``z <= 0``, which
    on KITTI's rig (camera ~0.27 m ahead of the scanner) also drops every point with velodyne ``x < 0``.

    Args:
        points: ``(N, 4)`` scan from :func:`read_velodyne` (or ``(N, 3)``).
        calib_dir: the date folder holding ``calib_cam_to_cam.txt`` and ``calib_velo_to_cam.txt``.
        camera: ``"image_00"`` ... ``"image_03"`` (2 = left colour).
        size: ``(H, W)`` of the map; None uses ``S_rect_0X``. A smaller size crops the bottom/right.

    Returns:
        float32 ``(H, W)`` depth in metres, 0 = no data.
    """
    P, calib_size = _image_from_velodyne(Path(calib_dir), camera)
    return project_to_depth(points, P, calib_size if size is None else size)


# ----------------------------------------------------------------------------------------------- poses
def _rotations(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` for arrays of angles: ``(T, 3, 3)``."""
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    zero, one = np.zeros_like(roll), np.ones_like(roll)
    Rx = np.stack([one, zero, zero, zero, cr, -sr, zero, sr, cr], -1).reshape(-1, 3, 3)
    Ry = np.stack([cp, zero, sp, zero, one, zero, -sp, zero, cp], -1).reshape(-1, 3, 3)
    Rz = np.stack([cy, -sy, zero, sy, cy, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return Rz @ Ry @ Rx


def imu_poses(oxts: np.ndarray) -> np.ndarray:
    """``world_from_imu`` (float64 ``(T, 4, 4)``) from OXTS packets, in scaled Mercator metres.

    ``x = s R lon``, ``y = s R ln(tan(pi/4 + lat/2))`` (``R`` = :data:`EARTH_RADIUS`, angles in radians,
    ``s = cos(lat_0)`` of the first packet), ``z = alt``; rotation ``Rz(yaw) Ry(pitch) Rx(roll)``. The world
    is east-north-up; positions are absolute (not relative to the first frame).

    Args:
        oxts: ``(T, >=6)`` packets (``lat, lon, alt, roll, pitch, yaw, ...``).

    Example:
        >>> north = np.zeros((2, 30)); north[:, 0] = [0.0, math.degrees(10 / EARTH_RADIUS)]; north[:, 5] = math.pi / 2
        >>> poses = imu_poses(north)
        >>> np.round(poses[1, :3, 3] - poses[0, :3, 3], 6).tolist(), np.round(poses[0, :3, 0], 6).tolist()
        ([0.0, 10.0, 0.0], [0.0, 1.0, 0.0])
    """
    arr = np.asarray(oxts, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 6 or len(arr) == 0:
        raise ValueError(f"imu_poses: oxts must be (T, >=6) with T >= 1, got shape {arr.shape}")
    lat, lon, alt = np.radians(arr[:, 0]), np.radians(arr[:, 1]), arr[:, 2]
    scale = math.cos(lat[0])
    poses = np.tile(np.eye(4), (len(arr), 1, 1))
    poses[:, 0, 3] = scale * EARTH_RADIUS * lon
    poses[:, 1, 3] = scale * EARTH_RADIUS * np.log(np.tan(math.pi / 4 + lat / 2))
    poses[:, 2, 3] = alt
    poses[:, :3, :3] = _rotations(arr[:, 3], arr[:, 4], arr[:, 5])
    return poses


def oxts_poses(oxts_files: Sequence[str | Path] | np.ndarray, calib_dir: str | Path,
               camera: str = "image_02") -> np.ndarray:
    """Camera poses ``world_from_camera`` (float64 ``(T, 4, 4)``) of a drive from its OXTS packets.

    ``world_from_camera_t = camera_from_imu @ inv(world_from_imu_0) @ world_from_imu_t @ inv(camera_from_imu)``:
    the world is the first frame's camera (pose 0 is the identity), camera axes ``x`` right, ``y`` down, ``z``
    forward, metres. ``camera_from_imu`` (:func:`camera_from_imu`) goes through ``calib_imu_to_velo.txt``,
    ``calib_velo_to_cam.txt``, ``R_rect_00`` and the camera's offset in ``P_rect_0X``.

    Args:
        oxts_files: the drive's ``oxts/data/*.txt`` files in frame order, or a ``(T, >=6)`` array of packets.
        calib_dir: the date folder with the three calibration files.
        camera: ``"image_00"`` ... ``"image_03"``.

    Raises:
        KittiFormatError: naming a missing or malformed OXTS or calibration file.
    """
    if isinstance(oxts_files, np.ndarray):
        packets = oxts_files
    else:
        if not len(oxts_files):
            raise ValueError("oxts_poses: no OXTS files given")
        packets = np.stack([read_oxts(p) for p in oxts_files])
    world_from_imu = imu_poses(packets)
    cam_from_imu = camera_from_imu(calib_dir, camera)
    imu0_from_imu = np.linalg.inv(world_from_imu[0]) @ world_from_imu
    poses = cam_from_imu @ imu0_from_imu @ np.linalg.inv(cam_from_imu)
    poses[:, 3] = (0.0, 0.0, 0.0, 1.0)
    return poses


# ----------------------------------------------------------------------------------------------- scene folders
def _fps(timestamps: Path, default: float = 10.0) -> float:
    """Frame rate from a KITTI ``timestamps.txt`` (median step), else ``default``."""
    if not timestamps.is_file():
        return default
    try:
        times = [dt.datetime.fromisoformat(line.strip()[:26]).timestamp()
                 for line in timestamps.read_text().splitlines() if line.strip()]
    except ValueError:
        logger.warning("%s: unreadable timestamps; using %.1f fps", timestamps, default)
        return default
    steps = np.diff(times)
    if len(steps) == 0 or not np.median(steps) > 0:
        return default
    return float(1.0 / np.median(steps))


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise KittiFormatError(f"{path}: cannot decode image ({err})") from None


def _encode(path: Path, frames: Iterable[np.ndarray], height: int, width: int, fps: float, crf: int) -> None:
    """Stream uint8 ``(H, W, 3)`` frames into ``path`` with the settings of ``scene_io.write_video``."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "g": "10", "keyint_min": "10", "bf": "0", "threads": "1"}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def kitti_drive_to_scene(drive_dir: str | Path, out_dir: str | Path, *, camera: str = "image_02",
                         max_frames: int | None = None, crf: int = 18) -> Path:
    """Write a KITTI raw drive as a stssl scene folder, so scene-folder evaluation runs on it unchanged.

    Writes ``video.mp4`` (H.264 like ``scene_io.write_video``), ``calib.json`` (``K`` = left 3x3 of
    ``P_rect_0X``; fps from ``<camera>/timestamps.txt``, else 10), ``poses.txt`` (:func:`oxts_poses`),
    ``depth.npz`` (:func:`velodyne_depth`, sparse, 0 = invalid; all zero for frames without a scan),
    ``semantic.npz`` (zeros) + ``classes.json`` (``["unlabelled"]``), ``boxes.json`` (COCO, no annotations) and
    ``meta.json`` (source, drive, camera, frame stems, frames without a scan, crop). H.264 needs even sizes, so an
    odd height/width (KITTI's 375 x 1241 etc.) loses its last row/column; ``K`` is unchanged by that crop.
    The folder is written to a temporary sibling and renamed into place (an existing ``out_dir`` is replaced).

    Memory: depth (4 bytes per pixel per frame) is held whole; ~2 GB for a 1,100-frame drive (``max_frames``).

    Args:
        drive_dir: ``<date>/<date>_drive_XXXX_sync`` (the calibration files are in its parent).
        out_dir: the scene folder to write.
        camera: ``"image_00"`` ... ``"image_03"`` (2 = left colour, as monodepth2).
        max_frames: convert only the first ``max_frames`` frames.
        crf: H.264 quality (lower = closer to the PNGs).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        KittiFormatError: naming the missing or malformed file (frames, calibration, OXTS packet, scan).
    """
    _check_camera(camera)
    drive = Path(drive_dir)
    if not drive.is_dir():
        raise KittiFormatError(f"{drive}: not a folder; expected <date>/<date>_drive_XXXX_sync")
    calib_dir = drive.parent
    for name in (CAM_TO_CAM, VELO_TO_CAM, IMU_TO_VELO):
        if not (calib_dir / name).is_file():
            raise KittiFormatError(f"{calib_dir / name}: not found; KITTI keeps it in the date folder above the drive")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"kitti_drive_to_scene: max_frames must be >= 1 or None, got {max_frames}")
    image_dir = drive / camera / "data"
    images = sorted(image_dir.glob("*.png")) if image_dir.is_dir() else []
    if not images:
        raise KittiFormatError(f"{image_dir}: no PNG frames found")
    images = images[:max_frames]
    stems = [p.stem for p in images]
    oxts_dir, velo_dir = drive / "oxts" / "data", drive / "velodyne_points" / "data"
    missing_oxts = [str(oxts_dir / f"{s}.txt") for s in stems if not (oxts_dir / f"{s}.txt").is_file()]
    if missing_oxts:
        raise KittiFormatError(f"{missing_oxts[0]}: OXTS packet not found ({len(missing_oxts)} of {len(stems)} "
                               "frames lack one); every frame needs a pose")

    K, _ = camera_intrinsics(calib_dir, camera)
    image_from_velo, _ = _image_from_velodyne(calib_dir, camera)
    poses = oxts_poses([oxts_dir / f"{s}.txt" for s in stems], calib_dir, camera)
    first = _read_png(images[0])
    full_h, full_w = first.shape[:2]
    H, W = full_h - full_h % 2, full_w - full_w % 2
    fps = _fps(drive / camera / "timestamps.txt")

    depth = np.zeros((len(stems), H, W), dtype=np.float32)
    no_scan: list[str] = []
    for t, stem in enumerate(stems):
        scan = velo_dir / f"{stem}.bin"
        if scan.is_file():
            depth[t] = project_to_depth(read_velodyne(scan), image_from_velo, (H, W))
        else:
            no_scan.append(stem)
    if no_scan:
        logger.warning("%s: %d frame(s) have no velodyne scan (all-zero depth): %s", drive, len(no_scan),
                       ", ".join(no_scan[:5]) + (" ..." if len(no_scan) > 5 else ""))

    def frames() -> Iterable[np.ndarray]:
        for t, path in enumerate(images):
            image = first if t == 0 else _read_png(path)
            if image.shape[:2] != (full_h, full_w):
                raise KittiFormatError(f"{path}: size {image.shape[:2]}, expected {(full_h, full_w)} like {images[0]}")
            yield image[:H, :W]

    from stssl.worlds import scene_io

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp", dir=out.parent))
    try:
        _encode(tmp / scene_io.VIDEO_FILE, frames(), H, W, fps, crf)
        scene_io.write_calib(tmp, K, W, H, fps)
        scene_io.write_poses(tmp, poses)
        np.savez_compressed(tmp / scene_io.DEPTH_FILE, depth=depth)
        # a broadcast view: numpy streams it into the zip without allocating (T, H, W) bytes
        np.savez_compressed(tmp / scene_io.SEMANTIC_FILE,
                            semantic=np.broadcast_to(np.zeros((1, 1, 1), np.uint8), depth.shape))
        (tmp / scene_io.CLASSES_FILE).write_text(json.dumps(["unlabelled"]))
        boxes = {
            "images": [{"id": t, "frame_index": t, "width": W, "height": H, "file_name": s} for t, s in enumerate(stems)],
            "annotations": [],
            "categories": [],
        }
        (tmp / scene_io.BOXES_FILE).write_text(json.dumps(boxes))
        meta = {
            "source": "kitti_raw", "drive": drive.name, "date": calib_dir.name, "camera": camera,
            "frames": stems, "frames_without_velodyne": no_scan, "image_size": [full_h, full_w],
            "crop": [H, W], "depth": "velodyne z-depth in the rectified camera, nearest point per pixel, 0 = none",
            "poses": "OXTS (GPS/IMU), world = first frame's camera",
        }
        (tmp / scene_io.META_FILE).write_text(json.dumps(meta, indent=1))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
