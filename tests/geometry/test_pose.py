"""Tests for stssl.geometry.pose: conventions, round trips, inverses and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from stssl.geometry.pose import (
    compose,
    invert_pose,
    matrix_to_pose_vec,
    pose_vec_to_matrix,
    relative_pose,
    transform_points,
)


def random_vec(n: int, seed: int, max_angle: float = 3.0) -> torch.Tensor:
    """Pose vectors with rotation angles in (0, max_angle) radians and translations in [-2, 2] metres."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=1)
    angle = torch.rand(n, 1, generator=g, dtype=torch.float64) * max_angle
    t = torch.rand(n, 3, generator=g, dtype=torch.float64) * 4 - 2
    return torch.cat([axis * angle, t], dim=1)


def skew(r: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(r[:, 0])
    rx, ry, rz = r.unbind(1)
    return torch.stack(
        [torch.stack([zero, -rz, ry], 1), torch.stack([rz, zero, -rx], 1), torch.stack([-ry, rx, zero], 1)], 1
    )


def test_pose_vec_to_matrix_matches_matrix_exponential() -> None:
    vec = random_vec(8, 0)
    M = pose_vec_to_matrix(vec)
    assert M.shape == (8, 4, 4)
    torch.testing.assert_close(M[:, :3, :3], torch.linalg.matrix_exp(skew(vec[:, :3])))
    torch.testing.assert_close(M[:, :3, 3], vec[:, 3:])
    torch.testing.assert_close(M[:, 3], torch.tensor([0.0, 0, 0, 1], dtype=torch.float64).expand(8, 4))
    R = M[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(8, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(8, dtype=torch.float64))


def test_right_hand_rule_and_rotation_before_translation() -> None:
    vec = torch.tensor([[0.0, 0.0, math.pi / 2, 1.0, 0.0, 0.0]], dtype=torch.float64)
    point = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1)
    # +90 degrees about +z sends x to y, then the translation adds (1, 0, 0)
    out = transform_points(pose_vec_to_matrix(vec), point).flatten()
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))


def test_round_trips() -> None:
    vec = random_vec(16, 1)
    torch.testing.assert_close(matrix_to_pose_vec(pose_vec_to_matrix(vec)), vec)
    M = pose_vec_to_matrix(random_vec(16, 2))
    torch.testing.assert_close(pose_vec_to_matrix(matrix_to_pose_vec(M)), M)
    small = random_vec(4, 3, max_angle=1e-4)
    torch.testing.assert_close(matrix_to_pose_vec(pose_vec_to_matrix(small)), small)
    zero = torch.zeros(2, 6, dtype=torch.float64)
    torch.testing.assert_close(pose_vec_to_matrix(zero), torch.eye(4, dtype=torch.float64).expand(2, 4, 4))


def test_invert_compose_relative() -> None:
    a_from_b = pose_vec_to_matrix(random_vec(4, 4))
    b_from_c = pose_vec_to_matrix(random_vec(4, 5))
    torch.testing.assert_close(invert_pose(a_from_b), torch.linalg.inv(a_from_b))
    torch.testing.assert_close(compose(a_from_b, b_from_c), a_from_b @ b_from_c)
    world_from_a, world_from_b = b_from_c, a_from_b
    a_rel_b = relative_pose(world_from_a, world_from_b)
    torch.testing.assert_close(world_from_a @ a_rel_b, world_from_b)


def test_transform_points_matches_homogeneous_product() -> None:
    g = torch.Generator().manual_seed(6)
    a_from_b = pose_vec_to_matrix(random_vec(2, 7))
    points = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    expected = torch.zeros_like(points)
    for b in range(2):
        for v in range(4):
            for u in range(5):
                homogeneous = torch.cat([points[b, :, v, u], torch.ones(1, dtype=torch.float64)])
                expected[b, :, v, u] = (a_from_b[b] @ homogeneous)[:3]
    torch.testing.assert_close(transform_points(a_from_b, points), expected)


def test_forward_motion_convention() -> None:
    """A camera that moves 1 m forward sees a point 5 m ahead at 4 m: src_from_tgt has t = (0, 0, -1)."""
    world_from_tgt = torch.eye(4, dtype=torch.float64)[None]
    world_from_src = pose_vec_to_matrix(torch.tensor([[0.0, 0, 0, 0, 0, 1.0]], dtype=torch.float64))
    src_from_tgt = relative_pose(world_from_src, world_from_tgt)
    torch.testing.assert_close(src_from_tgt[0, :3, 3], torch.tensor([0.0, 0, -1], dtype=torch.float64))
    point = transform_points(src_from_tgt, torch.tensor([0.0, 0, 5], dtype=torch.float64).view(1, 3, 1, 1))
    assert point[0, 2].item() == pytest.approx(4.0)


def test_gradcheck_conversions() -> None:
    vec = torch.cat([random_vec(3, 8), torch.zeros(1, 6, dtype=torch.float64)]).requires_grad_(True)
    assert torch.autograd.gradcheck(pose_vec_to_matrix, (vec,))
    M = pose_vec_to_matrix(random_vec(3, 9, max_angle=2.5)).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(matrix_to_pose_vec, (M,))
    assert torch.autograd.gradcheck(invert_pose, (M,))
    points = torch.randn(3, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(transform_points, (M, points))


def test_bad_shapes_name_the_argument() -> None:
    with pytest.raises(ValueError, match="vec"):
        pose_vec_to_matrix(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="pose"):
        matrix_to_pose_vec(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="b_from_c"):
        compose(torch.eye(4).expand(2, 4, 4), torch.eye(4).expand(3, 4, 4))
    with pytest.raises(ValueError, match="a_from_b"):
        transform_points(torch.eye(4).expand(3, 4, 4), torch.zeros(2, 3, 4, 4))
