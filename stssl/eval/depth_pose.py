"""Depth and ego-motion evaluation over whole scene sequences, with visualisations and inference writers.

Pure layer (no Lightning): the model enters as two callables,

- ``predict_depth_fn(images) -> depth``: ``(B, 3, H, W)`` float in ``[0, 1]`` to ``(B, 1, H, W)`` metres (any
  scale: monocular depth is median-scaled), and
- ``predict_pose_fn(image_a, image_b) -> b_from_a``: two ``(B, 3, H, W)`` batches to ``(B, 4, 4)`` rigid
  transforms mapping points in frame ``a``'s camera to frame ``b``'s.

:func:`evaluate_scene` decodes a scene folder (the stssl scene format: ``video.mp4``, ``calib.json``,
``poses.txt``, ``depth.npz``), runs both callables frame by frame and scores them against the ground truth with
:func:`stssl.eval.metrics.depth_metrics` (Eigen protocol, median scaling) and
:func:`stssl.eval.metrics.snippet_ate` (SfMLearner/monodepth2 5-frame snippets). :func:`save_depth_visuals`,
:func:`plot_trajectory`, :func:`write_poses_kitti` and :func:`write_depth_maps` write what a person looks at.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stssl.checks import check_shape
from stssl.eval.metrics import DEPTH_METRICS, depth_metrics, snippet_ate
from stssl.worlds.scene_io import (
    CALIB_FILE,
    DEPTH_FILE,
    POSES_FILE,
    VIDEO_FILE,
    SceneFormatError,
    read_calib,
    read_depth,
    read_poses,
)

__all__ = [
    "DepthFn",
    "PoseFn",
    "ScenePredictions",
    "align_trajectory",
    "chain_poses",
    "colorize",
    "combine_scene_metrics",
    "evaluate_scene",
    "load_frames",
    "plot_trajectory",
    "predict_sequence",
    "save_depth_visuals",
    "write_depth_maps",
    "write_poses_kitti",
]

DepthFn = Callable[[torch.Tensor], torch.Tensor]
PoseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# matplotlib's "magma" sampled at 17 evenly spaced points; :func:`colorize` interpolates linearly between them
# (max deviation from matplotlib's 256-entry table is below 0.01), so no plotting library is needed.
_MAGMA = np.array(
    [[0.0015, 0.0005, 0.0139], [0.0396, 0.0311, 0.1335], [0.1131, 0.0655, 0.2768], [0.2117, 0.062, 0.4186],
     [0.3167, 0.0717, 0.4854], [0.4147, 0.1104, 0.5047], [0.5128, 0.1482, 0.5076], [0.6136, 0.1818, 0.4985],
     [0.7164, 0.215, 0.4753], [0.8169, 0.2559, 0.4365], [0.9043, 0.3196, 0.3881], [0.9609, 0.4183, 0.3596],
     [0.9867, 0.5356, 0.3822], [0.9961, 0.6537, 0.4462], [0.9969, 0.7696, 0.5349], [0.9924, 0.8843, 0.6401],
     [0.9871, 0.9914, 0.7495]],
    dtype=np.float64,
)
RESIZE_MODES = ("depth", "inverse_depth")


@dataclass
class ScenePredictions:
    """Per-frame inputs, predictions and ground truth of one :func:`evaluate_scene` call (all on the CPU).

    Attributes:
        frame_indices: ``(N,)`` int64 indices of the evaluated frames in the scene.
        images: ``(N, 3, H, W)`` uint8 frames at the evaluation size.
        K: ``(3, 3)`` float64 intrinsics at the evaluation size.
        depth: ``(N, H, W)`` float32 predicted depth (unscaled, as the model gave it).
        gt_depth: ``(N, H_gt, W_gt)`` float32 ground-truth depth at its native size, 0 = invalid.
        scale_ratios: ``(N,)`` float64 per-frame ``median(gt) / median(pred)`` over the valid pixels (NaN for a
            frame without ground truth).
        b_from_a: ``(N - 1, 4, 4)`` float64 predicted ``(i + 1)_from_i`` between consecutive evaluated frames.
        pred_world_from_camera: ``(N, 4, 4)`` float64 chained predictions (:func:`chain_poses`; frame 0 = identity).
        gt_world_from_camera: ``(N, 4, 4)`` float64 ground-truth poses of the evaluated frames.
        snippet_ates: ``(S,)`` float64 ATE of every snippet.
    """

    frame_indices: torch.Tensor
    images: torch.Tensor
    K: torch.Tensor
    depth: torch.Tensor
    gt_depth: torch.Tensor
    scale_ratios: np.ndarray
    b_from_a: np.ndarray
    pred_world_from_camera: np.ndarray
    gt_world_from_camera: np.ndarray
    snippet_ates: np.ndarray


# ----------------------------------------------------------------------------------------------- sequences
def load_frames(
    video_path: str | Path,
    *,
    size: tuple[int, int] | None = None,
    K: np.ndarray | torch.Tensor | None = None,
    indices: Sequence[int] | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode frames of a video (or frame folder) and resize them, keeping the intrinsics consistent.

    Args:
        video_path: a video file or a folder of frames (:func:`stssl.data.open_video`).
        size: output ``(H, W)``; None keeps the native size.
        K: optional ``(3, 3)`` intrinsics at the native size; returned scaled to ``size``.
        indices: frames to read (default: all).
        backend: reader backend (``"auto"``, ``"pyav"``, ``"decord"``, ...).

    Returns:
        ``(frames, K)``: ``(N, 3, H, W)`` uint8 frames and float64 ``(3, 3)`` ``K`` at ``(H, W)`` (or None).

    Raises:
        stssl.data.readers.VideoReadError: naming the file when it cannot be opened or decoded.
    """
    from stssl.data.readers import open_video
    from stssl.transforms.functional import resize_clip

    with open_video(video_path, backend=backend) as reader:
        wanted = list(range(len(reader))) if indices is None else [int(i) for i in indices]
        frames = reader.read(wanted)  # (T, H, W, 3) uint8
    video = frames.permute(3, 0, 1, 2)  # (C, T, H, W)
    K_t = None if K is None else torch.as_tensor(np.asarray(K, dtype=np.float64))
    if size is not None:
        video, K_t = resize_clip(video, (int(size[0]), int(size[1])), K_t)
    return video.permute(1, 0, 2, 3).contiguous(), K_t


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


