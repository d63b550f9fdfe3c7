"""Depth and ego-motion evaluation during training (:class:`DepthPoseEvaluator`) and inference (:func:`predict_video`).

Both drive a depth/motion task through two methods, so any task with them works:

- ``task.predict_depth(encoder, image)``: ``(B, 3, H, W)`` float in ``[0, 1]`` -> ``(B, 1, H, W)`` depth, metres;
- ``task.predict_pose(image_a, image_b)``: two ``(B, 3, H, W)`` batches -> ``(B, 4, 4)`` ``b_from_a``;

and the task's ``min_depth`` / ``max_depth`` attributes give the default evaluation depth range.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from stssl.eval.depth_pose import (
    DepthFn,
    PoseFn,
    ScenePredictions,
    chain_poses,
    combine_scene_metrics,
    evaluate_scene,
    load_frames,
    plot_trajectory,
    predict_sequence,
    save_depth_visuals,
    write_depth_maps,
    write_poses_kitti,
)
from stssl.modules.callbacks import run_dir

__all__ = ["DepthPoseEvaluator", "depth_pose_predictors", "find_task", "load_ssl_module", "predict_video"]

logger = logging.getLogger(__name__)

#: The keys :class:`DepthPoseEvaluator` logs (each under ``val/``).
LOGGED_KEYS = (
    "depth/abs_rel", "depth/sq_rel", "depth/rmse", "depth/rmse_log", "depth/a1", "depth/a2", "depth/a3",
    "depth/scale_ratio_median", "depth/scale_ratio_std", "pose/ate", "pose/ate_std",
)


def find_task(module: torch.nn.Module, task_name: str) -> Any:
    """The task named ``task_name`` in ``module.tasks``, checked for ``predict_depth`` and ``predict_pose``.

    Raises:
        KeyError: naming the tasks the module has.
        TypeError: when the task lacks ``predict_depth``/``predict_pose``.
    """
    tasks = getattr(module, "tasks", None)
    if tasks is None:
        raise TypeError(f"{type(module).__name__} has no 'tasks'; expected an SSLModule with a depth/motion task")
    names = [getattr(t, "name", type(t).__name__) for t in tasks]
    for task, name in zip(tasks, names, strict=True):
        if name == task_name:
            missing = [m for m in ("predict_depth", "predict_pose") if not callable(getattr(task, m, None))]
            if missing:
                raise TypeError(f"task {task_name!r} ({type(task).__name__}) has no {', '.join(missing)}; "
                                "expected a depth/motion task")
            return task
    raise KeyError(f"no task named {task_name!r} in the module; its tasks are {names}")


def depth_pose_predictors(module: torch.nn.Module, task: Any) -> tuple[DepthFn, PoseFn]:
    """The depth and pose functions :func:`~stssl.eval.depth_pose.evaluate_scene` takes, from a module's task."""
    encoder = module.encoder

    def depth_fn(images: torch.Tensor) -> torch.Tensor:
        return task.predict_depth(encoder, images)

    return depth_fn, task.predict_pose


