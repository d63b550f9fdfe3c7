"""Tests for stssl.eval.metrics: Eigen depth metrics and snippet ATE against naive references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stssl.eval.metrics import DEPTH_METRICS, depth_metrics, snippet_ate

MIN, MAX = 1e-3, 80.0


def naive_depth_metrics(
    pred: np.ndarray, gt: np.ndarray, *, median_scaling: bool, garg_crop: bool
) -> dict[str, float]:
    """Pixel loops, one image at a time, then the mean over images."""
    per_image: list[dict[str, float]] = []
    for p_img, g_img in zip(pred, gt, strict=True):
        H, W = g_img.shape
        ps, gs = [], []
        for r in range(H):
            for c in range(W):
                in_crop = math.floor(0.40810811 * H) <= r < math.floor(0.99189189 * H) and math.floor(
                    0.03594771 * W
                ) <= c < math.floor(0.96405229 * W)
                if MIN < g_img[r, c] < MAX and (in_crop or not garg_crop):
                    ps.append(float(p_img[r, c]))
                    gs.append(float(g_img[r, c]))
        if median_scaling:
            ratio = float(np.median(gs)) / float(np.median(ps))
            ps = [p * ratio for p in ps]
        ps = [min(max(p, MIN), MAX) for p in ps]
        n = len(ps)
        m = {
            "abs_rel": sum(abs(p - g) / g for p, g in zip(ps, gs, strict=True)) / n,
            "sq_rel": sum((p - g) ** 2 / g for p, g in zip(ps, gs, strict=True)) / n,
            "rmse": math.sqrt(sum((p - g) ** 2 for p, g in zip(ps, gs, strict=True)) / n),
            "rmse_log": math.sqrt(
                sum((math.log(p) - math.log(g)) ** 2 for p, g in zip(ps, gs, strict=True)) / n
            ),
        }
        for k in (1, 2, 3):
            m[f"a{k}"] = sum(max(p / g, g / p) < 1.25**k for p, g in zip(ps, gs, strict=True)) / n
        per_image.append(m)
    return {key: sum(m[key] for m in per_image) / len(per_image) for key in DEPTH_METRICS}


def kitti_like(seed: int, n: int = 3, H: int = 20, W: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Sparse ground truth (zeros = no lidar, some beyond 80 m) and a noisy, mis-scaled prediction."""
    rng = np.random.default_rng(seed)
    gt = rng.uniform(2, 90, size=(n, H, W))
    gt[rng.random((n, H, W)) < 0.6] = 0.0
    pred = 0.3 * gt * rng.uniform(0.7, 1.4, size=(n, H, W)) + rng.uniform(0.01, 1, size=(n, H, W))
    return pred, gt


@pytest.mark.parametrize("median_scaling", [True, False])
@pytest.mark.parametrize("garg_crop", [True, False])
def test_depth_metrics_match_naive_loop(median_scaling: bool, garg_crop: bool) -> None:
    pred, gt = kitti_like(0)
    got = depth_metrics(
        pred, gt, min_depth=MIN, max_depth=MAX, median_scaling=median_scaling, garg_crop=garg_crop
    )
    expected = naive_depth_metrics(pred, gt, median_scaling=median_scaling, garg_crop=garg_crop)
    assert list(got) == list(DEPTH_METRICS)
    for key in DEPTH_METRICS:
        assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key
    # tensors (any dtype) and numpy give the same numbers
    from_torch = depth_metrics(
        torch.from_numpy(pred),
        torch.from_numpy(gt),
        min_depth=MIN,
        max_depth=MAX,
        median_scaling=median_scaling,
        garg_crop=garg_crop,
    )
    assert from_torch == pytest.approx(got, rel=1e-12)