@torch.no_grad()
def predict_sequence(
    frames: torch.Tensor,
    predict_depth_fn: DepthFn | None,
    predict_pose_fn: PoseFn | None,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor | None, np.ndarray | None]:
    """Run depth on every frame and pose on every consecutive pair of a sequence, in batches, without grad.

    Args:
        frames: ``(N, 3, H, W)`` uint8 (or float in ``[0, 1]``) frames in temporal order.
        predict_depth_fn: ``(B, 3, H, W)`` float ``[0, 1]`` -> ``(B, 1, H, W)`` depth; None skips depth.
        predict_pose_fn: ``(image_a, image_b)`` -> ``(B, 4, 4)`` ``b_from_a``; None skips poses.
        batch_size: frames (or pairs) per call.
        device: where the callables get their inputs.

    Returns:
        ``(depth, b_from_a)``: ``(N, H, W)`` float32 CPU depth and ``(N - 1, 4, 4)`` float64 numpy
        ``(i + 1)_from_i``; each None when its callable is None.

    Raises:
        ValueError: when a callable returns the wrong shape or non-finite values (naming it).
    """
    sizes = check_shape(frames, "N 3 H W", name="frames")
    n = sizes["N"]
    if batch_size < 1:
        raise ValueError(f"predict_sequence: batch_size must be >= 1, got {batch_size}")

    def images(sl: slice) -> torch.Tensor:
        x = frames[sl].to(device)
        return x.float().div_(255.0) if not x.is_floating_point() else x.float()

    depth = None
    if predict_depth_fn is not None:
        out = []
        for sl in _batches(n, batch_size):
            pred = predict_depth_fn(images(sl))
            b = sl.stop - sl.start
            check_shape(pred, "B 1 H W", {"B": b, "H": sizes["H"], "W": sizes["W"]}, name="predict_depth_fn output")
            out.append(pred.detach().float().cpu()[:, 0])
        depth = torch.cat(out)
        if not torch.isfinite(depth).all():
            raise ValueError("predict_depth_fn output: non-finite depth")
    b_from_a = None
    if predict_pose_fn is not None:
        if n < 2:
            raise ValueError(f"predict_sequence: poses need at least 2 frames, got {n}")
        out_p = []
        for sl in _batches(n - 1, batch_size):
            pose = predict_pose_fn(images(sl), images(slice(sl.start + 1, sl.stop + 1)))
            check_shape(pose, "B 4 4", {"B": sl.stop - sl.start}, name="predict_pose_fn output")
            out_p.append(pose.detach().cpu().to(torch.float64).numpy())
        b_from_a = np.concatenate(out_p)
        if not np.isfinite(b_from_a).all():
            raise ValueError("predict_pose_fn output: non-finite pose")
    return depth, b_from_a


