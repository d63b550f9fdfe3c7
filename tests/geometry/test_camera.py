"""Tests for stssl.geometry.camera: pixel grid, back-projection, projection, intrinsics pyramid, normalisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stssl.geometry.camera import (
    backproject,
    intrinsics_pyramid,
    normalize_pixels,
    pixel_grid,
    project,
    scale_intrinsics,
)


def make_K(fx: float, fy: float, cx: float, cy: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def mixed_K(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Two different cameras in one batch (one with skew)."""
    K0 = make_K(20.0, 22.0, 15.5, 11.5, dtype)
    K1 = make_K(35.0, 30.0, 14.0, 12.5, dtype)
    K1[0, 1] = 0.7
    return torch.stack([K0, K1])


def test_pixel_grid_values() -> None:
    grid = pixel_grid(3, 4, dtype=torch.float64)
    assert grid.shape == (2, 3, 4)
    for v in range(3):
        for u in range(4):
            assert grid[0, v, u].item() == u and grid[1, v, u].item() == v


def test_backproject_matches_naive_loop() -> None:
    g = torch.Generator().manual_seed(0)
    K = mixed_K()
    depth = torch.rand(2, 1, 5, 6, generator=g, dtype=torch.float64) * 10 + 0.5
    points = backproject(depth, torch.linalg.inv(K))
    expected = torch.zeros_like(points)
    for b in range(2):
        fx, s, cx, fy, cy = (K[b, i, j].item() for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2)))
        for v in range(5):
            for u in range(6):
                z = depth[b, 0, v, u].item()
                y = (v - cy) / fy * z
                x = ((u - cx) - s * (v - cy) / fy) / fx * z
                expected[b, :, v, u] = torch.tensor([x, y, z], dtype=torch.float64)
    torch.testing.assert_close(points, expected)


def test_project_backproject_is_pixel_grid() -> None:
    g = torch.Generator().manual_seed(1)
    K = mixed_K()
    depth = torch.rand(2, 1, 24, 32, generator=g, dtype=torch.float64) * 50 + 0.1
    pixels, valid = project(backproject(depth, torch.linalg.inv(K)), K)
    expected = pixel_grid(24, 32, dtype=torch.float64).expand(2, -1, -1, -1)
    torch.testing.assert_close(pixels, expected, atol=1e-9, rtol=0)
    assert valid.shape == (2, 1, 24, 32) and bool(valid.all())


def test_project_flags_points_behind_camera() -> None:
    K = mixed_K()
    points = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, -3.0]], dtype=torch.float64).T.reshape(3, 1, 2)
    points = points.expand(2, 3, 1, 2).contiguous()
    pixels, valid = project(points, K, eps=1e-3)
    assert valid[:, 0, 0, 0].all() and not valid[:, 0, 0, 1].any()
    assert torch.isfinite(pixels).all()
    # the point in front: (fx x + s y) / z + cx
    assert pixels[1, 0, 0, 0].item() == pytest.approx((35.0 * 1 + 0.7 * 2) / 3 + 14.0)
    # behind the camera: divided by eps, so far outside the image instead of mirrored into it
    assert pixels[:, :, 0, 1].abs().min() > 1000


def test_backproject_project_gradcheck() -> None:
    g = torch.Generator().manual_seed(2)
    K = mixed_K().requires_grad_(True)
    K_inv = torch.linalg.inv(mixed_K()).requires_grad_(True)
    depth = (torch.rand(2, 1, 3, 4, generator=g, dtype=torch.float64) + 1).requires_grad_(True)
    assert torch.autograd.gradcheck(backproject, (depth, K_inv))
    points = (torch.rand(2, 3, 3, 4, generator=g, dtype=torch.float64) + 1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, k: project(p, k)[0], (points, K))


def test_scale_intrinsics_follows_interpolate() -> None:
    """An image whose value is its own column u, downsampled by interpolate, holds the u that K' predicts."""
    W, H = 16, 8
    image = pixel_grid(H, W, dtype=torch.float64)[None]  # channel 0 = u, channel 1 = v
    small = F.interpolate(image, size=(H // 2, W // 2), mode="bilinear", align_corners=False)
    K = make_K(10.0, 10.0, 7.5, 3.5)[None]
    K_small = scale_intrinsics(K, 0.5, 0.5)
    # pixel (u', v') of the small image sees the ray K_small^-1 (u', v', 1); at level 0 that ray hits K @ ray
    rays = backproject(torch.ones(1, 1, H // 2, W // 2, dtype=torch.float64), torch.linalg.inv(K_small))
    full_res_pixels, _ = project(rays, K)
    torch.testing.assert_close(full_res_pixels, small)


def test_intrinsics_pyramid_levels() -> None:
    K = mixed_K()
    levels = intrinsics_pyramid(K, 4)
    assert len(levels) == 4
    torch.testing.assert_close(levels[0], K)
    assert levels[0] is not K
    for s, Ks in enumerate(levels):
        torch.testing.assert_close(Ks, scale_intrinsics(K, 0.5**s, 0.5**s))
    # exact integer sizes for odd images: 375x1242 -> level 2 is 93x310
    odd = intrinsics_pyramid(K, 3, size=(375, 1242))
    torch.testing.assert_close(odd[2], scale_intrinsics(K, 310 / 1242, 93 / 375))
    with pytest.raises(ValueError, match="num_scales"):
        intrinsics_pyramid(K, 0)
    with pytest.raises(ValueError, match="too small"):
        intrinsics_pyramid(K, 4, size=(6, 40))


def test_normalize_pixels_samples_pixel_centres_exactly() -> None:
    g = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 5, 7, generator=g, dtype=torch.float64)
    grid = normalize_pixels(pixel_grid(5, 7, dtype=torch.float64).expand(2, -1, -1, -1), 5, 7)
    assert grid.shape == (2, 5, 7, 2)
    sampled = F.grid_sample(image, grid, mode="bilinear", align_corners=False)
    torch.testing.assert_close(sampled, image)
    edges = normalize_pixels(
        torch.tensor([[-0.5, 6.5], [-0.5, 4.5]], dtype=torch.float64).view(1, 2, 1, 2), 5, 7
    )
    torch.testing.assert_close(edges[0, 0], torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64))


def test_bad_shapes_name_the_argument() -> None:
    K = mixed_K()
    with pytest.raises(ValueError, match="depth"):
        backproject(torch.ones(2, 3, 4, 4), K)
    with pytest.raises(ValueError, match="K_inv"):
        backproject(torch.ones(2, 1, 4, 4), K[:1])
    with pytest.raises(ValueError, match="points"):
        project(torch.ones(2, 4, 4, 4), K)
    with pytest.raises(ValueError, match="K"):
        project(torch.ones(2, 3, 4, 4), torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="pixels"):
        normalize_pixels(torch.ones(2, 4, 4, 2), 4, 4)
