"""stssl.geometry: pinhole cameras, rigid poses (``a_from_b``) and depth-based warping; thin typed kornia wrappers."""

from __future__ import annotations

from stssl.geometry.camera import (
    backproject,
    crop_intrinsics,
    intrinsics_pyramid,
    normalize_pixels,
    pixel_grid,
    project,
    scale_intrinsics,
)
from stssl.geometry.pose import (
    compose,
    invert_pose,
    matrix_to_pose_vec,
    pose_vec_to_matrix,
    relative_pose,
    transform_points,
)
from stssl.geometry.warp import reprojection_grid, warp_frame

__all__ = [
    "backproject",
    "compose",
    "crop_intrinsics",
    "intrinsics_pyramid",
    "invert_pose",
    "matrix_to_pose_vec",
    "normalize_pixels",
    "pixel_grid",
    "pose_vec_to_matrix",
    "project",
    "relative_pose",
    "reprojection_grid",
    "scale_intrinsics",
    "transform_points",
    "warp_frame",
]
