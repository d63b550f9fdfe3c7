"""Scene-level depth/pose evaluation: oracle predictors score perfectly, noisy ones worse; files are written."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stssl.eval.depth_pose import (
    align_trajectory,
    chain_poses,
    colorize,
    combine_scene_metrics,
    evaluate_scene,
    load_frames,
    plot_trajectory,
    save_depth_visuals,
    write_depth_maps,
    write_poses_kitti,
)
from stssl.eval.metrics import depth_metrics, snippet_ate
from stssl.geometry.pose import pose_vec_to_matrix
from stssl.worlds.scene_io import SceneFormatError, read_depth, read_poses

FRAMES, H, W = 12, 48, 144
SCALE = 3.7


def read_image(path: str) -> torch.Tensor:
    """A PNG as ``(C, H, W)`` uint8."""
    return torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)


@pytest.fixture(scope="module")
def scene(tiny_driving_scene: Path) -> Path:
    return tiny_driving_scene


class Oracle:
    """Finds which scene frame it is shown (nearest decoded frame) and answers with scaled ground truth."""

    def __init__(self, scene_dir: Path, size: tuple[int, int] = (H, W), depth_noise: float = 0.0,
                 pose_noise: float = 0.0, seed: int = 0) -> None:
        self.frames = load_frames(scene_dir / "video.mp4", size=size)[0].float() / 255.0
        self.depth = torch.from_numpy(read_depth(scene_dir)).double()
        self.poses = torch.from_numpy(read_poses(scene_dir))
        self.size, self.depth_noise, self.pose_noise = size, depth_noise, pose_noise
        self.gen = torch.Generator().manual_seed(seed)
        self.seen: list[int] = []

    def which(self, images: torch.Tensor) -> list[int]:
        dist = (images[:, None].double() - self.frames[None].double()).abs().flatten(2).mean(-1)
        return dist.argmin(1).tolist()

    def predict_depth(self, images: torch.Tensor) -> torch.Tensor:
        idx = self.which(images)
        self.seen.extend(idx)
        gt = self.depth[idx][:, None]
        gt = torch.nn.functional.interpolate(gt, size=self.size, mode="nearest") if gt.shape[-2:] != self.size else gt
        gt = torch.where(gt > 0, gt, torch.full_like(gt, 100.0)) * SCALE
        noise = torch.exp(self.depth_noise * torch.randn(gt.shape, generator=self.gen, dtype=gt.dtype))
        return (gt * noise).float()

    def predict_pose(self, image_a: torch.Tensor, image_b: torch.Tensor) -> torch.Tensor:
        a, b = self.which(image_a), self.which(image_b)
        b_from_a = torch.linalg.inv(self.poses[b]) @ self.poses[a]
        b_from_a[:, :3, 3] *= SCALE
        if self.pose_noise:
            vec = self.pose_noise * torch.randn(len(a), 6, generator=self.gen, dtype=torch.float64)
            b_from_a = pose_vec_to_matrix(vec) @ b_from_a
        return b_from_a.float()


def _evaluate(scene: Path, oracle: Oracle, **kwargs) -> dict:
    kwargs.setdefault("size", (H, W))
    return evaluate_scene(scene, oracle.predict_depth, oracle.predict_pose, min_depth=0.1, max_depth=80.0,
                          **kwargs)


@pytest.mark.slow
def test_oracle_scores_perfectly_and_noise_scores_worse(scene: Path) -> None:
    oracle = Oracle(scene)
    out = _evaluate(scene, oracle, return_predictions=True, batch_size=5)
    assert oracle.seen == list(range(FRAMES))  # every frame, in order, each once
    assert out["depth/abs_rel"] < 1e-6 and out["depth/rmse"] < 1e-4
    assert out["depth/a1"] == 1.0 and out["depth/a3"] == 1.0
    assert out["depth/scale_ratio_median"] == pytest.approx(1 / SCALE, rel=1e-5)
    assert out["depth/scale_ratio_std"] < 1e-6
    assert out["pose/ate"] < 1e-5 and out["pose/snippets"] == FRAMES - 5 + 1
    assert out["depth/frames"] == FRAMES
    pred = out["predictions"]
    gt_rel = np.linalg.inv(pred.gt_world_from_camera[0]) @ pred.gt_world_from_camera
    np.testing.assert_allclose(pred.pred_world_from_camera[:, :3, :3], gt_rel[:, :3, :3], atol=1e-5)
    np.testing.assert_allclose(pred.pred_world_from_camera[:, :3, 3], SCALE * gt_rel[:, :3, 3], atol=1e-4)
    assert tuple(pred.images.shape) == (FRAMES, 3, H, W) and pred.images.dtype == torch.uint8

    noisy = _evaluate(scene, Oracle(scene, depth_noise=0.3, pose_noise=0.05))
    assert noisy["depth/abs_rel"] > 0.1 and noisy["depth/a1"] < 0.9
    assert noisy["depth/scale_ratio_std"] > 0.01
    assert noisy["pose/ate"] > 0.01 and noisy["pose/ate_std"] > 0


def test_reference_values_match_the_metric_functions(scene: Path) -> None:
    """The scene-level numbers are exactly the pure metrics applied to the returned predictions."""
    out = _evaluate(scene, Oracle(scene, depth_noise=0.2, pose_noise=0.02, seed=3), return_predictions=True,
                    max_frames=7, frame_step=1, snippet=3)
    pred = out["predictions"]
    ref = depth_metrics(pred.depth, pred.gt_depth, min_depth=0.1, max_depth=80.0, resize_pred="inverse_depth")
    for key, value in ref.items():
        assert out[f"depth/{key}"] == pytest.approx(value, rel=1e-12)
    ates = [snippet_ate(pred.pred_world_from_camera[s : s + 3], pred.gt_world_from_camera[s : s + 3])
            for s in range(5)]
    assert out["pose/ate"] == pytest.approx(np.mean(ates)) and out["pose/ate_std"] == pytest.approx(np.std(ates))
    assert out["depth/frames"] == 7 and out["pose/snippets"] == 5


def test_frames_without_ground_truth_count_for_poses_not_depth(scene: Path, tmp_path: Path) -> None:
    """E.g. KITTI frames with no velodyne scan: depth metrics skip them, the trajectory keeps them."""
    import shutil

    copy = tmp_path / scene.name
    shutil.copytree(scene, copy)
    depth = read_depth(copy)
    depth[[1, 4]] = 0.0
    np.savez_compressed(copy / "depth.npz", depth=depth)
    out = _evaluate(copy, Oracle(scene, depth_noise=0.2, seed=3), return_predictions=True, max_frames=7)
    assert out["depth/frames"] == 5 and out["depth/frames_without_gt"] == 2
    pred = out["predictions"]
    keep = [0, 2, 3, 5, 6]
    ref = depth_metrics(pred.depth[keep], pred.gt_depth[keep], min_depth=0.1, max_depth=80.0,
                        resize_pred="inverse_depth")
    assert out["depth/abs_rel"] == pytest.approx(ref["abs_rel"], rel=1e-12)
    assert np.isnan(pred.scale_ratios[[1, 4]]).all() and np.isfinite(pred.scale_ratios[keep]).all()
    assert out["pose/snippets"] == 3  # all 7 frames in the trajectory
    depth[:] = 0.0
    np.savez_compressed(copy / "depth.npz", depth=depth)
    with pytest.raises(ValueError, match="no frame has ground-truth depth"):
        _evaluate(copy, Oracle(scene), max_frames=7)


def test_frame_step_resize_and_max_frames(scene: Path) -> None:
    oracle = Oracle(scene, size=(32, 96))
    out = _evaluate(scene, oracle, size=(32, 96), frame_step=2, max_frames=5, resize_mode="depth",
                    return_predictions=True)
    assert oracle.seen == [0, 2, 4, 6, 8]
    assert out["pose/ate"] < 1e-5  # poses between frames 2 apart are still exact
    assert out["depth/abs_rel"] < 0.15 and out["depth/a1"] > 0.85  # only resampling error at edges
    K = out["predictions"].K
    assert K[0, 0].item() == pytest.approx(0.58 * 96) and K[1, 1].item() == pytest.approx(1.92 * 32)


def test_bad_scene_dirs_name_the_file(scene: Path, tmp_path: Path) -> None:
    oracle = Oracle(scene)
    with pytest.raises(SceneFormatError, match="not a directory"):
        _evaluate(tmp_path / "nope", oracle)
    broken = tmp_path / "broken"
    shutil.copytree(scene, broken)
    (broken / "depth.npz").unlink()
    with pytest.raises(SceneFormatError, match=r"broken/depth\.npz: missing"):
        _evaluate(broken, oracle)
    shutil.copy(scene / "depth.npz", broken / "depth.npz")
    lines = (broken / "poses.txt").read_text().splitlines()
    (broken / "poses.txt").write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(SceneFormatError, match=r"poses\.txt: 10 poses but depth\.npz has 12"):
        _evaluate(broken, oracle)
    (broken / "poses.txt").write_text("\n".join(lines) + "\n")
    (broken / "video.mp4").write_bytes(b"not a video")
    with pytest.raises(Exception, match=r"broken/video\.mp4"):
        _evaluate(broken, oracle)


def test_bad_arguments_and_predictor_outputs(scene: Path) -> None:
    oracle = Oracle(scene)
    with pytest.raises(ValueError, match="a pose snippet needs 5"):
        _evaluate(scene, oracle, max_frames=4)
    with pytest.raises(ValueError, match="resize_mode"):
        _evaluate(scene, oracle, resize_mode="area")
    with pytest.raises(ValueError, match=r"predict_depth_fn output: expected shape \(B 1 H W\)"):
        evaluate_scene(scene, lambda x: x, oracle.predict_pose, size=(H, W), min_depth=0.1, max_depth=80.0)
    with pytest.raises(ValueError, match=r"predict_pose_fn output: expected shape \(B 4 4\)"):
        evaluate_scene(scene, oracle.predict_depth, lambda a, b: torch.eye(4).expand(2, 4, 4), size=(H, W),
                       min_depth=0.1, max_depth=80.0, max_frames=5)


def test_chain_poses_recovers_the_trajectory() -> None:
    gen = torch.Generator().manual_seed(0)
    world_from_cam = pose_vec_to_matrix(torch.randn(6, 6, generator=gen, dtype=torch.float64)).numpy()
    b_from_a = np.linalg.inv(world_from_cam[1:]) @ world_from_cam[:-1]
    np.testing.assert_allclose(chain_poses(b_from_a), np.linalg.inv(world_from_cam[0]) @ world_from_cam, atol=1e-10)
    with pytest.raises(ValueError, match="b_from_a must have shape"):
        chain_poses(np.zeros((3, 3, 4)))


def test_align_trajectory_recovers_a_similarity() -> None:
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(20, 3))
    R = pose_vec_to_matrix(torch.tensor([[0.3, -0.5, 1.1, 0, 0, 0]], dtype=torch.float64))[0, :3, :3].numpy()
    pred = 0.4 * gt @ R.T + np.array([1.0, -2.0, 3.0])
    np.testing.assert_allclose(align_trajectory(pred, gt, "sim3"), gt, atol=1e-10)
    assert np.abs(align_trajectory(pred, gt, "scale") - gt).max() > 0.1  # scale alone cannot undo a rotation
    shifted = gt[0] + 2.5 * (gt - gt[0])
    np.testing.assert_allclose(align_trajectory(shifted, gt, "scale"), gt, atol=1e-10)
    np.testing.assert_array_equal(align_trajectory(pred, gt, "none"), pred)
    with pytest.raises(ValueError, match="mode must be"):
        align_trajectory(pred, gt, "affine")


def test_colorize_matches_matplotlib_magma() -> None:
    cm = pytest.importorskip("matplotlib").colormaps["magma"]
    values = np.random.default_rng(0).uniform(size=(8, 16))
    ours = colorize(values, 0.0, 1.0).astype(np.int64)
    ref = np.round(cm(values)[..., :3] * 255).astype(np.int64)
    assert np.abs(ours - ref).max() <= 4
    out = colorize(np.array([[100.0, np.nan, 1.0, 5.0]]), invalid=np.array([[True, False, False, False]]),
                   invalid_colour=(9, 9, 9))
    assert out[0, 0].tolist() == [9, 9, 9] and out[0, 1].tolist() == [9, 9, 9]
    darkest, lightest = colorize(np.array([[0.0, 1.0]]))[0].tolist()
    assert out[0, 2].tolist() == darkest and out[0, 3].tolist() == lightest  # only valid values set the range


def test_save_depth_visuals_shows_zero_error_for_the_oracle(scene: Path, tmp_path: Path) -> None:
    out = _evaluate(scene, Oracle(scene), max_frames=5, return_predictions=True)
    pred = out["predictions"]
    noisy_depth = pred.depth * torch.exp(0.5 * torch.randn(pred.depth.shape, generator=torch.Generator().manual_seed(0)))
    paths = save_depth_visuals(tmp_path / "good", pred.images[:2], pred.depth[:2], pred.gt_depth[:2])
    bad = save_depth_visuals(tmp_path / "bad", pred.images[:2], noisy_depth[:2], pred.gt_depth[:2], names=["a", "b"])
    assert [p.name for p in paths] == ["depth_0000.png", "depth_0001.png"] and bad[1].name == "b.png"
    good_img, bad_img = read_image(str(paths[0])), read_image(str(bad[0]))
    assert tuple(good_img.shape) == (3, 4 * H, W)
    valid = (pred.gt_depth[0] > 1e-3) & (pred.gt_depth[0] < 80)
    good_err, bad_err = good_img[:, 3 * H :][:, valid].float(), bad_img[:, 3 * H :][:, valid].float()
    assert good_err.max() <= colorize(np.zeros((1, 1)))[0, 0].max() + 1  # oracle: darkest colour everywhere
    assert bad_err.mean() > good_err.mean() + 20
    # image panel is the frame; predicted and ground-truth panels agree for the oracle
    assert (good_img[:, :H].float() - pred.images[0].float()).abs().mean() < 1
    assert (good_img[:, H : 2 * H][:, valid].float() - good_img[:, 2 * H : 3 * H][:, valid].float()).abs().max() <= 2
    only_pred = save_depth_visuals(tmp_path / "nogt", pred.images[:1], pred.depth[:1, None])
    assert tuple(read_image(str(only_pred[0])).shape) == (3, 2 * H, W)
    with pytest.raises(ValueError, match="2 images but 1 depth maps"):
        save_depth_visuals(tmp_path, pred.images[:2], pred.depth[:1])


def test_plot_trajectory_writes_a_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    t = np.linspace(0, 1, 10)
    gt = np.stack([np.sin(t), 0 * t, 5 * t], 1)
    path = plot_trajectory(gt * 0.3, gt, tmp_path / "sub" / "traj.png", title="scene")
    img = read_image(str(path))
    assert img.shape[0] in (3, 4) and img.shape[1] > 100 and img.shape[2] > 100
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="plot_trajectory needs matplotlib"):
        plot_trajectory(gt, gt, tmp_path / "x.png")


def test_writers_round_trip(tmp_path: Path) -> None:
    poses = pose_vec_to_matrix(torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    write_poses_kitti(tmp_path / "out" / "poses.txt", poses)
    np.testing.assert_allclose(read_poses(tmp_path / "out"), poses.numpy(), atol=1e-8)
    with pytest.raises(ValueError, match=r"poses must be \(N, 4, 4\)"):
        write_poses_kitti(tmp_path / "p.txt", np.zeros((2, 4)))
    depth = torch.rand(3, 1, 8, 12) * 10 + 1
    written = write_depth_maps(tmp_path / "d", depth, frame_indices=[4, 5, 6])
    np.testing.assert_array_equal(read_depth(tmp_path / "d"), depth[:, 0].numpy())
    assert [p.name for p in written["png"]] == ["000004.png", "000005.png", "000006.png"]
    assert tuple(read_image(str(written["png"][0])).shape) == (3, 8, 12)
    with pytest.raises(ValueError, match="2 frame_indices for 3 depth maps"):
        write_depth_maps(tmp_path / "e", depth, frame_indices=[0, 1])


def test_combine_scene_metrics_pools_like_one_sequence() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=5), rng.uniform(size=9)

    def result(ates: np.ndarray, abs_rel: float, frames: int) -> dict:
        return {"depth/abs_rel": abs_rel, "depth/frames": float(frames), "pose/ate": ates.mean(),
                "pose/ate_std": ates.std(), "pose/snippets": float(len(ates))}

    out = combine_scene_metrics([result(a, 0.1, 10), result(b, 0.3, 30)])
    both = np.concatenate([a, b])
    assert out["pose/ate"] == pytest.approx(both.mean()) and out["pose/ate_std"] == pytest.approx(both.std())
    assert out["depth/abs_rel"] == pytest.approx(0.25) and out["depth/frames"] == 40 and out["pose/snippets"] == 14
    with pytest.raises(ValueError, match="no results"):
        combine_scene_metrics([])
