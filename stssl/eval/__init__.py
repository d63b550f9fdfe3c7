"""stssl.eval: metrics (pure functions), scene-level depth/pose evaluation, frozen-feature probes, segmentation and
label-propagation metrics; the ``stssl-eval`` protocols live in :mod:`stssl.eval.protocols`."""

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
    fit_linear_classifier,
    knn_accuracy,
    knn_classify,
    linear_probe,
    load_encoder_from_checkpoint,
    mean_class_accuracy,
    recalibrate_batchnorm,
)
from stssl.eval.propagation import (
    DavisMeter,
    davis_scores,
    j_and_f,
    mask_to_onehot,
    propagate_labels,
    soft_labels_to_masks,
)
from stssl.eval.segmentation import SegmentationMeter, confusion_matrix, miou, per_class_iou
from stssl.eval.world_tasks import ego_motion_dataset, ego_motion_labels, world_probe_dataset

__all__ = [
    "DavisMeter",
    "SegmentationMeter",
    "confusion_matrix",
    "davis_scores",
    "depth_metrics",
    "ego_motion_dataset",
    "ego_motion_labels",
    "evaluate_scene",
    "extract_features",
    "fit_linear_classifier",
    "j_and_f",
    "knn_accuracy",
    "knn_classify",
    "linear_probe",
    "load_encoder_from_checkpoint",
    "mask_to_onehot",
    "mean_class_accuracy",
    "miou",
    "per_class_iou",
    "plot_trajectory",
    "propagate_labels",
    "recalibrate_batchnorm",
    "save_depth_visuals",
    "snippet_ate",
    "soft_labels_to_masks",
    "world_probe_dataset",
    "write_depth_maps",
    "write_poses_kitti",
]