class _EvalMode:
    """Puts a module in eval mode and restores its previous mode on exit."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.was_training = module, module.training

    def __enter__(self) -> None:
        self.module.eval()

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.was_training)


class DepthPoseEvaluator(L.Callback):
    """Scores the depth/motion task on whole validation scenes at the end of validation epochs.

    For each scene, :func:`stssl.eval.depth_pose.evaluate_scene` runs the task's ``predict_depth`` on every
    frame and ``predict_pose`` on consecutive frames (eval mode, no grad, the module's device) and compares them
    with the scene's ground truth. Metrics pooled over scenes (frame-weighted depth, snippet-weighted ATE) are
    logged with ``pl_module.log`` as ``val/depth/abs_rel``, ``val/depth/sq_rel``, ``val/depth/rmse``,
    ``val/depth/rmse_log``, ``val/depth/a1..a3``, ``val/depth/scale_ratio_median``,
    ``val/depth/scale_ratio_std``, ``val/pose/ate`` and ``val/pose/ate_std``, so they reach every logger,
    ``metrics.json`` (:class:`~stssl.modules.callbacks.MetricsJSON`) and checkpoint monitors. With
    ``save_images``, depth/error PNGs (:func:`~stssl.eval.depth_pose.save_depth_visuals`) and a top-down
    trajectory plot per scene go to ``<run_dir>/images/depth_eval/epoch<NNN>/``.

    Under DDP only rank 0 evaluates and writes; it broadcasts the numbers so every rank logs the same values.

    Args:
        scenes: scene folders (stssl scene format); None uses the scene folders of the datamodule's validation
            records (``trainer.datamodule.val_dataset.records[i].scene_dir``, e.g. a ClipDataModule's world
            validation scenes).
        task_name: the ``name`` of the task in ``pl_module.tasks``.
        every_n_epochs: evaluate when ``(epoch + 1) % every_n_epochs == 0``.
        max_frames: evaluate at most this many frames per scene (None: all).
        save_images: write the PNGs.
        size: ``(H, W)`` the model sees; None uses the datamodule's ``size``, else each scene's native size.
        frame_step: evaluate every ``frame_step``-th frame (match the training ``frame_stride``).
        snippet: frames per ATE window.
        min_depth: evaluation depth range; None uses the task's ``min_depth`` (Eigen's KITTI protocol: 1e-3).
        max_depth: None uses the task's ``max_depth`` (KITTI: 80).
        batch_size: frames per prediction call.
        num_images: depth PNGs per scene (evenly spaced frames).
        backend: video reader backend.
        garg_crop: restrict the depth metrics to Garg's crop (the KITTI Eigen protocol, with ``max_depth=80`` and
            ``min_depth=1e-3``).
    """

    def __init__(
        self,
        scenes: list[str] | None = None,
        task_name: str = "depth_motion",
        every_n_epochs: int = 1,
        max_frames: int | None = None,
        save_images: bool = True,
        size: tuple[int, int] | None = None,
        frame_step: int = 1,
        snippet: int = 5,
        min_depth: float | None = None,
        max_depth: float | None = None,
        batch_size: int = 8,
        num_images: int = 4,
        backend: str = "auto",
        garg_crop: bool = False,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"DepthPoseEvaluator: every_n_epochs must be >= 1, got {every_n_epochs}")
        if scenes is not None:
            missing = [s for s in scenes if not Path(s).is_dir()]
            if missing:
                raise FileNotFoundError(f"DepthPoseEvaluator: scene folders not found: {missing}")
        self.scenes = None if scenes is None else [str(s) for s in scenes]
        self.task_name, self.every_n_epochs = task_name, every_n_epochs
        self.max_frames, self.save_images = max_frames, save_images
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.frame_step, self.snippet = frame_step, snippet
        self.min_depth, self.max_depth = min_depth, max_depth
        self.batch_size, self.num_images, self.backend = batch_size, num_images, backend
        self.garg_crop = bool(garg_crop)
        self.last_results: dict[str, dict[str, Any]] = {}
        self._warned_plot = False

    # ------------------------------------------------------------------ resolution
    def resolve_scenes(self, trainer: L.Trainer) -> list[str]:
        """The scene folders to evaluate (see ``scenes``).

        Raises:
            ValueError: when ``scenes`` is None and the datamodule has no validation scene folders.
        """
        if self.scenes is not None:
            return self.scenes
        dm = getattr(trainer, "datamodule", None)
        dataset = getattr(dm, "val_dataset", None)
        if dataset is None and dm is not None and hasattr(dm, "setup"):
            dm.setup("validate")
            dataset = getattr(dm, "val_dataset", None)
        records = getattr(dataset, "records", None) or []
        scenes = list(dict.fromkeys(r.scene_dir for r in records if getattr(r, "scene_dir", None)))
        if not scenes:
            raise ValueError(
                "DepthPoseEvaluator: scenes=None needs a datamodule whose validation records are scene folders "
                f"(with ground-truth depth and poses), got datamodule {type(dm).__name__}; pass scenes=[...]"
            )
        return scenes

    def _size(self, trainer: L.Trainer) -> tuple[int, int] | None:
        if self.size is not None:
            return self.size
        size = getattr(getattr(trainer, "datamodule", None), "size", None)
        return None if size is None else (int(size[0]), int(size[1]))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, out_dir: Path | None) -> dict[str, float]:
        """Evaluate every scene (this process only) and return the pooled metrics; writes images to ``out_dir``."""
        task = find_task(pl_module, self.task_name)
        min_depth = self.min_depth if self.min_depth is not None else float(task.min_depth)
        max_depth = self.max_depth if self.max_depth is not None else float(task.max_depth)
        depth_fn, pose_fn = depth_pose_predictors(pl_module, task)
        size = self._size(trainer)
        results = []
        self.last_results = {}
        with _EvalMode(pl_module):
            for scene in self.resolve_scenes(trainer):
                from stssl.worlds.scene_io import read_calib

                if size is None:
                    calib = read_calib(scene)
                    scene_size = (calib["height"], calib["width"])
                else:
                    scene_size = size
                result = evaluate_scene(
                    scene, depth_fn, pose_fn, size=scene_size, min_depth=min_depth, max_depth=max_depth,
                    frame_step=self.frame_step, snippet=self.snippet, backend=self.backend,
                    max_frames=self.max_frames, batch_size=self.batch_size, device=pl_module.device,
                    return_predictions=out_dir is not None, garg_crop=self.garg_crop,
                )
                predictions = result.pop("predictions", None)
                self.last_results[scene] = result
                results.append(result)
                if out_dir is not None and predictions is not None:
                    self._save(out_dir, Path(scene).name, predictions, result, min_depth, max_depth)
        return {k: v for k, v in combine_scene_metrics(results).items() if k in LOGGED_KEYS}

    def _save(self, out_dir: Path, name: str, pred: ScenePredictions, result: dict[str, Any], min_depth: float,
              max_depth: float) -> None:
        n = len(pred.frame_indices)
        pick = sorted(set(np.linspace(0, n - 1, min(self.num_images, n)).round().astype(int).tolist()))
        names = [f"{name}_frame{int(pred.frame_indices[i]):04d}" for i in pick]
        save_depth_visuals(out_dir, pred.images[pick], pred.depth[pick], pred.gt_depth[pick], names=names,
                           min_depth=min_depth, max_depth=max_depth)
        gt_rel = np.linalg.inv(pred.gt_world_from_camera[0]) @ pred.gt_world_from_camera
        try:
            plot_trajectory(pred.pred_world_from_camera[:, :3, 3], gt_rel[:, :3, 3], out_dir / f"{name}_trajectory.png",
                            title=f"{name}: ATE {result['pose/ate']:.4f} m (snippets of {self.snippet})")
        except ImportError as err:
            if not self._warned_plot:
                logger.warning("DepthPoseEvaluator: no trajectory plot (%s)", err)
                self._warned_plot = True

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        out_dir = None
        if self.save_images:
            # run_dir is a collective under DDP: every rank calls it before the rank-0 check.
            out_dir = run_dir(trainer) / "images" / "depth_eval" / f"epoch{trainer.current_epoch:03d}"
        metrics: dict[str, float] | None = None
        if trainer.is_global_zero:
            metrics = self.evaluate(trainer, pl_module, out_dir)
        if trainer.world_size > 1:
            metrics = trainer.strategy.broadcast(metrics, src=0)
        assert metrics is not None
        for key, value in metrics.items():
            if math.isfinite(value):
                # identical on every rank (broadcast): the all-reduce is a no-op on the value, silences the DDP warning
                pl_module.log(f"val/{key}", value, on_step=False, on_epoch=True, sync_dist=True)


# ----------------------------------------------------------------------------------------------- inference
def load_ssl_module(ckpt_or_module: str | Path | L.LightningModule, device: torch.device) -> L.LightningModule:
    """An :class:`~stssl.modules.SSLModule` rebuilt from an ``stssl-train`` checkpoint (a module passes through)."""
    if isinstance(ckpt_or_module, torch.nn.Module):
        return ckpt_or_module
    path = Path(ckpt_or_module)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    from stssl.modules.ssl import SSLModule

    try:
        return SSLModule.load_from_checkpoint(path, map_location=device)
    except TypeError as err:
        raise ValueError(
            f"cannot rebuild the model from {path} ({err}). Checkpoints written by stssl-train "
            "(LightningCLI) store the encoder and tasks; for others build the SSLModule, load the checkpoint's "
            "state_dict and pass the module instead"
        ) from err


def predict_video(
    ckpt_or_module: str | Path | L.LightningModule,
    video_path: str | Path,
    out_dir: str | Path,
    *,
    size: tuple[int, int],
    K: np.ndarray | torch.Tensor | Sequence[Sequence[float]] | None = None,
    task_name: str = "depth_motion",
    backend: str = "auto",
    batch_size: int = 8,
    device: str | torch.device | None = None,
    frame_step: int = 1,
    max_frames: int | None = None,
    png: bool = True,
) -> dict[str, Any]:
    """Predict depth for every frame and the camera trajectory of a video; write them to ``out_dir``.

    Frames ``0, frame_step, ...`` (at most ``max_frames``) are resized to ``size`` and fed to the task's
    ``predict_depth`` and, for consecutive frames, ``predict_pose`` (eval mode, no grad). Writes:

    - ``depth.npz``: ``depth`` ``(N, H, W)`` float32 (the model's scale: monocular depth is up to scale) and
      ``frame_indices``; with ``png``, ``depth_png/<frame:06d>.png`` colour-mapped inverse depth;
    - ``poses.txt``: KITTI odometry format, ``world_from_camera`` of every frame chained from the predicted
      ``(i+1)_from_i`` with the first camera as the world (absent for a single frame);
    - ``calib.json`` (when ``K`` is given): ``K`` scaled to ``size``, so the folder reads like a scene folder.

    Args:
        ckpt_or_module: an SSLModule, or a checkpoint written by ``stssl-train``.
        video_path: a video file or a frame folder.
        out_dir: output folder (created).
        size: ``(H, W)`` the model sees.
        K: optional ``(3, 3)`` intrinsics at the video's native resolution.
        task_name: the depth/motion task's name in the module.
        backend: video reader backend.
        batch_size: frames per prediction call.
        device: where to run (default: the module's device; ``"cpu"`` for a checkpoint).
        frame_step: predict every ``frame_step``-th frame.
        max_frames: at most this many frames.
        png: also write the depth PNGs.

    Returns:
        ``{"depth": Path, "png": [Path], "poses": Path | None, "calib": Path | None, "frame_indices": ndarray}``.

    Raises:
        FileNotFoundError / ValueError / KeyError: naming the checkpoint, video or task that is wrong.
    """
    from stssl.data.readers import open_video
    from stssl.worlds.scene_io import POSES_FILE, write_calib

    dev = torch.device(device) if device is not None else None
    module = load_ssl_module(ckpt_or_module, dev or torch.device("cpu"))
    if dev is None:
        dev = next(module.parameters()).device
    else:
        module = module.to(dev)
    task = find_task(module, task_name)
    if frame_step < 1 or (max_frames is not None and max_frames < 1):
        raise ValueError(f"predict_video: need frame_step >= 1 and max_frames >= 1 or None, got {frame_step}, {max_frames}")
    with open_video(video_path, backend=backend) as reader:
        n, fps = len(reader), float(reader.fps)
    indices = list(range(0, n, frame_step))[: max_frames if max_frames is not None else None]
    K_arr = None if K is None else np.asarray(K.detach().cpu() if isinstance(K, torch.Tensor) else K, dtype=np.float64)
    if K_arr is not None and K_arr.shape != (3, 3):
        raise ValueError(f"predict_video: K must be (3, 3), got {K_arr.shape}")
    frames, K_size = load_frames(video_path, size=size, K=K_arr, indices=indices, backend=backend)
    depth_fn, pose_fn = depth_pose_predictors(module, task)
    with _EvalMode(module):
        depth, b_from_a = predict_sequence(frames, depth_fn, pose_fn if len(indices) > 1 else None,
                                           batch_size=batch_size, device=dev)
    assert depth is not None
    out = Path(out_dir)
    written = write_depth_maps(out, depth, frame_indices=indices, png=png)
    poses = None if b_from_a is None else write_poses_kitti(out / POSES_FILE, chain_poses(b_from_a))
    calib = None
    if K_size is not None:
        calib = write_calib(out, K_size.numpy(), int(size[1]), int(size[0]), fps if math.isfinite(fps) else 10.0)
    return {"depth": written["npz"], "png": written["png"], "poses": poses, "calib": calib,
            "frame_indices": np.asarray(indices)}
