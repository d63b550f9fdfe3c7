"""Inverse warping of a source frame into a target view, given target depth, relative pose and intrinsics.

For every target pixel ``p_t`` with depth ``z``: ``X_t = z K_inv @ p_t`` (:func:`~stssl.geometry.camera.backproject`),
``X_s = src_from_tgt @ X_t`` (:func:`~stssl.geometry.pose.transform_points`),
``p_s = K_src @ X_s / z_s`` (:func:`~stssl.geometry.camera.project`), and the source image is sampled bilinearly at
``p_s`` (:func:`torch.nn.functional.grid_sample`, ``align_corners=False``, the half-pixel convention of
:mod:`stssl.geometry.camera`). This is kornia's ``warp_frame_depth`` with per-sample source intrinsics, a source
image of its own resolution and a validity mask. Depth and poses share a unit (metres).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stssl.checks import check_shape
from stssl.geometry.camera import backproject, normalize_pixels, project
from stssl.geometry.pose import transform_points

__all__ = ["PADDING_MODES", "reprojection_grid", "warp_frame"]

PADDING_MODES = ("border", "zeros", "reflection")


def reprojection_grid(
    depth_tgt: torch.Tensor,
    src_from_tgt: torch.Tensor,
    K: torch.Tensor,
    K_src: torch.Tensor | None = None,
    src_size: tuple[int, int] | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each target pixel lands in the source image, as a ``grid_sample`` grid, and whether it is valid.

    Args:
        depth_tgt: ``(B, 1, H, W)`` depth ``z`` of the target view.
        src_from_tgt: ``(B, 4, 4)`` maps target-camera points to the source camera.
        K: ``(B, 3, 3)`` target intrinsics, pixels at ``H x W`` (may differ per sample).
        K_src: ``(B, 3, 3)`` source intrinsics in pixels of the source image; ``None`` means ``K``.
        src_size: ``(H_s, W_s)`` of the source image; ``None`` means ``(H, W)``.
        eps: smallest source depth counted as in front of the source camera.

    Returns:
        ``grid`` ``(B, H, W, 2)`` for ``grid_sample(..., align_corners=False)`` and ``valid`` ``(B, 1, H, W)``
        bool: the point is in front of the source camera and projects inside the source image
        (``-0.5 <= u <= W_s - 0.5``, same for ``v``).

    Example:
        >>> K = torch.tensor([[[4.0, 0, 1.5], [0, 4.0, 1.5], [0, 0, 1]]])
        >>> grid, valid = reprojection_grid(torch.ones(1, 1, 4, 4), torch.eye(4)[None], K)
        >>> grid[0, 0, :, 0].tolist(), bool(valid.all())
        ([-0.75, -0.25, 0.25, 0.75], True)
    """
    sizes = check_shape(depth_tgt, "B 1 H W", name="depth_tgt")
    check_shape(src_from_tgt, "B 4 4", sizes, name="src_from_tgt")
    check_shape(K, "B 3 3", sizes, name="K")
    if K_src is None:
        K_src = K
    else:
        check_shape(K_src, "B 3 3", sizes, name="K_src")
    height, width = src_size if src_size is not None else (depth_tgt.shape[-2], depth_tgt.shape[-1])
    # inv in float64 is cheap for (B, 3, 3) and keeps the back-projection exact for float32 depths.
    K_inv = torch.linalg.inv(K.to(torch.float64)).to(depth_tgt.dtype)
    points_tgt = backproject(depth_tgt, K_inv)
    points_src = transform_points(src_from_tgt, points_tgt)
    pixels, in_front = project(points_src, K_src, eps)
    grid = normalize_pixels(pixels, height, width)
    inside = (grid.abs() <= 1.0).all(dim=-1).unsqueeze(1)
    return grid, in_front & inside


def warp_frame(
    image_src: torch.Tensor,
    depth_tgt: torch.Tensor,
    src_from_tgt: torch.Tensor,
    K: torch.Tensor,
    K_src: torch.Tensor | None = None,
    padding_mode: str = "border",
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthesise the target view from a source image (inverse warping with bilinear sampling).

    Args:
        image_src: ``(B, C, H_s, W_s)`` source image. ``H_s x W_s`` must equal the depth's ``H x W`` unless
            ``K_src`` is given (then ``K_src`` must be in the source's pixels).
        depth_tgt: ``(B, 1, H, W)`` depth ``z`` of the target view (metres).
        src_from_tgt: ``(B, 4, 4)`` maps target-camera points to the source camera (metres).
        K: ``(B, 3, 3)`` target intrinsics at ``H x W``; a batch may mix cameras.
        K_src: ``(B, 3, 3)`` source intrinsics, or ``None`` for the same camera (``K``).
        padding_mode: ``"border"`` (monodepth2), ``"zeros"`` or ``"reflection"``, for samples outside the source.
        eps: smallest source depth counted as in front of the source camera.

    Returns:
        ``image_src_in_tgt`` ``(B, C, H, W)`` and ``valid`` ``(B, 1, H, W)`` bool (see :func:`reprojection_grid`).

    Example:
        >>> K = torch.tensor([[[4.0, 0, 1.5], [0, 4.0, 1.5], [0, 0, 1]]])
        >>> image = torch.rand(1, 3, 4, 4)
        >>> warped, valid = warp_frame(image, torch.rand(1, 1, 4, 4) + 1, torch.eye(4)[None], K)
        >>> torch.allclose(warped, image, atol=1e-6), bool(valid.all())
        (True, True)
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"warp_frame: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    sizes = check_shape(depth_tgt, "B 1 H W", name="depth_tgt")
    check_shape(image_src, "B C H_s W_s", {k: v for k, v in sizes.items() if k == "B"}, name="image_src")
    src_size = (image_src.shape[-2], image_src.shape[-1])
    tgt_size = (depth_tgt.shape[-2], depth_tgt.shape[-1])
    if K_src is None and src_size != tgt_size:
        raise ValueError(
            f"warp_frame: image_src is {src_size[0]}x{src_size[1]} but depth_tgt is {tgt_size[0]}x{tgt_size[1]}; "
            "pass K_src (intrinsics at the source resolution) to warp between resolutions"
        )
    grid, valid = reprojection_grid(depth_tgt, src_from_tgt, K, K_src, src_size, eps)
    warped = F.grid_sample(
        image_src, grid.to(image_src.dtype), mode="bilinear", padding_mode=padding_mode, align_corners=False
    )
    return warped, valid
