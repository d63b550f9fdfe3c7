"""Pinhole camera: intrinsics (scaling, cropping, pyramids), back-projection and projection, per sample.

Convention: pixel centres sit at integer coordinates (OpenCV/KITTI); the image spans ``[-0.5, W - 0.5]``.
Resizing an image by ``sx`` (new_W / old_W) maps ``u' + 0.5 = sx * (u + 0.5)`` — the mapping of
``torch.nn.functional.interpolate(..., align_corners=False)`` — so ``fx' = sx * fx`` and
``cx' = sx * (cx + 0.5) - 0.5``. Cropping at ``(top, left)`` shifts the principal point.

Pixels are ``(u, v)`` = (column, row), channel 0 then 1 of a ``(B, 2, H, W)`` tensor. Camera-frame points are
``(x, y, z)`` in metres (or the depth's unit) with ``x`` right, ``y`` down, ``z`` forward (OpenCV), channels of a
``(B, 3, H, W)`` tensor. ``K`` is ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` in pixels at the tensor's resolution.
:func:`normalize_pixels` maps pixels to :func:`torch.nn.functional.grid_sample` coordinates for
``align_corners=False``, the same half-pixel convention: ``-1``/``+1`` are the outer edges ``-0.5``/``W - 0.5``.
"""

from __future__ import annotations

import torch

from stssl.checks import check_shape

__all__ = [
    "scale_intrinsics",
    "crop_intrinsics",
    "intrinsics_pyramid",
    "pixel_grid",
    "backproject",
    "project",
    "normalize_pixels",
]


def scale_intrinsics(K: torch.Tensor, sx: float | torch.Tensor, sy: float | torch.Tensor) -> torch.Tensor:
    """Intrinsics of an image resized by ``sx`` horizontally and ``sy`` vertically.

    Args:
        K: ``(..., 3, 3)`` pixels.
        sx: new_width / old_width (a float or a ``(...)`` tensor).
        sy: new_height / old_height.

    Returns:
        ``(..., 3, 3)`` the scaled intrinsics (a new tensor).

    Example:
        >>> K = torch.tensor([[100.0, 0, 31.5], [0, 100.0, 15.5], [0, 0, 1]])
        >>> scale_intrinsics(K, 0.5, 0.5)[0]  # 64 px wide, centred -> 32 px wide, centred
        tensor([50.0000,  0.0000, 15.5000])
    """
    check_shape(K.reshape(-1, *K.shape[-2:]), "N 3 3", name="K")
    sx_t = torch.as_tensor(sx, dtype=K.dtype, device=K.device)
    sy_t = torch.as_tensor(sy, dtype=K.dtype, device=K.device)
    out = K.clone()
    out[..., 0, 0] = K[..., 0, 0] * sx_t
    out[..., 0, 1] = K[..., 0, 1] * sx_t
    out[..., 0, 2] = sx_t * (K[..., 0, 2] + 0.5) - 0.5
    out[..., 1, 1] = K[..., 1, 1] * sy_t
    out[..., 1, 2] = sy_t * (K[..., 1, 2] + 0.5) - 0.5
    return out


def crop_intrinsics(K: torch.Tensor, top: float | torch.Tensor, left: float | torch.Tensor) -> torch.Tensor:
    """Intrinsics of the crop whose top-left pixel is ``(top, left)`` of the original image.

    Args:
        K: ``(..., 3, 3)`` pixels.
        top: first row kept (a float or a ``(...)`` tensor).
        left: first column kept.

    Returns:
        ``(..., 3, 3)`` with ``cx -= left`` and ``cy -= top``.

    Example:
        >>> K = torch.tensor([[100.0, 0, 31.5], [0, 100.0, 15.5], [0, 0, 1]])
        >>> crop_intrinsics(K, 4, 8)[:2, 2]
        tensor([23.5000, 11.5000])
    """
    out = K.clone()
    out[..., 0, 2] = K[..., 0, 2] - torch.as_tensor(left, dtype=K.dtype, device=K.device)
    out[..., 1, 2] = K[..., 1, 2] - torch.as_tensor(top, dtype=K.dtype, device=K.device)
    return out


def intrinsics_pyramid(
    K: torch.Tensor, num_scales: int, size: tuple[int, int] | None = None
) -> list[torch.Tensor]:
    """Intrinsics of each level of an image pyramid that halves the resolution per level.

    Level ``s`` is the image resized by ``2**-s`` (level 0 is ``K`` itself, cloned). With ``size=(H, W)`` the
    factor uses the integer sizes ``H // 2**s`` and ``W // 2**s`` that ``interpolate(scale_factor=0.5)``
    (repeated) or ``F.avg_pool2d(x, 2)`` produce, so odd sizes stay exact; without it the factor is ``2**-s``.

    Args:
        K: ``(B, 3, 3)`` pixels at level 0.
        num_scales: number of levels, >= 1.
        size: ``(H, W)`` of level 0, or ``None``.

    Returns:
        ``num_scales`` tensors ``(B, 3, 3)``, level 0 first.

    Example:
        >>> K = torch.tensor([[[100.0, 0, 31.5], [0, 100.0, 15.5], [0, 0, 1]]])
        >>> [k[0, 0, 2].item() for k in intrinsics_pyramid(K, 3)]
        [31.5, 15.5, 7.5]
    """
    check_shape(K, "B 3 3", name="K")
    if num_scales < 1:
        raise ValueError(f"intrinsics_pyramid: num_scales must be >= 1, got {num_scales}")
    levels = [K.clone()]
    for s in range(1, num_scales):
        if size is None:
            sx = sy = 0.5**s
        else:
            height, width = size
            new_h, new_w = height // 2**s, width // 2**s
            if new_h < 1 or new_w < 1:
                raise ValueError(f"intrinsics_pyramid: size {size} is too small for {num_scales} scales")
            sx, sy = new_w / width, new_h / height
        levels.append(scale_intrinsics(K, sx, sy))
    return levels


