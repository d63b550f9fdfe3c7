"""Depth and ego-motion metrics as the KITTI literature reports them (Eigen et al. 2014; SfMLearner; monodepth2).

Both functions work in float64 numpy and accept torch tensors or numpy arrays; they return plain Python floats.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DEPTH_METRICS", "GARG_CROP", "depth_metrics", "snippet_ate"]

ArrayLike = torch.Tensor | np.ndarray

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
# Garg et al.'s evaluation crop as fractions of the ground truth's (top, bottom, left, right).
GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)
RESIZE_MODES = (None, "depth", "inverse_depth")


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _as_images(x: ArrayLike | Sequence[ArrayLike], name: str) -> list[np.ndarray]:
    """A list of ``(H, W)`` float64 arrays from ``(N, H, W)`` or a sequence of ``(H, W)``."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        arr = _to_numpy(x)
        if arr.ndim != 3:
            raise ValueError(
                f"{name}: expected shape (N, H, W) or a sequence of (H, W), got {tuple(arr.shape)}"
            )
        return list(arr)
    images = [_to_numpy(im) for im in x]
    for i, im in enumerate(images):
        if im.ndim != 2:
            raise ValueError(f"{name}[{i}]: expected shape (H, W), got {tuple(im.shape)}")
    return images


def _resize(pred: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Bilinear resize (``align_corners=False``, no antialiasing: OpenCV's ``INTER_LINEAR``) of depth or 1/depth."""
    t = torch.from_numpy(pred)[None, None]
    if mode == "inverse_depth":
        return 1.0 / F.interpolate(1.0 / t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _errors(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    ratio = np.maximum(gt / pred, pred / gt)
    diff = gt - pred
    return {
        "abs_rel": float(np.mean(np.abs(diff) / gt)),
        "sq_rel": float(np.mean(diff**2 / gt)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2))),
        "a1": float(np.mean(ratio < 1.25)),
        "a2": float(np.mean(ratio < 1.25**2)),
        "a3": float(np.mean(ratio < 1.25**3)),
    }


def depth_metrics(
    pred: ArrayLike | Sequence[ArrayLike],
    gt: ArrayLike | Sequence[ArrayLike],
    *,
    min_depth: float,
    max_depth: float,
    median_scaling: bool = True,
    garg_crop: bool = False,
    resize_pred: str | None = None,
    pred_scale: float = 1.0,
) -> dict[str, float]:
    """Eigen-protocol depth metrics, computed per image and averaged over images.

    Per image: ``mask = (gt > min_depth) & (gt < max_depth)`` (so ``gt = 0`` is invalid), and with ``garg_crop``
    only rows ``int(0.40810811 H) : int(0.99189189 H)`` and columns ``int(0.03594771 W) : int(0.96405229 W)`` of
    the ground truth; then ``pred *= pred_scale``; with ``median_scaling``, ``pred *= median(gt) / median(pred)``
    over the mask (monocular methods are scale-ambiguous); only then ``pred`` is clamped to
    ``[min_depth, max_depth]``. The metrics over the masked pixels are (``d`` = pred, ``g`` = gt)::

        abs_rel = mean(|d - g| / g)          sq_rel   = mean((d - g)^2 / g)
        rmse    = sqrt(mean((d - g)^2))      rmse_log = sqrt(mean((log d - log g)^2))
        a_k     = mean(max(d / g, g / d) < 1.25^k),  k = 1, 2, 3

    and each is averaged over images (not over all pixels). KITTI Eigen: ``min_depth=1e-3, max_depth=80,
    garg_crop=True``.

    Args:
        pred: ``(N, H, W)`` predicted depth (or a sequence of ``(H_i, W_i)``), tensors or numpy arrays.
        gt: ``(N, H, W)`` ground-truth depth (or a sequence of ``(H_i, W_i)``: KITTI sizes vary), 0 = no data.
        min_depth: smallest valid depth (metres).
        max_depth: largest valid depth (metres, exclusive for the mask, inclusive for the clamp).
        median_scaling: rescale each prediction by the ratio of medians.
        garg_crop: restrict to Garg's crop (fractions of the ground truth's size).
        resize_pred: how to handle a prediction whose size differs from its ground truth: ``None`` raises;
            ``"depth"`` resizes the depth bilinearly (``align_corners=False``) to the ground-truth size;
            ``"inverse_depth"`` resizes ``1 / pred`` and inverts, which is what monodepth2 does (it resizes its
            disparity with ``cv2.resize`` before inverting).
        pred_scale: fixed factor applied before median scaling (monodepth2's stereo models use 5.4).

    Returns:
        ``{"abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3"}`` as floats.

    Raises:
        ValueError: mismatched counts or sizes, an image without valid ground truth, or non-finite or
            non-positive predictions inside the mask.

    Example:
        >>> gt = np.full((2, 4, 4), 10.0)
        >>> metrics = depth_metrics(gt * 3, gt, min_depth=1e-3, max_depth=80)
        >>> metrics["abs_rel"], metrics["a1"]
        (0.0, 1.0)
        >>> round(depth_metrics(gt * 1.1, gt, min_depth=1e-3, max_depth=80, median_scaling=False)["abs_rel"], 6)
        0.1
    """
    if resize_pred not in RESIZE_MODES:
        raise ValueError(f"depth_metrics: resize_pred must be one of {RESIZE_MODES}, got {resize_pred!r}")
    if not 0 <= min_depth < max_depth:
        raise ValueError(f"depth_metrics: need 0 <= min_depth < max_depth, got {min_depth} and {max_depth}")
    preds, gts = _as_images(pred, "pred"), _as_images(gt, "gt")
    if len(preds) != len(gts):
        raise ValueError(f"depth_metrics: pred has {len(preds)} images but gt has {len(gts)}")
    if not gts:
        raise ValueError("depth_metrics: no images")
    per_image = []
    for i, (p, g) in enumerate(zip(preds, gts, strict=True)):
        height, width = g.shape
        if p.shape != g.shape:
            if resize_pred is None:
                raise ValueError(
                    f"depth_metrics: pred[{i}] has shape {p.shape} but gt[{i}] has {g.shape}; "
                    "pass resize_pred='depth' or 'inverse_depth' to resize predictions to the ground truth"
                )
            p = _resize(p, (height, width), resize_pred)
        mask = (g > min_depth) & (g < max_depth)
        if garg_crop:
            top, bottom, left, right = GARG_CROP
            crop = np.zeros_like(mask)
            crop[int(top * height) : int(bottom * height), int(left * width) : int(right * width)] = True
            mask &= crop
        if not mask.any():
            raise ValueError(f"depth_metrics: gt[{i}] has no valid pixel in ({min_depth}, {max_depth})")
        p, g = p[mask] * pred_scale, g[mask]
        if not np.all(np.isfinite(p)) or np.any(p <= 0):
            raise ValueError(f"depth_metrics: pred[{i}] has non-finite or non-positive depth inside the mask")
        if median_scaling:
            p = p * (np.median(g) / np.median(p))
        p = np.clip(p, min_depth, max_depth)
        per_image.append(_errors(g, p))
    return {key: float(np.mean([m[key] for m in per_image])) for key in DEPTH_METRICS}


def _as_poses(x: ArrayLike, name: str) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.ndim != 3 or arr.shape[1:] != (4, 4) or arr.shape[0] < 1:
        raise ValueError(f"snippet_ate: {name} must have shape (N, 4, 4) with N >= 1, got {tuple(arr.shape)}")
    return arr


def snippet_ate(pred_poses: ArrayLike, gt_poses: ArrayLike, *, normalization: str = "sfmlearner") -> float:
    """Absolute trajectory error of one short snippet, scale-aligned, as SfMLearner and monodepth2 report it.

    Both inputs are ``world_from_camera`` poses of the same ``N`` frames (any world frame each). Steps:

    1. Express each trajectory relative to its first frame: ``first_from_i = inv(world_from_0) @ world_from_i``,
       and keep the translations ``x_i`` (pred) and ``y_i`` (gt), ``(N, 3)``; ``x_0 = y_0 = 0``, so the first
       frames are aligned (SfMLearner's offset step is then a no-op).
    2. Least-squares scale on the translations: ``s = sum(y . x) / sum(x . x)`` (0 if the prediction does not move).
    3. ``normalization="sfmlearner"`` (default): ``sqrt(sum_i |s x_i - y_i|^2) / N``, the published formula;
       ``"rmse"``: ``sqrt(sum_i |s x_i - y_i|^2 / N)``, the true root mean square.

    Quirks, kept for comparability with published numbers: the scale is fitted on translations only and rotations
    are ignored entirely (a wrong heading only shows through later positions); there is no rotational alignment;
    the first frame has zero error by construction but is counted in ``N``; and the "sfmlearner" value is the RMSE
    divided by ``sqrt(N)``, not an RMSE. KITTI odometry results are the mean over all 5-frame snippets.

    Args:
        pred_poses: ``(N, 4, 4)`` predicted ``world_from_camera`` (e.g. chained ``i_from_{i+1}`` predictions).
        gt_poses: ``(N, 4, 4)`` ground-truth ``world_from_camera``.
        normalization: ``"sfmlearner"`` or ``"rmse"``.

    Returns:
        The ATE in the ground truth's unit (metres).

    Example:
        >>> gt = np.tile(np.eye(4), (3, 1, 1))
        >>> gt[:, 0, 3] = [0.0, 1.0, 2.0]
        >>> pred = gt.copy()
        >>> pred[:, 0, 3] *= 0.5  # right direction, wrong scale: no error after scale alignment
        >>> snippet_ate(pred, gt)
        0.0
    """
    if normalization not in ("sfmlearner", "rmse"):
        raise ValueError(f"snippet_ate: normalization must be 'sfmlearner' or 'rmse', got {normalization!r}")
    pred, gt = _as_poses(pred_poses, "pred_poses"), _as_poses(gt_poses, "gt_poses")
    if pred.shape != gt.shape:
        raise ValueError(f"snippet_ate: pred_poses {pred.shape} and gt_poses {gt.shape} differ in length")
    x = (np.linalg.inv(pred[0]) @ pred)[:, :3, 3]
    y = (np.linalg.inv(gt[0]) @ gt)[:, :3, 3]
    denominator = float(np.sum(x * x))
    scale = float(np.sum(y * x)) / denominator if denominator > 0 else 0.0
    squared = float(np.sum((scale * x - y) ** 2))
    n = gt.shape[0]
    return float(np.sqrt(squared) / n) if normalization == "sfmlearner" else float(np.sqrt(squared / n))
