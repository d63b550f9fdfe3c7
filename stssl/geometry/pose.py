"""Rigid poses as 4x4 matrices named ``a_from_b``, and the 6-vector a pose network predicts.

Conventions:

- ``a_from_b`` is a ``(B, 4, 4)`` homogeneous matrix ``[[R, t], [0, 0, 0, 1]]`` that maps a point expressed in
  frame ``b`` to frame ``a``: ``X_a = R @ X_b + t`` (kornia's ``trans_ab`` / ``src_trans_dst``, spelled out).
  Composition reads right to left with matching inner names: ``a_from_c = a_from_b @ b_from_c``.
- Translations are in metres (or the depth's unit); rotations are axis-angle vectors in radians (the axis
  scaled by the angle, right-hand rule), as in :func:`kornia.geometry.conversions.axis_angle_to_rotation_matrix`.
- A pose vector is ``(B, 6)`` = ``(rx, ry, rz, tx, ty, tz)``: rotation first, then translation, and the
  matrix applies the rotation first: ``X_a = R(r) @ X_b + t``. (monodepth2's ``transformation_from_parameters``
  uses ``R @ (X + t)`` instead; the two differ in what ``t`` means, not in what they can express.)
- Camera frames are OpenCV: ``x`` right, ``y`` down, ``z`` forward. A camera moving forward by 1 m between
  frames ``tgt`` and ``src`` has ``src_from_tgt`` translation ``(0, 0, -1)``: the scene comes 1 m closer.
"""

from __future__ import annotations

import torch
from kornia.geometry.conversions import (
    Rt_to_matrix4x4,
    axis_angle_to_rotation_matrix,
    rotation_matrix_to_axis_angle,
)
from kornia.geometry.linalg import inverse_transformation

from stssl.checks import check_shape

__all__ = [
    "pose_vec_to_matrix",
    "matrix_to_pose_vec",
    "invert_pose",
    "compose",
    "relative_pose",
    "transform_points",
]


def pose_vec_to_matrix(vec: torch.Tensor) -> torch.Tensor:
    """4x4 pose from ``(rx, ry, rz, tx, ty, tz)``: axis-angle rotation (radians) then translation (metres).

    Args:
        vec: ``(B, 6)`` pose vectors.

    Returns:
        ``(B, 4, 4)`` matrices ``[[R, t], [0, 1]]`` with ``R = exp([r]_x)`` (Rodrigues, via kornia; smooth and
        differentiable at ``r = 0``).

    Example:
        >>> import math
        >>> M = pose_vec_to_matrix(torch.tensor([[0.0, 0.0, math.pi / 2, 1.0, 2.0, 3.0]]))
        >>> (M[0, :3, :3] @ torch.tensor([1.0, 0.0, 0.0])).round(decimals=6).abs().tolist()
        [0.0, 1.0, 0.0]
        >>> M[0, :, 3].tolist()
        [1.0, 2.0, 3.0, 1.0]
    """
    check_shape(vec, "B 6", name="vec")
    R = axis_angle_to_rotation_matrix(vec[:, :3])
    return Rt_to_matrix4x4(R, vec[:, 3:, None])