def test_median_scaling_invariance() -> None:
    pred, gt = kitti_like(1)
    base = depth_metrics(pred, gt, min_depth=MIN, max_depth=MAX, garg_crop=True)
    assert depth_metrics(pred * 5, gt, min_depth=MIN, max_depth=MAX, garg_crop=True) == pytest.approx(base)
    unscaled = depth_metrics(pred, gt, min_depth=MIN, max_depth=MAX, median_scaling=False)
    unscaled_5 = depth_metrics(pred * 5, gt, min_depth=MIN, max_depth=MAX, median_scaling=False)
    assert unscaled_5["abs_rel"] != pytest.approx(unscaled["abs_rel"])


def test_median_scaling_happens_before_clamping() -> None:
    gt = np.array([[[10.0, 20.0, 30.0]]])
    pred = gt * 10  # all beyond max_depth before scaling
    metrics = depth_metrics(pred, gt, min_depth=MIN, max_depth=MAX)
    assert metrics["abs_rel"] == pytest.approx(0.0, abs=1e-12) and metrics["a1"] == 1.0


def test_known_values_without_scaling() -> None:
    gt = np.zeros((2, 4, 4))
    gt[0, :2] = 10.0
    gt[1, :] = 20.0
    gt[1, 0, 0] = 100.0  # beyond max_depth: excluded
    metrics = depth_metrics(gt * 1.1, gt, min_depth=MIN, max_depth=MAX, median_scaling=False)
    assert metrics["abs_rel"] == pytest.approx(0.1)
    assert metrics["sq_rel"] == pytest.approx((0.01 * 10 + 0.01 * 20) / 2)
    assert metrics["rmse"] == pytest.approx((1.0 + 2.0) / 2)
    assert metrics["rmse_log"] == pytest.approx(math.log(1.1))
    assert (metrics["a1"], metrics["a2"], metrics["a3"]) == (1.0, 1.0, 1.0)
    far = depth_metrics(gt * 1.3, gt, min_depth=MIN, max_depth=MAX, median_scaling=False)
    assert far["a1"] == 0.0 and far["a2"] == 1.0


def test_resize_pred() -> None:
    pred, gt = kitti_like(2, H=20, W=30)
    small = pred[:, ::2, ::2].copy()
    with pytest.raises(ValueError, match=r"pred\[0\].*resize_pred"):
        depth_metrics(small, gt, min_depth=MIN, max_depth=MAX)
    t = torch.from_numpy(small)[:, None]
    by_depth = F.interpolate(t, size=(20, 30), mode="bilinear", align_corners=False)[:, 0].numpy()
    by_disp = 1 / F.interpolate(1 / t, size=(20, 30), mode="bilinear", align_corners=False)[:, 0].numpy()
    for mode, resized in (("depth", by_depth), ("inverse_depth", by_disp)):
        got = depth_metrics(small, gt, min_depth=MIN, max_depth=MAX, resize_pred=mode)
        assert got == pytest.approx(depth_metrics(resized, gt, min_depth=MIN, max_depth=MAX), rel=1e-12)
    flat = depth_metrics(
        np.full((3, 10, 15), 7.0),
        np.full((3, 20, 30), 7.0),
        min_depth=MIN,
        max_depth=MAX,
        median_scaling=False,
        resize_pred="inverse_depth",
    )
    assert flat["abs_rel"] == pytest.approx(0.0, abs=1e-12)


def test_images_of_different_sizes() -> None:
    pred_a, gt_a = kitti_like(3, n=1, H=20, W=30)
    pred_b, gt_b = kitti_like(4, n=1, H=16, W=24)
    both = depth_metrics([pred_a[0], pred_b[0]], [gt_a[0], gt_b[0]], min_depth=MIN, max_depth=MAX)
    a = depth_metrics(pred_a, gt_a, min_depth=MIN, max_depth=MAX)
    b = depth_metrics(pred_b, gt_b, min_depth=MIN, max_depth=MAX)
    assert both == pytest.approx({k: (a[k] + b[k]) / 2 for k in DEPTH_METRICS})


