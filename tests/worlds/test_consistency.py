"""Ground-truth consistency: depth + relative pose + K warp frame t+1 onto frame t (a naive torch warp)."""

from __future__ import annotations

from functools import cache

import pytest
import torch
import torch.nn.functional as F

from stssl.worlds import read_scene, render_driving, render_endoscopy, write_scene
from stssl.worlds.driving import DRIVING_CLASSES
from stssl.worlds.scene_io import Scene


@cache
def _scene(name: str, seed: int = 0) -> Scene:
    if name == "driving":
        return render_driving(frames=8, height=64, width=192, seed=seed)
    if name == "endoscopy_albedo":  # light without falloff or highlights: only the geometry changes the image
        return render_endoscopy(frames=8, height=64, width=64, seed=seed, falloff=0.0, specular=0.0)
    return render_endoscopy(frames=8, height=64, width=64, seed=seed)


def warp_next_to_current(
    image_next: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, tp1_from_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``image_next`` (H, W, 3) at the projection of frame t's pixels; returns (warped, valid mask)."""
    H, W = depth.shape
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1)
    pts = (pix @ torch.linalg.inv(K).T) * depth.double()[..., None]
    pts2 = pts @ tp1_from_t[:3, :3].T + tp1_from_t[:3, 3]
    z2 = pts2[..., 2]
    uv2 = (pts2 @ K.T)[..., :2] / z2.clamp_min(1e-9)[..., None]
    grid = torch.stack([(uv2[..., 0] + 0.5) / W * 2 - 1, (uv2[..., 1] + 0.5) / H * 2 - 1], -1)
    warped = F.grid_sample(
        image_next.permute(2, 0, 1)[None].float(), grid[None].float(), mode="bilinear", align_corners=False
    )[0].permute(1, 2, 0)
    inside = (grid.abs() < 1 - 2.0 / min(H, W)).all(-1)
    # Away from depth discontinuities (occlusion boundaries, where bilinear sampling mixes surfaces).
    d = depth.float()[None, None]
    dmax = F.max_pool2d(d, 3, 1, 1)[0, 0]
    dmin = -F.max_pool2d(-torch.where(d > 0, d, torch.full_like(d, 1e9)), 3, 1, 1)[0, 0]
    smooth = dmax < 1.25 * dmin
    valid = (depth > 0) & (z2 > 0) & inside & smooth
    return warped, valid


def _errors(frames: torch.Tensor, scene: Scene, exclude: torch.Tensor | None = None) -> tuple[float, float]:
    """Mean abs warp error and identity (no-warp) error in [0, 1] units over valid pixels of all pairs."""
    warp_err, ident_err = [], []
    for t in range(scene.num_frames - 1):
        tp1_from_t = torch.linalg.inv(scene.world_from_camera[t + 1]) @ scene.world_from_camera[t]
        img_t, img_n = frames[t].float() / 255, frames[t + 1].float() / 255
        warped, valid = warp_next_to_current(img_n, scene.depth[t], scene.K, tp1_from_t)
        if exclude is not None:
            valid &= ~exclude[t]
        assert valid.float().mean() > 0.25, "too few valid pixels to judge the warp"
        warp_err.append((warped - img_t).abs().mean(-1)[valid].mean())
        ident_err.append((img_n - img_t).abs().mean(-1)[valid].mean())
    return float(torch.stack(warp_err).mean()), float(torch.stack(ident_err).mean())


def _exclude(scene: Scene) -> torch.Tensor | None:
    # Cars may move (oncoming traffic): judge the static world only.
    if scene.classes == DRIVING_CLASSES:
        return scene.semantic == DRIVING_CLASSES.index("car")
    return None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["driving", "endoscopy_albedo"])
def test_gt_warp_reproduces_frame(name: str) -> None:
    scene = _scene(name)
    assert scene.frames is not None
    warp, ident = _errors(scene.frames, scene, _exclude(scene))
    assert ident > 0.02, f"{name}: consecutive frames barely differ ({ident:.4f}); the camera must move"
    assert warp < 0.3 * ident, f"{name}: warp error {warp:.4f} vs identity {ident:.4f}"


@pytest.mark.slow
def test_gt_warp_endoscopy_with_moving_light() -> None:
    """With the light at the camera (falloff + highlights) brightness constancy breaks, yet the warp helps."""
    warp, ident = _errors(_scene("endoscopy").frames, _scene("endoscopy"))
    assert warp < 0.95 * ident, f"warp error {warp:.4f} vs identity {ident:.4f}"


@pytest.mark.parametrize("name", ["driving", "endoscopy_albedo"])
def test_gt_warp_wrong_pose_is_worse(name: str) -> None:
    """The check has teeth: the same warp with the reversed motion is much worse than the true one."""
    scene = _scene(name)
    assert scene.frames is not None
    warp, _ = _errors(scene.frames, scene, _exclude(scene))
    reversed_poses = scene.world_from_camera.flip(0)
    wrong = Scene(**{**scene.__dict__, "world_from_camera": reversed_poses})
    wrong_err, _ = _errors(scene.frames, wrong, _exclude(scene))
    assert wrong_err > 2 * warp


@pytest.mark.slow
@pytest.mark.parametrize("name", ["driving", "endoscopy_albedo"])
def test_gt_warp_after_h264_round_trip(name: str, tmp_path) -> None:
    scene = _scene(name)
    back = read_scene(write_scene(scene, tmp_path / name), load_video=True)
    assert back.frames is not None
    warp, ident = _errors(back.frames, back, _exclude(back))
    assert warp < 0.4 * ident, f"{name} (decoded): warp error {warp:.4f} vs identity {ident:.4f}"
    assert warp < 0.02, f"{name} (decoded): warp error {warp:.4f} is large in absolute terms"