def matrix_to_pose_vec(pose: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pose_vec_to_matrix`: ``(B, 4, 4)`` to ``(rx, ry, rz, tx, ty, tz)``.

    The rotation angle is returned in ``[0, pi]`` (via kornia's quaternion route), so a vector with angle above
    ``pi`` comes back as the equivalent shorter rotation. The bottom row of ``pose`` is not read.

    Args:
        pose: ``(B, 4, 4)`` rigid transforms.

    Returns:
        ``(B, 6)`` pose vectors.

    Example:
        >>> vec = torch.tensor([[0.1, -0.2, 0.3, 1.0, 2.0, 3.0]])
        >>> torch.allclose(matrix_to_pose_vec(pose_vec_to_matrix(vec)), vec, atol=1e-6)
        True
    """
    check_shape(pose, "B 4 4", name="pose")
    r = rotation_matrix_to_axis_angle(pose[:, :3, :3])
    return torch.cat([r, pose[:, :3, 3]], dim=1)


def invert_pose(a_from_b: torch.Tensor) -> torch.Tensor:
    """``b_from_a`` from ``a_from_b``: ``[[R^T, -R^T t], [0, 1]]`` (rigid inverse, no general matrix inverse).

    Args:
        a_from_b: ``(B, 4, 4)`` rigid transforms.

    Returns:
        ``(B, 4, 4)`` their inverses.

    Example:
        >>> a_from_b = pose_vec_to_matrix(torch.tensor([[0.3, 0.0, 0.0, 0.0, 1.0, 0.0]]))
        >>> torch.allclose(compose(a_from_b, invert_pose(a_from_b)), torch.eye(4), atol=1e-6)
        True
    """
    check_shape(a_from_b, "B 4 4", name="a_from_b")
    return inverse_transformation(a_from_b)


def compose(a_from_b: torch.Tensor, b_from_c: torch.Tensor) -> torch.Tensor:
    """``a_from_c = a_from_b @ b_from_c``.

    Args:
        a_from_b: ``(B, 4, 4)``.
        b_from_c: ``(B, 4, 4)``.

    Returns:
        ``(B, 4, 4)`` the composed transform.

    Example:
        >>> shift = pose_vec_to_matrix(torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]]))
        >>> compose(shift, shift)[0, :3, 3].tolist()
        [2.0, 0.0, 0.0]
    """
    sizes = check_shape(a_from_b, "B 4 4", name="a_from_b")
    check_shape(b_from_c, "B 4 4", sizes, name="b_from_c")
    return a_from_b @ b_from_c


def relative_pose(world_from_a: torch.Tensor, world_from_b: torch.Tensor) -> torch.Tensor:
    """``a_from_b = inv(world_from_a) @ world_from_b`` from two absolute (camera-to-world) poses.

    Args:
        world_from_a: ``(B, 4, 4)`` pose of frame ``a`` in the world.
        world_from_b: ``(B, 4, 4)`` pose of frame ``b`` in the world.

    Returns:
        ``(B, 4, 4)`` ``a_from_b``.

    Example:
        >>> world_from_a = pose_vec_to_matrix(torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 1.0]]))
        >>> world_from_b = pose_vec_to_matrix(torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 3.0]]))
        >>> relative_pose(world_from_a, world_from_b)[0, :3, 3].tolist()
        [0.0, 0.0, 2.0]
    """
    sizes = check_shape(world_from_a, "B 4 4", name="world_from_a")
    check_shape(world_from_b, "B 4 4", sizes, name="world_from_b")
    return inverse_transformation(world_from_a) @ world_from_b


def transform_points(a_from_b: torch.Tensor, points_b: torch.Tensor) -> torch.Tensor:
    """Move a per-pixel point map from frame ``b`` to frame ``a``: ``X_a = R @ X_b + t``.

    Args:
        a_from_b: ``(B, 4, 4)`` rigid transforms.
        points_b: ``(B, 3, H, W)`` points in frame ``b``.

    Returns:
        ``(B, 3, H, W)`` the same points in frame ``a``.

    Example:
        >>> a_from_b = pose_vec_to_matrix(torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, -1.0]]))
        >>> transform_points(a_from_b, torch.tensor([0.0, 0.0, 5.0]).view(1, 3, 1, 1)).flatten().tolist()
        [0.0, 0.0, 4.0]
    """
    sizes = check_shape(points_b, "B 3 H W", name="points_b")
    check_shape(a_from_b, "B 4 4", sizes, name="a_from_b")
    a_from_b = a_from_b.to(points_b.dtype)
    rotated = torch.einsum("bij,bjhw->bihw", a_from_b[:, :3, :3], points_b)
    return rotated + a_from_b[:, :3, 3, None, None]
