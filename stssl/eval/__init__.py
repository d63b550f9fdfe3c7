"""stssl.eval: metrics (pure functions), scene-level depth/pose evaluation, frozen-feature probes."""

from __future__ import annotations

from stssl.eval.depth_pose import (
    evaluate_scene,
    plot_trajectory,
    save_depth_visuals,
    write_depth_maps,
    write_poses_kitti,
)
from stssl.eval.metrics import depth_metrics, snippet_ate
from stssl.eval.probe import (
    extract_features,
    knn_accuracy,
    knn_classify,
    linear_probe,
    load_encoder_from_checkpoint,
    mean_class_accuracy,
    recalibrate_batchnorm,
)
from stssl.eval.world_tasks import ego_motion_dataset, ego_motion_labels, world_probe_dataset

__all__ = [
    "depth_metrics",
    "ego_motion_dataset",
    "ego_motion_labels",
    "evaluate_scene",
    "extract_features",
    "knn_accuracy",
    "knn_classify",
    "linear_probe",
    "load_encoder_from_checkpoint",
    "mean_class_accuracy",
    "plot_trajectory",
    "recalibrate_batchnorm",
    "save_depth_visuals",
    "snippet_ate",
    "world_probe_dataset",
    "write_depth_maps",
    "write_poses_kitti",
]