def pixel_grid(
    height: int,
    width: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Pixel-centre coordinates ``(u, v)`` of an ``H x W`` image.

    Args:
        height: ``H``.
        width: ``W``.
        device: device of the result.
        dtype: dtype of the result.

    Returns:
        ``(2, H, W)``: channel 0 is the column ``u`` (0 .. W-1), channel 1 the row ``v`` (0 .. H-1).

    Example:
        >>> pixel_grid(2, 3)[:, 1, 2]
        tensor([2., 1.])
    """
    if height < 1 or width < 1:
        raise ValueError(f"pixel_grid: height and width must be >= 1, got {height}x{width}")
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([u, v])


def backproject(depth: torch.Tensor, K_inv: torch.Tensor) -> torch.Tensor:
    """Camera-frame 3D point of every pixel: ``X = depth * K_inv @ (u, v, 1)``.

    ``depth`` is the ``z`` coordinate (not the ray length), in metres or any unit; the points are in that unit.

    Args:
        depth: ``(B, 1, H, W)`` depth ``z`` per pixel.
        K_inv: ``(B, 3, 3)`` inverse intrinsics (pixels at the depth's resolution), one camera per sample.

    Returns:
        ``(B, 3, H, W)`` points ``(x, y, z)`` in the camera frame.

    Example:
        >>> K = torch.tensor([[[2.0, 0, 1], [0, 2.0, 1], [0, 0, 1]]])
        >>> backproject(torch.full((1, 1, 3, 3), 4.0), torch.linalg.inv(K))[0, :, 0, 2]
        tensor([ 2., -2.,  4.])
    """
    sizes = check_shape(depth, "B 1 H W", name="depth")
    check_shape(K_inv, "B 3 3", sizes, name="K_inv")
    grid = pixel_grid(depth.shape[-2], depth.shape[-1], device=depth.device, dtype=depth.dtype)
    homogeneous = torch.cat([grid, torch.ones_like(grid[:1])])  # (3, H, W)
    rays = torch.einsum("bij,jhw->bihw", K_inv.to(depth.dtype), homogeneous)
    return rays * depth


def project(points: torch.Tensor, K: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates of camera-frame points: ``(u, v) = (K @ X)[:2] / z``.

    Points with ``z <= eps`` (on or behind the camera) are divided by ``eps`` instead, so the result stays finite
    (far outside the image) and differentiable; ``valid`` flags them as False. Unlike monodepth2's ``z + eps``,
    a point behind the camera never lands back inside the image mirrored.

    Args:
        points: ``(B, 3, H, W)`` camera-frame points ``(x, y, z)``.
        K: ``(B, 3, 3)`` intrinsics in pixels of the image projected onto.
        eps: smallest depth treated as in front of the camera.

    Returns:
        ``pixels`` ``(B, 2, H, W)`` as ``(u, v)`` and ``valid`` ``(B, 1, H, W)`` bool, ``z > eps``.

    Example:
        >>> K = torch.tensor([[[2.0, 0, 1], [0, 2.0, 1], [0, 0, 1]]])
        >>> pixels, valid = project(torch.tensor([2.0, -2.0, 4.0]).view(1, 3, 1, 1), K)
        >>> pixels.flatten().tolist(), valid.item()
        ([2.0, 0.0], True)
    """
    sizes = check_shape(points, "B 3 H W", name="points")
    check_shape(K, "B 3 3", sizes, name="K")
    camera = torch.einsum("bij,bjhw->bihw", K.to(points.dtype), points)
    z = camera[:, 2:3]
    valid = z > eps
    pixels = camera[:, :2] / torch.where(valid, z, torch.full_like(z, eps))
    return pixels, valid


def normalize_pixels(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sampling grid for :func:`torch.nn.functional.grid_sample` with ``align_corners=False``.

    Maps ``u`` to ``(2u + 1) / W - 1`` (and ``v`` with ``H``): pixel centre 0 becomes ``-1 + 1/W``, the image edge
    ``-0.5`` becomes ``-1``, matching the half-pixel convention of this module and of ``interpolate``.
    kornia's ``normalize_pixel_coordinates`` is the ``align_corners=True`` mapping instead.

    Args:
        pixels: ``(B, 2, H', W')`` pixel coordinates ``(u, v)`` in an image of size ``height x width``.
        height: ``H`` of the image that will be sampled.
        width: ``W`` of the image that will be sampled.

    Returns:
        ``(B, H', W', 2)`` normalised ``(x, y)``, channels last as ``grid_sample`` wants.

    Example:
        >>> normalize_pixels(torch.tensor([-0.5, 7.5]).view(1, 2, 1, 1), 8, 4).flatten()
        tensor([-1.,  1.])
    """
    check_shape(pixels, "B 2 H W", name="pixels")
    if height < 1 or width < 1:
        raise ValueError(f"normalize_pixels: height and width must be >= 1, got {height}x{width}")
    scale = pixels.new_tensor([2.0 / width, 2.0 / height]).view(1, 2, 1, 1)
    return ((pixels + 0.5) * scale - 1.0).permute(0, 2, 3, 1)