def test_depth_metrics_bad_inputs() -> None:
    pred, gt = kitti_like(5)
    with pytest.raises(ValueError, match="pred"):
        depth_metrics(pred[0], gt, min_depth=MIN, max_depth=MAX)
    with pytest.raises(ValueError, match="3 images but gt has 2"):
        depth_metrics(pred, gt[:2], min_depth=MIN, max_depth=MAX)
    gt_empty = gt.copy()
    gt_empty[1] = 0.0
    with pytest.raises(ValueError, match=r"gt\[1\]"):
        depth_metrics(pred, gt_empty, min_depth=MIN, max_depth=MAX)
    bad = pred.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match=r"pred\[2\]"):
        depth_metrics(bad, gt, min_depth=MIN, max_depth=MAX)
    with pytest.raises(ValueError, match="resize_pred"):
        depth_metrics(pred, gt, min_depth=MIN, max_depth=MAX, resize_pred="nearest")


def rigid(rotvec: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 from a rotation vector (Rodrigues) and a translation, built independently of stssl.geometry."""
    theta = float(np.linalg.norm(rotvec))
    k = rotvec / theta if theta > 0 else np.zeros(3)
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    M = np.eye(4)
    M[:3, :3] = np.eye(3) + math.sin(theta) * Kx + (1 - math.cos(theta)) * Kx @ Kx
    M[:3, 3] = t
    return M


def random_trajectory(seed: int, n: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rigid(rng.normal(0, 0.3, 3), rng.normal(0, 2, 3)) for _ in range(n)])


def test_snippet_ate_zero_for_scaled_gt_in_another_world_frame() -> None:
    gt = random_trajectory(0)
    scaled = gt.copy()
    scaled[:, :3, 3] *= 0.37
    other_world = rigid(np.array([0.4, -1.0, 0.2]), np.array([5.0, -3.0, 1.0]))
    pred = other_world @ scaled
    assert snippet_ate(pred, gt) == pytest.approx(0.0, abs=1e-12)
    assert snippet_ate(torch.from_numpy(pred).float(), torch.from_numpy(gt)) == pytest.approx(0.0, abs=1e-5)


def test_snippet_ate_hand_computed() -> None:
    """Positions (relative to frame 0): gt 0, (1,0,0), (2,0,0); pred 0, (1,0,0), (1,1,0).

    scale = (1 + 2) / (1 + 2) = 1; squared errors 0, 0, 1 + 1 = 2; sfmlearner sqrt(2) / 3, rmse sqrt(2 / 3).
    """
    gt = np.stack([rigid(np.zeros(3), np.array(t, dtype=float)) for t in ([0, 0, 0], [1, 0, 0], [2, 0, 0])])
    pred = np.stack([rigid(np.zeros(3), np.array(t, dtype=float)) for t in ([0, 0, 0], [1, 0, 0], [1, 1, 0])])
    assert snippet_ate(pred, gt) == pytest.approx(math.sqrt(2) / 3)
    assert snippet_ate(pred, gt, normalization="rmse") == pytest.approx(math.sqrt(2 / 3))
    # rotations of later frames are ignored
    spun = pred.copy()
    spun[1:, :3, :3] = rigid(np.array([0.0, 1.0, 0.0]), np.zeros(3))[:3, :3]
    assert snippet_ate(spun, gt) == pytest.approx(math.sqrt(2) / 3)
    # a prediction that does not move: scale 0, error = the gt's own positions
    still = np.tile(np.eye(4), (3, 1, 1))
    assert snippet_ate(still, gt) == pytest.approx(math.sqrt(5) / 3)


def test_snippet_ate_bad_inputs() -> None:
    with pytest.raises(ValueError, match="pred_poses"):
        snippet_ate(np.zeros((3, 3, 4)), np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="differ"):
        snippet_ate(np.tile(np.eye(4), (3, 1, 1)), np.tile(np.eye(4), (4, 1, 1)))
    with pytest.raises(ValueError, match="normalization"):
        snippet_ate(np.tile(np.eye(4), (3, 1, 1)), np.tile(np.eye(4), (3, 1, 1)), normalization="mean")
