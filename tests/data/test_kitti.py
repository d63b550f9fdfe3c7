"""KITTI raw -> stssl scene folders: velodyne depth projection, OXTS poses, the converter and its CLI.

Every test builds a tiny synthetic KITTI raw tree (date folder with the three calibration files in KITTI's text
format, one drive with 24x80 PNG frames, velodyne ``.bin`` scans and 30-number OXTS packets) whose geometry is
simple enough to know the answers by hand.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from stssl.data.kitti import (
    EARTH_RADIUS,
    KittiFormatError,
    camera_from_imu,
    camera_from_velodyne,
    camera_intrinsics,
    imu_poses,
    kitti_drive_to_scene,
    oxts_poses,
    read_calib_file,
    read_oxts,
    read_velodyne,
    velodyne_depth,
)
from stssl.data.sources import load_sources
from stssl.eval import depth_metrics, evaluate_scene
from stssl.worlds.scene_io import read_scene

REPO = Path(__file__).resolve().parents[2]
H, W = 24, 80
FX, FY, CX, CY = 50.0, 50.0, 40.0, 12.0
BASELINE = 0.4  # camera 2's x offset from rectified camera 0 in the simple rig: P_rect_02[0, 3] = FX * 0.4
# velodyne (x fwd, y left, z up) -> camera (x right, y down, z fwd): cam = (-y, -z, x)
VELO_AXES = np.array([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]])
LAT0, LON0 = 48.98, 8.39  # near Karlsruhe


def fmt(values: np.ndarray | list[float]) -> str:
    return " ".join(f"{v:.12e}" for v in np.asarray(values, dtype=np.float64).ravel())


def write_calibration(date: Path, *, R_rect: np.ndarray | None = None, velo_T: tuple[float, float, float] = (0, 0, 0),
                      p_offset: tuple[float, float, float] = (FX * BASELINE, 0.0, 0.0),
                      imu_T: tuple[float, float, float] = (0, 0, 0), size: tuple[int, int] = (H, W)) -> Path:
    """The three KITTI calibration files; camera 2 gets ``P_rect_02[:, 3] = p_offset``, others no offset."""
    date.mkdir(parents=True, exist_ok=True)
    R_rect = np.eye(3) if R_rect is None else R_rect
    K = np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1]])
    lines = ["calib_time: 09-Jan-2012 13:57:47", "corner_dist: 9.950000e-02"]
    for cam in ("00", "01", "02", "03"):
        P = np.hstack([K, np.zeros((3, 1))])
        if cam == "02":
            P[:, 3] = p_offset
        lines += [f"S_{cam}: {fmt([size[1] + 2, size[0] + 2])}", f"K_{cam}: {fmt(K)}", f"D_{cam}: {fmt(np.zeros(5))}",
                  f"R_{cam}: {fmt(np.eye(3))}", f"T_{cam}: {fmt(np.zeros(3))}", f"S_rect_{cam}: {fmt([size[1], size[0]])}",
                  f"R_rect_{cam}: {fmt(R_rect if cam == '00' else np.eye(3))}", f"P_rect_{cam}: {fmt(P)}"]
    (date / "calib_cam_to_cam.txt").write_text("\n".join(lines) + "\n")
    (date / "calib_velo_to_cam.txt").write_text(
        f"calib_time: 15-Mar-2012 11:37:16\nR: {fmt(VELO_AXES)}\nT: {fmt(velo_T)}\n"
        "delta_f: 0.000000e+00 0.000000e+00\ndelta_c: 0.000000e+00 0.000000e+00\n")
    (date / "calib_imu_to_velo.txt").write_text(f"calib_time: 25-May-2012 16:47:16\nR: {fmt(np.eye(3))}\nT: {fmt(imu_T)}\n")
    return date


def packet(lat: float = LAT0, lon: float = LON0, alt: float = 110.0, roll: float = 0.0, pitch: float = 0.0,
           yaw: float = 0.0) -> np.ndarray:
    out = np.zeros(30)
    out[:6] = (lat, lon, alt, roll, pitch, yaw)
    out[25:] = (4, 10, 4, 4, 4)  # navstat, numsats, posmode, velmode, orimode
    return out


def write_packet(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(" ".join(repr(float(v)) if i < 25 else str(int(v)) for i, v in enumerate(values)) + "\n")
    return path


def north_packets(n: int, step: float = 1.0) -> list[np.ndarray]:
    """Heading north (yaw = 90 deg), ``step`` metres per frame."""
    return [packet(lat=LAT0 + math.degrees(t * step / EARTH_RADIUS), yaw=math.pi / 2) for t in range(n)]


def make_drive(root: Path, *, frames: int = 3, size: tuple[int, int] = (H, W),
               scans: dict[int, np.ndarray] | None = None,
               packets: list[np.ndarray] | None = None, **calib: object) -> Path:
    """``root/2011_09_26/2011_09_26_drive_0001_sync`` with PNGs, scans (default: a wall ahead) and OXTS."""
    date = write_calibration(root / "2011_09_26", **calib)  # type: ignore[arg-type]
    drive = date / "2011_09_26_drive_0001_sync"
    (drive / "image_02" / "data").mkdir(parents=True)
    (drive / "velodyne_points" / "data").mkdir(parents=True)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    for t in range(frames):
        rgb = np.stack([(xx * 3 + 8 * t) % 256, (yy * 9) % 256, np.full_like(xx, 90 + 20 * t)], -1).astype(np.uint8)
        Image.fromarray(rgb).save(drive / "image_02" / "data" / f"{t:010d}.png")
    (drive / "image_02" / "timestamps.txt").write_text(
        "".join(f"2011-09-26 13:02:{25 + 0.1 * t:012.9f}\n" for t in range(frames)))
    if scans is None:
        # a slanted wall, 10 m ahead at its right end (velodyne y = -6) and 12.4 m at its left end
        wall = np.array([[10.0 + 0.2 * (y + 6), y, z, 0.5] for y in np.linspace(-6, 6, 40)
                         for z in np.linspace(-1.1, 1.1, 12)])
        scans = {t: wall * [1 + 0.1 * t, 1, 1, 1] for t in range(frames)}
    for t, points in scans.items():
        np.asarray(points, dtype="<f4").tofile(drive / "velodyne_points" / "data" / f"{t:010d}.bin")
    for t, values in enumerate(packets if packets is not None else north_packets(frames)):
        write_packet(drive / "oxts" / "data" / f"{t:010d}.txt", values)
    return drive


# ------------------------------------------------------------------ readers
def test_read_velodyne_and_bad_files(tmp_path: Path) -> None:
    pts = np.array([[1.5, -2, 0.25, 0.7], [3, 4, 5, 0.1]], dtype="<f4")
    pts.tofile(tmp_path / "a.bin")
    out = read_velodyne(tmp_path / "a.bin")
    assert out.dtype == np.float32 and out.shape == (2, 4)
    np.testing.assert_array_equal(out, pts)
    (tmp_path / "bad.bin").write_bytes(b"\0" * 20)
    with pytest.raises(KittiFormatError, match=r"bad\.bin.*whole number"):
        read_velodyne(tmp_path / "bad.bin")
    with pytest.raises(KittiFormatError, match=r"missing\.bin: velodyne scan not found"):
        read_velodyne(tmp_path / "missing.bin")
    (tmp_path / "empty.bin").write_bytes(b"")
    assert read_velodyne(tmp_path / "empty.bin").shape == (0, 4)


def test_read_calib_file_and_bad_calibration(tmp_path: Path) -> None:
    date = write_calibration(tmp_path / "date")
    calib = read_calib_file(date / "calib_cam_to_cam.txt")
    assert "calib_time" not in calib and calib["P_rect_02"].shape == (12,)
    assert calib["P_rect_02"][3] == pytest.approx(FX * BASELINE)
    velo = read_calib_file(date / "calib_velo_to_cam.txt")
    np.testing.assert_array_equal(velo["R"].reshape(3, 3), VELO_AXES)
    K, size = camera_intrinsics(date, "image_02")
    np.testing.assert_array_equal(K, [[FX, 0, CX], [0, FY, CY], [0, 0, 1]])
    assert size == (H, W)

    (date / "calib_velo_to_cam.txt").write_text(f"R: {fmt(VELO_AXES)}\n")  # no T
    with pytest.raises(KittiFormatError, match=r"calib_velo_to_cam\.txt: missing 'T'"):
        velodyne_depth(np.zeros((1, 4)), date)
    (date / "calib_velo_to_cam.txt").write_text(f"R: {fmt(VELO_AXES)}\nT: 1 2\n")
    with pytest.raises(KittiFormatError, match=r"calib_velo_to_cam\.txt: 'T' has 2 numbers, expected 3"):
        camera_from_velodyne(date)
    (date / "calib_velo_to_cam.txt").write_text(f"R: {fmt(VELO_AXES)}\nT: 0 0 0\n")
    (date / "calib_imu_to_velo.txt").write_text("nothing useful here\n")
    with pytest.raises(KittiFormatError, match=r"calib_imu_to_velo\.txt: no 'key: numbers' lines"):
        camera_from_imu(date)
    with pytest.raises(KittiFormatError, match=r"nowhere[/\\]calib_cam_to_cam\.txt: calibration file not found"):
        velodyne_depth(np.zeros((1, 4)), tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"unknown KITTI camera 'image_05'; choose from"):
        velodyne_depth(np.zeros((1, 4)), date, camera="image_05")


def test_read_oxts_and_bad_packets(tmp_path: Path) -> None:
    values = packet(lat=49.0, lon=8.4, alt=115.5, roll=0.01, pitch=-0.02, yaw=1.5)
    np.testing.assert_allclose(read_oxts(write_packet(tmp_path / "ok.txt", values)), values)
    (tmp_path / "short.txt").write_text(" ".join(["1.0"] * 29))
    with pytest.raises(KittiFormatError, match=r"short\.txt: OXTS packet has 29 numbers, expected 30"):
        read_oxts(tmp_path / "short.txt")
    (tmp_path / "text.txt").write_text("lat lon " + " ".join(["1"] * 28))
    with pytest.raises(KittiFormatError, match=r"text\.txt: OXTS packet is not numeric"):
        read_oxts(tmp_path / "text.txt")
    with pytest.raises(KittiFormatError, match=r"gone\.txt: OXTS packet not found"):
        oxts_poses([tmp_path / "ok.txt", tmp_path / "gone.txt"], tmp_path)


# ------------------------------------------------------------------ velodyne depth
def test_projection_lands_at_expected_pixel_nearest_wins_behind_dropped(tmp_path: Path) -> None:
    date = write_calibration(tmp_path / "date")
    # velodyne -> camera 0: (x, y, z) -> (-y, -z, x); camera 2 adds BASELINE to x:  u = CX + FX (x_cam + 0.4) / z
    a = [10.0, 0.0, 0.0, 1]    # cam (0, 0, 10)    -> u = 40 + 50 * 0.4 / 10 = 42, v = 12, depth 10
    b = [5.0, -1.0, 0.5, 1]    # cam (1, -0.5, 5)  -> u = 40 + 50 * 1.4 / 5 = 54, v = 12 - 50 * 0.5 / 5 = 7, depth 5
    far = [20.0, -0.4, 0.0, 1]  # cam (0.4, 0, 20) -> u = 40 + 50 * 0.8 / 20 = 42, v = 12: same pixel as a, farther
    behind = [-10.0, 0.0, 0.0, 1]  # cam z = -10 would land on u = 38, v = 12 if not dropped
    outside = [10.0, -20.0, 0.0, 1]  # u = 142 > W
    for order in ([a, b, far, behind, outside], [far, outside, behind, b, a]):
        depth = velodyne_depth(np.array(order, dtype=np.float32), date, "image_02")
        assert depth.shape == (H, W) and depth.dtype == np.float32
        assert depth[12, 42] == pytest.approx(10.0)
        assert depth[7, 54] == pytest.approx(5.0)
        assert depth[12, 38] == 0.0
        assert int((depth > 0).sum()) == 2
    # image_00 has no baseline offset: a lands on the principal point
    assert velodyne_depth(np.array([a], dtype=np.float32), date, "image_00")[12, 40] == pytest.approx(10.0)
    # a smaller size crops bottom/right: b stays, a at column 42 leaves a 40-wide map
    small = velodyne_depth(np.array([a, b], dtype=np.float32), date, "image_02", size=(20, 60))
    assert small.shape == (20, 60) and small[7, 54] == pytest.approx(5.0) and int((small > 0).sum()) == 2
    assert int((velodyne_depth(np.array([a, b], dtype=np.float32), date, size=(10, 40)) > 0).sum()) == 0


def test_projection_agrees_with_rigid_camera_transform(tmp_path: Path) -> None:
    """P_rect @ R_rect @ velo_to_cam (depth) equals K @ camera_from_velodyne (poses), offsets in all 3 rows."""
    c, s = math.cos(0.02), math.sin(0.02)
    R_rect = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    date = write_calibration(tmp_path / "date", R_rect=R_rect, velo_T=(-0.004, -0.076, -0.27),
                             p_offset=(FX * 0.06, 0.3, 0.003))
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(5, 30, 30), rng.uniform(-4, 4, 30), rng.uniform(-1, 1, 30), np.ones(30)])
    pts = pts.astype(np.float32).astype(np.float64)  # what the float32 scan holds
    depth = velodyne_depth(pts, date)
    cam = (camera_from_velodyne(date) @ pts.T).T[:, :3]
    K, _ = camera_intrinsics(date)
    pix = (K @ cam.T).T
    u, v = np.round(pix[:, 0] / pix[:, 2]).astype(int), np.round(pix[:, 1] / pix[:, 2]).astype(int)
    checked = 0
    for i in range(len(pts)):
        if 0 <= u[i] < W and 0 <= v[i] < H:
            nearest = cam[(u == u[i]) & (v == v[i]), 2].min()
            assert depth[v[i], u[i]] == pytest.approx(nearest, rel=1e-6)
            checked += 1
    assert checked >= 5 and int((depth > 0).sum()) == len({(a, b) for a, b in zip(u, v, strict=True) if 0 <= a < W and 0 <= b < H})
    T = camera_from_velodyne(date)
    np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-12)  # rigid


# ------------------------------------------------------------------ OXTS poses
@pytest.mark.parametrize("heading", ["north", "east"])
def test_straight_drive_moves_along_camera_z_in_metres(tmp_path: Path, heading: str) -> None:
    date = write_calibration(tmp_path / "date", velo_T=(-0.004, -0.076, -0.27), imu_T=(-0.81, 0.32, -0.8))
    step = 1.5
    if heading == "north":
        packets = north_packets(4, step)
    else:  # yaw 0 = east; a longitude step of `step` metres at LAT0
        packets = [packet(lon=LON0 + math.degrees(t * step / (EARTH_RADIUS * math.cos(math.radians(LAT0)))))
                   for t in range(4)]
    files = [write_packet(tmp_path / "oxts" / f"{t:010d}.txt", p) for t, p in enumerate(packets)]
    poses = oxts_poses(files, date)
    assert poses.shape == (4, 4, 4) and poses.dtype == np.float64
    np.testing.assert_allclose(poses[0], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(poses[:, :3, :3], np.tile(np.eye(3), (4, 1, 1)), atol=1e-9)
    # camera z is forward: (0, 0, t * step) metres (Mercator vs sphere differs by ~1e-7 relative here)
    np.testing.assert_allclose(poses[:, :3, 3], [[0, 0, t * step] for t in range(4)], atol=1e-4)
    np.testing.assert_allclose(oxts_poses(np.stack(packets), date), poses)  # packets as an array


def test_altitude_turn_pitch_roll_follow_camera_convention(tmp_path: Path) -> None:
    date = write_calibration(tmp_path / "date")
    yaw0 = 0.3
    packets = np.stack([packet(yaw=yaw0), packet(alt=111.0, yaw=yaw0),  # 1 m up -> camera y = -1 (y is down)
                        packet(yaw=yaw0 + math.pi / 2),                 # turn left 90 deg in place
                        packet(yaw=yaw0, pitch=0.1),                    # nose down
                        packet(yaw=yaw0, roll=0.1)])                    # left side up
    poses = oxts_poses(packets, date)
    np.testing.assert_allclose(poses[1, :3, 3], [0, -1, 0], atol=1e-9)
    np.testing.assert_allclose(poses[2, :3, :3] @ [0, 0, 1], [-1, 0, 0], atol=1e-9)  # now looks along -x (left)
    np.testing.assert_allclose(poses[3, :3, :3] @ [0, 0, 1], [0, math.sin(0.1), math.cos(0.1)], atol=1e-9)
    np.testing.assert_allclose(poses[4, :3, :3] @ [1, 0, 0], [math.cos(0.1), math.sin(0.1), 0], atol=1e-9)
    # camera 2 sits BASELINE left of camera 0 (= the IMU here), so turning left about the IMU swings it from
    # (-0.4, 0, 0) to (0, 0, -0.4) in camera-0 axes: relative to its first pose it moved by (+0.4, 0, -0.4)
    np.testing.assert_allclose(poses[2, :3, 3], [BASELINE, 0, -BASELINE], atol=1e-9)
    np.testing.assert_allclose((poses[2] @ [0, 0, 5, 1])[:3], [BASELINE - 5, 0, -BASELINE], atol=1e-9)


def test_imu_poses_mercator_scale_from_first_latitude() -> None:
    lat_step = math.degrees(100.0 / EARTH_RADIUS)
    poses = imu_poses(np.stack([packet(lat=60.0, lon=10.0), packet(lat=60.0 + lat_step, lon=10.0)]))
    # scale = cos(60 deg) = 0.5: x = 0.5 R lon
    assert poses[0, 0, 3] == pytest.approx(0.5 * EARTH_RADIUS * math.radians(10.0))
    # 100 m north; scaled Mercator overstates by ~tan(lat) dlat / 2 = 1.4e-5 relative here
    assert poses[1, 1, 3] - poses[0, 1, 3] == pytest.approx(100.0, rel=3e-5)
    with pytest.raises(ValueError, match=r"imu_poses: oxts must be \(T, >=6\)"):
        imu_poses(np.zeros((2, 3)))


# ------------------------------------------------------------------ scene folders
def test_drive_to_scene_reads_back_with_perfect_self_metrics(tmp_path: Path) -> None:
    wall = np.array([[8.0 + 0.1 * i, y, z, 0.5] for i, y in enumerate(np.linspace(-5, 5, 30))
                     for z in np.linspace(-1.1, 1.1, 10)], dtype=np.float32)
    drive = make_drive(tmp_path / "raw", scans={0: wall, 2: wall * [1.2, 1, 1, 1]})  # frame 1 has no scan
    scene_dir = kitti_drive_to_scene(drive, tmp_path / "scene")
    scene = read_scene(scene_dir, load_video=True)
    date = drive.parent
    assert scene.depth.shape == (3, H, W) and scene.frames is not None and scene.frames.shape == (3, H, W, 3)
    np.testing.assert_array_equal(scene.K.numpy(), camera_intrinsics(date)[0])
    np.testing.assert_allclose(scene.world_from_camera.numpy(),
                               oxts_poses(sorted((drive / "oxts" / "data").glob("*.txt")), date), atol=1e-8)
    assert scene.world_from_camera[2, 2, 3].item() == pytest.approx(2.0, abs=1e-4)  # 1 m north per frame
    np.testing.assert_array_equal(scene.depth[0].numpy(), velodyne_depth(wall, date))
    np.testing.assert_array_equal(scene.depth[2].numpy(), velodyne_depth(wall * [1.2, 1, 1, 1], date))
    assert (scene.depth[0] > 0).sum() > 50 and not scene.depth[1].any()
    assert not scene.semantic.any() and scene.classes == ["unlabelled"]
    assert [im["id"] for im in scene.boxes["images"]] == [0, 1, 2] and scene.boxes["annotations"] == []
    assert scene.meta["frames_without_velodyne"] == ["0000000001"] and scene.fps == pytest.approx(10.0)
    pngs = np.stack([np.asarray(Image.open(p)) for p in sorted((drive / "image_02" / "data").glob("*.png"))])
    assert np.abs(scene.frames.numpy().astype(float) - pngs).mean() < 4.0  # H.264 at CRF 18
    gt = scene.depth[[0, 2]]
    metrics = depth_metrics(gt, gt, min_depth=1e-3, max_depth=80.0)
    assert metrics["abs_rel"] == 0.0 and metrics["rmse"] == 0.0 and metrics["a1"] == 1.0
    assert load_sources(scene_dir)[0].scene_dir == str(scene_dir)  # what --data.val_sources detects


def test_odd_sized_frames_are_cropped_and_max_frames(tmp_path: Path) -> None:
    drive = make_drive(tmp_path / "raw", frames=3, size=(H + 1, W + 1))
    scene = read_scene(kitti_drive_to_scene(drive, tmp_path / "scene", max_frames=2), load_video=True)
    assert scene.depth.shape == (2, H, W) and scene.meta["image_size"] == [H + 1, W + 1]
    png = np.asarray(Image.open(drive / "image_02" / "data" / "0000000001.png"))
    assert scene.frames is not None and np.abs(scene.frames[1].numpy().astype(float) - png[:H, :W]).mean() < 4.0
    wall = read_velodyne(drive / "velodyne_points" / "data" / "0000000001.bin")
    np.testing.assert_array_equal(scene.depth[1].numpy(), velodyne_depth(wall, drive.parent, size=(H, W)))
    np.testing.assert_array_equal(scene.K.numpy(), camera_intrinsics(drive.parent)[0])  # crop keeps K


def test_drive_to_scene_errors_name_the_file(tmp_path: Path) -> None:
    drive = make_drive(tmp_path / "raw")
    (drive / "oxts" / "data" / "0000000001.txt").unlink()
    with pytest.raises(KittiFormatError, match=r"0000000001\.txt: OXTS packet not found \(1 of 3"):
        kitti_drive_to_scene(drive, tmp_path / "scene")
    assert not (tmp_path / "scene").exists()
    write_packet(drive / "oxts" / "data" / "0000000001.txt", packet())
    (drive / "velodyne_points" / "data" / "0000000002.bin").write_bytes(b"\0" * 6)
    with pytest.raises(KittiFormatError, match=r"0000000002\.bin: 6 bytes"):
        kitti_drive_to_scene(drive, tmp_path / "scene")
    with pytest.raises(KittiFormatError, match=r"image_03[/\\]data: no PNG frames"):
        kitti_drive_to_scene(drive, tmp_path / "scene", camera="image_03")
    (drive.parent / "calib_imu_to_velo.txt").unlink()
    with pytest.raises(KittiFormatError, match=r"calib_imu_to_velo\.txt: not found"):
        kitti_drive_to_scene(drive, tmp_path / "scene")
    assert not list(tmp_path.glob(".scene*"))  # no temporary folders left behind


def test_existing_depth_pose_evaluator_runs_on_converted_drive(tmp_path: Path) -> None:
    drive = make_drive(tmp_path / "raw", frames=3)
    scene_dir = kitti_drive_to_scene(drive, tmp_path / "scene")

    def depth_fn(images: torch.Tensor) -> torch.Tensor:
        return torch.full((images.shape[0], 1, *images.shape[-2:]), 7.0)

    def pose_fn(image_a: torch.Tensor, image_b: torch.Tensor) -> torch.Tensor:
        return torch.eye(4).expand(image_a.shape[0], 4, 4).clone()

    result = evaluate_scene(scene_dir, depth_fn, pose_fn, size=(H, W), min_depth=1e-3, max_depth=80.0, snippet=3,
                            backend="pyav")
    gt = read_scene(scene_dir).depth
    expected = depth_metrics(torch.full_like(gt, 7.0), gt, min_depth=1e-3, max_depth=80.0)
    assert result["depth/frames"] == 3.0 and result["pose/snippets"] == 1.0
    assert result["depth/abs_rel"] == pytest.approx(expected["abs_rel"], rel=1e-6) and expected["abs_rel"] > 0.01
    # identity poses vs 1 m/frame forward: scale 0, errors 0, 1, 2 m -> sqrt(5) / 3 (SfMLearner normalisation)
    assert result["pose/ate"] == pytest.approx(math.sqrt(5) / 3, abs=1e-3)


# ------------------------------------------------------------------ tools/kitti_to_scene.py
def test_cli_writes_scene_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str], load_tool: Callable[[str], ModuleType]) -> None:
    drive = make_drive(tmp_path / "raw", frames=3)
    tool = load_tool("kitti_to_scene")
    assert tool.main([str(drive), "--out", str(tmp_path / "scene"), "--max-frames", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 2 and summary["size_hw"] == [H, W]
    assert summary["path_length_m"] == pytest.approx(1.0, abs=1e-3)
    assert summary["depth_range_m"][0] == pytest.approx(10.0, abs=0.01)  # the wall's near end in frame 0
    assert read_scene(tmp_path / "scene").num_frames == 2
    (drive / "oxts" / "data" / "0000000000.txt").write_text("1 2 3")
    assert tool.main([str(drive), "--out", str(tmp_path / "scene2")]) == 1
    assert "0000000000.txt: OXTS packet has 3 numbers" in capsys.readouterr().err