def chain_poses(b_from_a: np.ndarray | torch.Tensor) -> np.ndarray:
    """Chain consecutive relative poses into a trajectory whose first camera is the world.

    ``world_from_0 = I`` and ``world_from_{i+1} = world_from_i @ inv((i+1)_from_i)``.

    Args:
        b_from_a: ``(N - 1, 4, 4)`` ``(i + 1)_from_i`` for consecutive frames (rigid transforms).

    Returns:
        ``(N, 4, 4)`` float64 ``world_from_camera``.

    Example:
        >>> step = np.eye(4)
        >>> step[2, 3] = -1.0  # (i+1)_from_i: the scene comes 1 m closer, i.e. the camera moves 1 m forward
        >>> chain_poses(np.stack([step, step]))[:, 2, 3].tolist()
        [0.0, 1.0, 2.0]
    """
    rel = b_from_a.detach().cpu().numpy() if isinstance(b_from_a, torch.Tensor) else np.asarray(b_from_a)
    rel = rel.astype(np.float64)
    if rel.ndim != 3 or rel.shape[1:] != (4, 4):
        raise ValueError(f"chain_poses: b_from_a must have shape (N - 1, 4, 4), got {rel.shape}")
    out = np.tile(np.eye(4), (len(rel) + 1, 1, 1))
    for i, pose in enumerate(rel):
        R, t = pose[:3, :3], pose[:3, 3]
        inv = np.eye(4)
        inv[:3, :3], inv[:3, 3] = R.T, -R.T @ t
        out[i + 1] = out[i] @ inv
    return out


def _resize_pred(pred: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """As :func:`stssl.eval.metrics.depth_metrics` resizes (bilinear, ``align_corners=False``)."""
    if tuple(pred.shape[-2:]) == size:
        return pred
    x = pred[:, None].double()
    if mode == "inverse_depth":
        return 1.0 / F.interpolate(1.0 / x, size=size, mode="bilinear", align_corners=False)[:, 0]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)[:, 0]


def _scale_ratios(pred: torch.Tensor, gt: torch.Tensor, min_depth: float, max_depth: float, mode: str) -> np.ndarray:
    pred = _resize_pred(pred, (int(gt.shape[-2]), int(gt.shape[-1])), mode).double()
    ratios = []
    for p, g in zip(pred, gt.double(), strict=True):
        mask = (g > min_depth) & (g < max_depth)
        ratios.append(float(g[mask].median() / p[mask].median()) if mask.any() else math.nan)
    return np.asarray(ratios)


def _scene_error(path: Path, err: Exception) -> SceneFormatError:
    return SceneFormatError(f"{path}: {err}")


