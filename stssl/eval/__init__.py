"""stssl.eval: metrics (pure functions) and scene-level depth/pose evaluation."""

from __future__ import annotations

from stssl.eval.depth_pose import (
    evaluate_scene,
    plot_trajectory,
    save_depth_visuals,
    write_depth_maps,
    write_poses_kitti,
)
from stssl.eval.metrics import depth_metrics, snippet_ate

__all__ = [
    "depth_metrics",
    "evaluate_scene",
    "plot_trajectory",
    "save_depth_visuals",
    "snippet_ate",
    "write_depth_maps",
    "write_poses_kitti",
]
