"""Determinism, label consistency, scene I/O, CLI and error messages of the procedural worlds."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from stssl.worlds import (
    WORLDS,
    SceneFormatError,
    ensure_world,
    read_scene,
    render_driving,
    render_endoscopy,
    write_scene,
)
from stssl.worlds.cli import main as world_main
from stssl.worlds.driving import DRIVING_CLASSES
from stssl.worlds.endoscopy import ENDOSCOPY_CLASSES
from stssl.worlds.scene_io import REQUIRED_FILES, write_video

SMALL = {"driving": dict(frames=4, height=32, width=96), "endoscopy": dict(frames=4, height=32, width=32)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(WORLDS))
def test_deterministic_per_seed(name: str) -> None:
    a, b, c = (WORLDS[name](seed=s, **SMALL[name]) for s in (3, 3, 4))
    assert torch.equal(a.frames, b.frames) and torch.equal(a.depth, b.depth) and torch.equal(a.semantic, b.semantic)
    assert torch.equal(a.world_from_camera, b.world_from_camera) and a.boxes == b.boxes
    assert not torch.equal(a.frames, c.frames)


@pytest.mark.parametrize("name", sorted(WORLDS))
def test_scene_contract(name: str) -> None:
    s = WORLDS[name](seed=0, **SMALL[name])
    T, H, W = SMALL[name]["frames"], SMALL[name]["height"], SMALL[name]["width"]
    assert s.frames.dtype == torch.uint8 and tuple(s.frames.shape) == (T, H, W, 3)
    assert s.depth.dtype == torch.float32 and tuple(s.depth.shape) == (T, H, W)
    assert s.semantic.dtype == torch.uint8 and int(s.semantic.max()) < len(s.classes)
    assert s.K.dtype == torch.float64 and s.world_from_camera.dtype == torch.float64
    R = s.world_from_camera[:, :3, :3]
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(T, 3, 3), atol=1e-9)
    assert torch.allclose(torch.det(R), torch.ones(T, dtype=torch.float64))
    assert len(s.boxes["images"]) == T
    # Camera moves forward along its own z axis between frames.
    step = s.world_from_camera[1, :3, 3] - s.world_from_camera[0, :3, 3]
    assert float(step @ s.world_from_camera[0, :3, 2]) > 0.5 * float(step.norm()) > 0


def test_driving_intrinsics_and_sky_depth() -> None:
    s = render_driving(seed=1, **SMALL["driving"])
    K = s.K
    assert K[0, 0] == pytest.approx(0.58 * 96) and K[1, 1] == pytest.approx(1.92 * 32)
    assert (K[0, 2], K[1, 2]) == (pytest.approx(47.5), pytest.approx(15.5))
    sky = s.semantic == DRIVING_CLASSES.index("sky")
    assert sky.any() and bool((s.depth[sky] == 0).all()) and bool((s.depth[~sky] > 0).all())
    # Ground pixels lie on the plane 1.65 m below the camera: y_cam * depth / fy ~= height for level ground.
    road = s.semantic[0] == DRIVING_CLASSES.index("road")
    v = torch.arange(32, dtype=torch.float64)[:, None].expand(32, 96)
    y = (v - K[1, 2]) / K[1, 1] * s.depth[0].double()
    assert torch.allclose(y[road], torch.full_like(y[road], 1.65), atol=1e-3)


def test_driving_boxes_match_car_pixels() -> None:
    s = render_driving(frames=6, height=64, width=192, seed=0)
    car = DRIVING_CLASSES.index("car")
    anns = s.boxes["annotations"]
    assert anns, "the driving world should show cars"
    covered = torch.zeros_like(s.semantic, dtype=torch.bool)
    for a in anns:
        x, y, w, h = (int(v) for v in a["bbox"])
        region = s.semantic[a["image_id"], y : y + h, x : x + w] == car
        assert region.sum() >= a["area"] > 0
        assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()  # tight
        covered[a["image_id"], y : y + h, x : x + w] = True
        assert isinstance(a["moving"], bool)
    assert bool(covered[s.semantic == car].float().mean() > 0.95)
    ids = {a["instance_id"] for a in anns}
    assert len(ids) < len(anns), "instances should persist across frames with stable ids"


def test_endoscopy_labels() -> None:
    s = render_endoscopy(frames=4, height=48, width=48, seed=2, polyps=6)
    void = s.semantic == ENDOSCOPY_CLASSES.index("void")
    assert bool((s.depth[void] == 0).all()) and bool((s.depth[~void] > 0).all())
    assert float(s.depth.max()) < 0.3 and float(s.depth[~void].min()) > 0
    polyp = s.semantic == ENDOSCOPY_CLASSES.index("polyp")
    for a in s.boxes["annotations"]:
        x, y, w, h = (int(v) for v in a["bbox"])
        assert polyp[a["image_id"], y : y + h, x : x + w].sum() >= a["area"]
    # Roll: the camera's x axis turns about its z axis over time.
    x0, x3 = s.world_from_camera[0, :3, 0], s.world_from_camera[3, :3, 0]
    assert float(x0 @ x3) < 0.9999


@pytest.mark.slow
def test_scene_io_round_trip(tmp_path: Path) -> None:
    s = render_driving(seed=0, **SMALL["driving"])
    back = read_scene(write_scene(s, tmp_path / "scene"), load_video=True)
    assert torch.allclose(back.world_from_camera, s.world_from_camera, atol=1e-7)
    assert torch.equal(back.depth, s.depth) and torch.equal(back.semantic, s.semantic)
    assert torch.allclose(back.K, s.K) and back.classes == s.classes and back.boxes == s.boxes
    assert back.fps == s.fps and back.meta["seed"] == 0
    err = (back.frames.float() - s.frames.float()).abs().mean()
    assert float(err) < 6.0, f"H.264 round trip error {float(err):.2f} / 255"
    assert read_scene(tmp_path / "scene").frames is None


def test_write_video_needs_even_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "v.mp4", torch.zeros(2, 31, 32, 3, dtype=torch.uint8), 10.0)


@lru_cache(maxsize=1)
def _small_scene():
    return render_endoscopy(seed=0, **SMALL["endoscopy"])


def _fresh_scene_dir(tmp_path: Path) -> Path:
    """A valid scene folder (rendered once per session, written per test)."""
    return write_scene(_small_scene(), tmp_path / "scene")


@pytest.mark.parametrize(
    "file, corrupt",
    [
        ("calib.json", "not json"),
        ("poses.txt", "1 2 3\n"),
        ("depth.npz", None),
        ("semantic.npz", b"garbage"),
        ("classes.json", '{"a": 1}'),
        ("boxes.json", "[]"),
        ("video.mp4", None),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, file: str, corrupt: str | bytes | None) -> None:
    d = _fresh_scene_dir(tmp_path)
    if corrupt is None:
        (d / file).unlink()
    elif isinstance(corrupt, bytes):
        (d / file).write_bytes(corrupt)
    else:
        (d / file).write_text(corrupt)
    with pytest.raises(SceneFormatError, match=file.replace(".", r"\.")):
        read_scene(d, load_video=True)


def test_inconsistent_files_are_reported(tmp_path: Path) -> None:
    d = _fresh_scene_dir(tmp_path)
    lines = (d / "poses.txt").read_text().splitlines()
    (d / "poses.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(SceneFormatError, match=r"poses\.txt.*3 poses"):
        read_scene(d)
    np.savez(d / "semantic.npz", semantic=np.full((4, 32, 32), 9, dtype=np.uint8))
    with pytest.raises(SceneFormatError, match=r"semantic\.npz.*class index 9"):
        read_scene(d)


def test_cli_writes_valid_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "world"
    rc = world_main(["endoscopy", "--out", str(out), "--frames", "3", "--height", "32", "--width", "32", "--seed", "5"])
    assert rc == 0 and str(out) in capsys.readouterr().out
    s = read_scene(out, load_video=True)
    assert tuple(s.frames.shape) == (3, 32, 32, 3) and s.meta["seed"] == 5
    assert json.loads((out / "calib.json").read_text())["width"] == 32
    with pytest.raises(SystemExit):
        world_main(["driving", "--out", str(tmp_path / "odd"), "--height", "31"])


def test_ensure_world_renders_once(tmp_path: Path) -> None:
    path = ensure_world("endoscopy", tmp_path, frames=2, height=16, width=16, seed=1)
    assert path.name == "endoscopy_s1_2x16x16" and all((path / f).is_file() for f in REQUIRED_FILES)
    stamp = (path / "depth.npz").stat().st_mtime_ns
    assert ensure_world("endoscopy", tmp_path, frames=2, height=16, width=16, seed=1) == path
    assert (path / "depth.npz").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary folders left behind
    (path / "boxes.json").unlink()  # incomplete: rendered again
    assert (ensure_world("endoscopy", tmp_path, frames=2, height=16, width=16, seed=1) / "boxes.json").is_file()
    with pytest.raises(KeyError, match="choose from"):
        ensure_world("moon", tmp_path, frames=2, height=16, width=16, seed=1)