def evaluate_scene(
    scene_dir: str | Path,
    predict_depth_fn: DepthFn,
    predict_pose_fn: PoseFn,
    *,
    size: tuple[int, int],
    min_depth: float,
    max_depth: float,
    frame_step: int = 1,
    snippet: int = 5,
    backend: str = "auto",
    max_frames: int | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    resize_mode: str = "inverse_depth",
    median_scaling: bool = True,
    garg_crop: bool = False,
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Score a depth and a pose predictor on one scene folder against its exact ground truth.

    Frames ``0, frame_step, 2 * frame_step, ...`` (at most ``max_frames`` of them) are decoded, resized to
    ``size`` (``K`` scaled alike) and given to the predictors as float ``[0, 1]`` batches on ``device``, without
    grad.

    Depth: :func:`~stssl.eval.metrics.depth_metrics` against ``depth.npz`` at its native resolution (the
    prediction is resized to it with ``resize_mode``: ``"inverse_depth"`` as monodepth2, or ``"depth"``), mask
    ``min_depth < gt < max_depth``, per-frame median scaling, averaged over frames. The median-scaling ratios
    ``median(gt) / median(pred)`` are summarised as monodepth2 prints them: ``scale_ratio_median`` and
    ``scale_ratio_std = std(ratios / median(ratios))`` (a consistent metric scale gives a small std).

    Pose: ``predict_pose_fn(frame_i, frame_{i+1})`` for consecutive evaluated frames gives ``(i+1)_from_i``;
    chained over every window of ``snippet`` consecutive evaluated frames (all overlapping windows, stride 1)
    and scored with :func:`~stssl.eval.metrics.snippet_ate` (first frames aligned, least-squares scale on
    translations, SfMLearner's ``sqrt(sum |error|^2) / N``), as SfMLearner and monodepth2 evaluate KITTI
    odometry; ``pose/ate`` is the mean and ``pose/ate_std`` the (population) standard deviation over windows.

    Args:
        scene_dir: a scene folder with ``video.mp4``, ``calib.json``, ``poses.txt`` and ``depth.npz``.
        predict_depth_fn: ``(B, 3, H, W)`` float ``[0, 1]`` -> ``(B, 1, H, W)`` depth (metres, any scale).
        predict_pose_fn: ``(image_a, image_b)``, each ``(B, 3, H, W)`` -> ``(B, 4, 4)`` ``b_from_a``.
        size: ``(H, W)`` the predictors see.
        min_depth: smallest valid ground-truth depth (metres); also the clamp of scaled predictions.
        max_depth: largest valid ground-truth depth (metres).
        frame_step: evaluate every ``frame_step``-th frame (poses are then between frames that far apart).
        snippet: frames per ATE window (5 in the literature).
        backend: video reader backend.
        max_frames: evaluate at most this many frames (the first ones).
        batch_size: frames per predictor call.
        device: where predictor inputs go.
        resize_mode: ``"inverse_depth"`` or ``"depth"`` (how predictions reach the ground truth's size).
        median_scaling: per-frame median scaling (monocular); False scores the raw metric depth.
        garg_crop: restrict depth metrics to Garg's crop (KITTI).
        return_predictions: also return a :class:`ScenePredictions` under ``"predictions"``.

    Returns:
        Floats ``depth/<m>`` for ``m`` in :data:`~stssl.eval.metrics.DEPTH_METRICS`,
        ``depth/scale_ratio_median``, ``depth/scale_ratio_std``, ``depth/frames``, ``pose/ate``,
        ``pose/ate_std``, ``pose/snippets``; plus ``"predictions"`` when asked.

    Raises:
        SceneFormatError: naming the scene file that is missing, malformed or inconsistent.
        ValueError: bad arguments, too few frames for one snippet, or predictor outputs of the wrong shape.
    """
    d = Path(scene_dir)
    if not d.is_dir():
        raise SceneFormatError(f"{d}: not a directory; expected a scene folder with {VIDEO_FILE}, "
                               f"calib.json, {POSES_FILE}, {DEPTH_FILE}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"evaluate_scene: resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    if frame_step < 1 or snippet < 2 or (max_frames is not None and max_frames < 1):
        raise ValueError(f"evaluate_scene: need frame_step >= 1, snippet >= 2, max_frames >= 1 or None; got "
                         f"{frame_step}, {snippet}, {max_frames}")
    calib, gt_poses, gt_depth_all = read_calib(d), read_poses(d), read_depth(d)
    T, H_gt, W_gt = gt_depth_all.shape
    if (calib["height"], calib["width"]) != (H_gt, W_gt):
        raise SceneFormatError(f"{d / CALIB_FILE}: size {calib['height']}x{calib['width']} but "
                               f"{DEPTH_FILE} is {H_gt}x{W_gt}")
    if len(gt_poses) != T:
        raise SceneFormatError(f"{d / POSES_FILE}: {len(gt_poses)} poses but {DEPTH_FILE} has {T} frames")
    indices = list(range(0, T, frame_step))[: max_frames if max_frames is not None else None]
    if len(indices) < snippet:
        raise ValueError(f"evaluate_scene({d}): {len(indices)} frames to evaluate (of {T}, frame_step={frame_step}, "
                         f"max_frames={max_frames}) but a pose snippet needs {snippet}")
    from stssl.data.readers import open_video

    with open_video(d / VIDEO_FILE, backend=backend) as reader:
        if len(reader) != T:
            raise SceneFormatError(f"{d / VIDEO_FILE}: {len(reader)} frames but {DEPTH_FILE} has {T}")
    frames, K = load_frames(d / VIDEO_FILE, size=size, K=calib["K"], indices=indices, backend=backend)
    depth, b_from_a = predict_sequence(frames, predict_depth_fn, predict_pose_fn, batch_size=batch_size,
                                       device=device)
    assert depth is not None and b_from_a is not None
    gt_depth = torch.from_numpy(np.ascontiguousarray(gt_depth_all[indices]))
    # Frames without ground truth (e.g. KITTI frames with no velodyne scan) count for poses, not for depth.
    has_gt = ((gt_depth > min_depth) & (gt_depth < max_depth)).flatten(1).any(dim=1)
    if not bool(has_gt.any()):
        raise ValueError(f"evaluate_scene({d}): no frame has ground-truth depth in ({min_depth}, {max_depth}) "
                         f"(frames {indices[0]}..{indices[-1]} step {frame_step})")
    try:
        metrics = depth_metrics(depth[has_gt], gt_depth[has_gt], min_depth=min_depth, max_depth=max_depth,
                                garg_crop=garg_crop, median_scaling=median_scaling, resize_pred=resize_mode)
    except ValueError as err:
        raise ValueError(f"evaluate_scene({d}): {err} (frames {indices[0]}..{indices[-1]} step {frame_step})") from err
    ratios = np.full(len(indices), np.nan)
    ratios[has_gt.numpy()] = _scale_ratios(depth[has_gt], gt_depth[has_gt], min_depth, max_depth, resize_mode)
    ratio_median = float(np.nanmedian(ratios))
    out: dict[str, Any] = {f"depth/{k}": metrics[k] for k in DEPTH_METRICS}
    out["depth/scale_ratio_median"] = ratio_median
    out["depth/scale_ratio_std"] = float(np.nanstd(ratios / ratio_median))
    out["depth/frames"] = float(has_gt.sum())
    out["depth/frames_without_gt"] = float((~has_gt).sum())

    pred_world = chain_poses(b_from_a)
    gt_world = gt_poses[indices]
    ates = np.asarray([snippet_ate(pred_world[s : s + snippet], gt_world[s : s + snippet])
                       for s in range(len(indices) - snippet + 1)])
    out["pose/ate"] = float(ates.mean())
    out["pose/ate_std"] = float(ates.std())
    out["pose/snippets"] = float(len(ates))
    if return_predictions:
        assert K is not None
        out["predictions"] = ScenePredictions(
            frame_indices=torch.as_tensor(indices, dtype=torch.int64), images=frames, K=K, depth=depth,
            gt_depth=gt_depth, scale_ratios=ratios, b_from_a=b_from_a, pred_world_from_camera=pred_world,
            gt_world_from_camera=gt_world, snippet_ates=ates,
        )
    return out


def combine_scene_metrics(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Pool :func:`evaluate_scene` results of several scenes as if they were one sequence.

    Depth metrics and scale-ratio summaries are frame-weighted means; ``pose/ate`` is the snippet-weighted mean
    and ``pose/ate_std`` the pooled standard deviation over all snippets; counts are summed.

    Example:
        >>> a = {"depth/abs_rel": 0.1, "depth/frames": 1.0, "pose/ate": 1.0, "pose/ate_std": 0.0, "pose/snippets": 1.0}
        >>> b = {"depth/abs_rel": 0.4, "depth/frames": 3.0, "pose/ate": 3.0, "pose/ate_std": 0.0, "pose/snippets": 1.0}
        >>> out = combine_scene_metrics([a, b])
        >>> round(out["depth/abs_rel"], 6), out["pose/ate"], out["pose/ate_std"]
        (0.325, 2.0, 1.0)
    """
    if not results:
        raise ValueError("combine_scene_metrics: no results")
    frames = np.asarray([r["depth/frames"] for r in results])
    snippets = np.asarray([r["pose/snippets"] for r in results])
    out: dict[str, float] = {}
    for key in results[0]:
        if key == "predictions" or key in ("depth/frames", "depth/frames_without_gt", "pose/snippets", "pose/ate",
                                           "pose/ate_std"):
            continue
        values = np.asarray([r[key] for r in results])
        weights = snippets if key.startswith("pose/") else frames
        out[key] = float(np.sum(values * weights) / np.sum(weights))
    means = np.asarray([r["pose/ate"] for r in results])
    stds = np.asarray([r["pose/ate_std"] for r in results])
    mean = float(np.sum(means * snippets) / snippets.sum())
    second = float(np.sum((stds**2 + means**2) * snippets) / snippets.sum())
    out["pose/ate"] = mean
    out["pose/ate_std"] = math.sqrt(max(second - mean**2, 0.0))
    out["depth/frames"] = float(frames.sum())
    if all("depth/frames_without_gt" in r for r in results):
        out["depth/frames_without_gt"] = float(sum(r["depth/frames_without_gt"] for r in results))
    out["pose/snippets"] = float(snippets.sum())
    return out


# ----------------------------------------------------------------------------------------------- images
def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def colorize(
    values: np.ndarray | torch.Tensor,
    vmin: float | None = None,
    vmax: float | None = None,
    invalid: np.ndarray | torch.Tensor | None = None,
    invalid_colour: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """Map an ``(H, W)`` array to ``(H, W, 3)`` uint8 RGB with a magma-like colormap (dark = low, light = high).

    Args:
        values: ``(H, W)`` scalars.
        vmin: value mapped to the darkest colour (default: the minimum of the valid values).
        vmax: value mapped to the lightest colour (default: the maximum); values outside are clipped.
        invalid: optional ``(H, W)`` bool mask of pixels drawn in ``invalid_colour``.
        invalid_colour: RGB of invalid (and non-finite) pixels.

    Example:
        >>> colorize(np.array([[0.0, 1.0]]))[0].tolist()
        [[0, 0, 4], [252, 253, 191]]
    """
    v = _numpy(values).astype(np.float64)
    if v.ndim != 2:
        raise ValueError(f"colorize: values must have shape (H, W), got {v.shape}")
    bad = ~np.isfinite(v)
    if invalid is not None:
        bad |= _numpy(invalid).astype(bool)
    good = v[~bad]
    lo = float(vmin) if vmin is not None else (float(good.min()) if good.size else 0.0)
    hi = float(vmax) if vmax is not None else (float(good.max()) if good.size else 1.0)
    x = np.clip((np.where(bad, lo, v) - lo) / max(hi - lo, 1e-12), 0.0, 1.0) * (len(_MAGMA) - 1)
    i = np.minimum(np.floor(x).astype(np.int64), len(_MAGMA) - 2)
    frac = (x - i)[..., None]
    rgb = _MAGMA[i] * (1 - frac) + _MAGMA[i + 1] * frac
    out = np.round(rgb * 255).astype(np.uint8)
    out[bad] = invalid_colour
    return out


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(path, format="PNG")
    return path


def _image_hw3(image: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    t = torch.as_tensor(_numpy(image))
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"save_depth_visuals: each image must be (3, H, W), got {tuple(t.shape)}")
    t = t.float() / 255.0 if not t.is_floating_point() else t.float()
    if tuple(t.shape[-2:]) != size:
        t = F.interpolate(t[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def save_depth_visuals(
    out_dir: str | Path,
    images: torch.Tensor | np.ndarray,
    pred_depth: torch.Tensor | np.ndarray,
    gt_depth: torch.Tensor | np.ndarray | None = None,
    *,
    names: Sequence[str] | None = None,
    min_depth: float = 1e-3,
    max_depth: float = 80.0,
    max_abs_rel: float = 0.5,
) -> list[Path]:
    """Write one PNG per frame: the image, the predicted depth, the ground truth and the abs-rel error, stacked.

    Depth is drawn as inverse depth (near = light) with the magma-like :func:`colorize`, from 0 to the 95th
    percentile of the prediction's inverse depth (monodepth2's display). With ground truth, the prediction is
    first median-scaled to it (as the metrics do), the ground truth uses the same colour scale (invalid pixels
    black), and the error panel shows ``|s * pred - gt| / gt`` from 0 to ``max_abs_rel``. Panels are at the
    ground truth's resolution (the prediction's without ground truth).

    Args:
        out_dir: folder for the PNGs (created).
        images: ``(N, 3, H, W)`` uint8, or float in ``[0, 1]``.
        pred_depth: ``(N, H, W)`` or ``(N, 1, H, W)`` predicted depth.
        gt_depth: optional ``(N, H_gt, W_gt)`` ground truth (0 = invalid).
        names: file stems (default ``depth_0000``, ...).
        min_depth: valid ground truth lies in ``(min_depth, max_depth)``.
        max_depth: see ``min_depth``.
        max_abs_rel: the error shown as the lightest colour.

    Returns:
        The written paths.
    """
    pred = torch.as_tensor(_numpy(pred_depth)).double()
    if pred.dim() == 4 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if pred.dim() != 3:
        raise ValueError(f"save_depth_visuals: pred_depth must be (N, H, W) or (N, 1, H, W), got {tuple(pred.shape)}")
    n = pred.shape[0]
    gt = None if gt_depth is None else torch.as_tensor(_numpy(gt_depth)).double()
    if gt is not None and (gt.dim() != 3 or gt.shape[0] != n):
        raise ValueError(f"save_depth_visuals: gt_depth must be ({n}, H, W), got {tuple(gt.shape)}")
    if len(images) != n:
        raise ValueError(f"save_depth_visuals: {len(images)} images but {n} depth maps")
    if names is not None and len(names) != n:
        raise ValueError(f"save_depth_visuals: {len(names)} names but {n} depth maps")
    out_dir = Path(out_dir)
    size = (int(gt.shape[1]), int(gt.shape[2])) if gt is not None else (int(pred.shape[1]), int(pred.shape[2]))
    pred = _resize_pred(pred, size, "inverse_depth").clamp_min(1e-6)
    paths = []
    for i in range(n):
        p = pred[i]
        panels = [_image_hw3(images[i], size)]
        if gt is not None:
            g = gt[i]
            valid = (g > min_depth) & (g < max_depth)
            if valid.any():
                p = p * (g[valid].median() / p[valid].median())
        disp = 1.0 / p
        vmax = float(torch.quantile(disp.flatten(), 0.95))
        panels.append(colorize(disp, 0.0, vmax))
        if gt is not None:
            gt_disp = torch.where(valid, 1.0 / g.clamp_min(1e-6), torch.zeros_like(g))
            panels.append(colorize(gt_disp, 0.0, vmax, invalid=~valid))
            err = (p - g).abs() / g.clamp_min(1e-6)
            panels.append(colorize(err, 0.0, max_abs_rel, invalid=~valid))
        name = names[i] if names is not None else f"depth_{i:04d}"
        paths.append(_write_png(out_dir / f"{name}.png", np.concatenate(panels, axis=0)))
    return paths


# ----------------------------------------------------------------------------------------------- trajectories
def align_trajectory(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, mode: str = "scale") -> np.ndarray:
    """Align predicted positions to ground-truth positions.

    Modes: ``"scale"``: move both first positions to the origin, fit ``s = sum(y . x) / sum(x . x)``, return
    ``s x + gt[0]`` (the alignment of :func:`~stssl.eval.metrics.snippet_ate`; assumes both are expressed in
    frames with the same orientation, e.g. relative to their first camera). ``"sim3"``: the least-squares
    similarity (rotation, scale, translation) of Umeyama (1991). ``"none"``: unchanged.

    Args:
        pred: ``(N, 3)`` positions.
        gt: ``(N, 3)`` positions.
        mode: ``"scale"``, ``"sim3"`` or ``"none"``.

    Returns:
        ``(N, 3)`` float64 aligned predicted positions.

    Example:
        >>> gt = np.array([[0.0, 0, 0], [0, 0, 1], [1, 0, 2]])
        >>> np.allclose(align_trajectory(gt * 0.25, gt), gt)
        True
    """
    x, y = _numpy(pred).astype(np.float64), _numpy(gt).astype(np.float64)
    if x.ndim != 2 or x.shape[1] != 3 or x.shape != y.shape:
        raise ValueError(f"align_trajectory: pred and gt must both be (N, 3), got {x.shape} and {y.shape}")
    if mode == "none":
        return x
    if mode == "scale":
        x0, y0 = x - x[0], y - y[0]
        den = float(np.sum(x0 * x0))
        return (float(np.sum(y0 * x0)) / den if den > 0 else 0.0) * x0 + y[0]
    if mode == "sim3":
        mx, my = x.mean(0), y.mean(0)
        xc, yc = x - mx, y - my
        U, D, Vt = np.linalg.svd(yc.T @ xc / len(x))
        S = np.eye(3)
        if np.linalg.det(U) * np.linalg.det(Vt) < 0:
            S[2, 2] = -1
        R = U @ S @ Vt
        var = float(np.mean(np.sum(xc * xc, axis=1)))
        s = float(np.trace(np.diag(D) @ S)) / var if var > 0 else 0.0
        return s * xc @ R.T + my
    raise ValueError(f"align_trajectory: mode must be 'scale', 'sim3' or 'none', got {mode!r}")


def plot_trajectory(
    pred_positions: np.ndarray | torch.Tensor,
    gt_positions: np.ndarray | torch.Tensor,
    path: str | Path,
    *,
    align: str = "scale",
    title: str | None = None,
) -> Path:
    """Top-down (``x`` right, ``z`` forward) plot of a predicted and a ground-truth camera path, as PNG.

    The prediction is aligned first (:func:`align_trajectory`). Uses matplotlib's object API with the Agg
    canvas (no pyplot, no global backend change), so it works headless and in threads.

    Args:
        pred_positions: ``(N, 3)`` predicted camera centres (e.g. ``chain_poses(...)[:, :3, 3]``).
        gt_positions: ``(N, 3)`` ground-truth camera centres in the same kind of frame (e.g. relative to the
            first camera: ``(inv(gt[0]) @ gt)[:, :3, 3]``).
        path: the PNG to write (parent folders are created).
        align: ``"scale"``, ``"sim3"`` or ``"none"``.
        title: optional plot title.

    Returns:
        ``path``.

    Raises:
        ImportError: when matplotlib is not installed (it is in the ``dev`` extra).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plot_trajectory needs matplotlib: pip install matplotlib (or stssl[dev])") from err
    pred = align_trajectory(pred_positions, gt_positions, align)
    gt = _numpy(gt_positions).astype(np.float64)
    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(gt[:, 0], gt[:, 2], "k-", lw=2, label="ground truth")
    ax.plot(pred[:, 0], pred[:, 2], "--", color="tab:red", lw=1.5, label=f"prediction ({align} aligned)")
    ax.plot(gt[:1, 0], gt[:1, 2], "ko", ms=5, label="start")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("z (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# ----------------------------------------------------------------------------------------------- writers
def write_poses_kitti(path: str | Path, poses: np.ndarray | torch.Tensor) -> Path:
    """Write poses in the KITTI odometry format: one line per frame, the row-major 3x4 matrix (12 numbers).

    Args:
        path: the text file to write (parent folders are created).
        poses: ``(N, 4, 4)`` or ``(N, 3, 4)``, usually ``world_from_camera`` (``0_from_i`` for KITTI results).

    Returns:
        ``path``; :func:`stssl.worlds.scene_io.read_poses` reads it back (as ``poses.txt`` of a folder).
    """
    arr = _numpy(poses).astype(np.float64)
    if arr.ndim != 3 or arr.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"write_poses_kitti({path}): poses must be (N, 4, 4) or (N, 3, 4), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"write_poses_kitti({path}): poses contain non-finite values")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, arr[:, :3, :4].reshape(len(arr), 12), fmt="%.9e")
    return path


def write_depth_maps(
    out_dir: str | Path,
    depth: np.ndarray | torch.Tensor,
    *,
    frame_indices: Sequence[int] | None = None,
    png: bool = True,
) -> dict[str, Any]:
    """Write predicted depth as ``depth.npz`` (array ``depth`` ``(N, H, W)`` float32 metres, and
    ``frame_indices``; the scene format's layout, so :func:`stssl.worlds.scene_io.read_depth` reads it) and,
    with ``png``, ``depth_png/<frame:06d>.png`` colour-mapped inverse depth (each from 0 to its 95th percentile).

    Args:
        out_dir: the folder (created).
        depth: ``(N, H, W)`` or ``(N, 1, H, W)`` depth.
        frame_indices: the frames' indices in their video (default ``0..N-1``); names the PNGs.
        png: also write the PNGs.

    Returns:
        ``{"npz": Path, "png": [Path, ...]}``.
    """
    arr = _numpy(depth).astype(np.float32)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"write_depth_maps({out_dir}): depth must be (N, H, W) or (N, 1, H, W), got {arr.shape}")
    idx = np.arange(len(arr)) if frame_indices is None else np.asarray(frame_indices, dtype=np.int64)
    if idx.shape != (len(arr),):
        raise ValueError(f"write_depth_maps({out_dir}): {len(idx)} frame_indices for {len(arr)} depth maps")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    npz = out / DEPTH_FILE
    np.savez_compressed(npz, depth=arr, frame_indices=idx)
    pngs = []
    if png:
        for i, d in zip(idx, arr, strict=True):
            disp = 1.0 / np.maximum(d, 1e-6)
            pngs.append(_write_png(out / "depth_png" / f"{int(i):06d}.png",
                                   colorize(disp, 0.0, float(np.percentile(disp, 95)))))
    return {"npz": npz, "png": pngs}

