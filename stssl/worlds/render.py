"""Ray-casting building blocks shared by the procedural worlds (torch, CPU, float32).

Camera rays use the OpenCV convention: ``x`` right, ``y`` down, ``z`` forward; pixel centres sit at integer
coordinates. A ray direction is scaled so that its camera-frame ``z`` is 1, hence the ray parameter ``t`` of a
hit *is* its z-depth.

Anti-aliasing: :func:`sample_directions` casts rays on a grid twice as fine as the image, ``(2H + 1, 2W + 1)``
samples at half-pixel steps starting at ``-0.5``; the sample at ``(2i + 1, 2j + 1)`` is the centre of pixel
``(i, j)``. Colour is resolved with a 3x3 tent filter (:func:`resolve_colour`) while depth, labels and normals
come from the exact centre rays (:func:`centre_samples`).

Textures are functions of world or surface coordinates (hashed value noise), so a surface point has the same
albedo in every frame.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "kitti_like_intrinsics",
    "sample_directions",
    "centre_samples",
    "resolve_colour",
    "hash01",
    "value_noise2",
    "value_noise3",
    "fbm2",
    "fbm3",
    "smoothstep",
    "soft_step",
    "pose_from_axes",
    "box_rects",
    "intersect_boxes",
    "intersect_spheres",
    "coco_boxes",
]


def kitti_like_intrinsics(height: int, width: int) -> np.ndarray:
    """Pinhole intrinsics with KITTI's field of view as normalised by monodepth2.

    ``fx = 0.58 W``, ``fy = 1.92 H``, principal point at the image centre ``((W - 1) / 2, (H - 1) / 2)``.

    Returns:
        ``(3, 3)`` float64 intrinsics in pixels.

    Example:
        >>> float(kitti_like_intrinsics(96, 320)[0, 0])
        185.6
    """
    return np.array(
        [[0.58 * width, 0.0, (width - 1) / 2], [0.0, 1.92 * height, (height - 1) / 2], [0.0, 0.0, 1.0]],
        dtype=np.float64,
    )


def sample_directions(K: np.ndarray | torch.Tensor, height: int, width: int, antialias: bool = True) -> torch.Tensor:
    """Camera-frame ray directions (``z = 1``) on the sample grid.

    Args:
        K: ``(3, 3)`` intrinsics in pixels.
        height: image height ``H``.
        width: image width ``W``.
        antialias: cast ``(2H + 1, 2W + 1)`` half-pixel-spaced samples; else ``(H, W)`` pixel centres.

    Returns:
        float32 ``(Hs, Ws, 3)`` directions.

    Example:
        >>> d = sample_directions(kitti_like_intrinsics(4, 6), 4, 6)
        >>> tuple(d.shape), float(d[..., 2].min())
        ((9, 13, 3), 1.0)
    """
    Kt = torch.as_tensor(np.asarray(K), dtype=torch.float64)
    if antialias:
        v = torch.arange(2 * height + 1, dtype=torch.float64) / 2 - 0.5
        u = torch.arange(2 * width + 1, dtype=torch.float64) / 2 - 0.5
    else:
        v = torch.arange(height, dtype=torch.float64)
        u = torch.arange(width, dtype=torch.float64)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    pix = torch.stack([uu, vv, torch.ones_like(uu)], dim=-1)
    dirs = pix @ torch.linalg.inv(Kt).T
    dirs = dirs / dirs[..., 2:3]
    return dirs.to(torch.float32)


def centre_samples(x: torch.Tensor, antialias: bool = True) -> torch.Tensor:
    """The pixel-centre samples ``(H, W, ...)`` of a sample-grid tensor ``(Hs, Ws, ...)``."""
    return x[1::2, 1::2] if antialias else x


def resolve_colour(colour: torch.Tensor, antialias: bool = True) -> torch.Tensor:
    """Filter sample colours ``(Hs, Ws, 3)`` in ``[0, 1]`` to uint8 pixels ``(H, W, 3)`` (3x3 tent filter)."""
    if antialias:
        k1 = torch.tensor([0.25, 0.5, 0.25], dtype=colour.dtype)
        kernel = (k1[:, None] * k1[None, :]).expand(3, 1, 3, 3)
        colour = F.conv2d(colour.permute(2, 0, 1)[None], kernel, stride=2, groups=3)[0].permute(1, 2, 0)
    return (colour.clamp(0, 1) * 255 + 0.5).to(torch.uint8)


def smoothstep(edge0: float, edge1: float, x: torch.Tensor) -> torch.Tensor:
    """Hermite step from 0 (``x <= edge0``) to 1 (``x >= edge1``); soft edges keep textures alias-free."""
    t = ((x - edge0) / (edge1 - edge0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def soft_step(edge: float | torch.Tensor, x: torch.Tensor, width: float | torch.Tensor) -> torch.Tensor:
    """A step at ``edge`` blurred over ``+-width`` (pass at least the pixel footprint to avoid aliasing)."""
    return smoothstep(0.0, 1.0, (x - edge) / (2 * width) + 0.5)


def hash01(ix: torch.Tensor, iy: torch.Tensor, iz: torch.Tensor | None, seed: int | torch.Tensor) -> torch.Tensor:
    """Deterministic integer-lattice hash to float32 in ``[0, 1)`` (no global RNG state)."""
    h = ix * 374761393 + iy * 668265263 + (seed % 1000003) * 1013904223
    if iz is not None:
        h = h + iz * 1442695041
    h = h & 0x7FFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0x7FFFFFFF
    h = ((h ^ (h >> 16)) * 668265263) & 0x7FFFFFFF
    h = h ^ (h >> 15)
    return (h & 0xFFFFFF).to(torch.float32) / float(1 << 24)


def value_noise2(x: torch.Tensor, y: torch.Tensor, seed: int | torch.Tensor) -> torch.Tensor:
    """Smooth 2D value noise in ``[0, 1]`` with unit lattice spacing."""
    fx, fy = torch.floor(x), torch.floor(y)
    tx, ty = x - fx, y - fy
    tx, ty = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
    ix, iy = fx.to(torch.int64), fy.to(torch.int64)
    a = hash01(ix, iy, None, seed)
    b = hash01(ix + 1, iy, None, seed)
    c = hash01(ix, iy + 1, None, seed)
    d = hash01(ix + 1, iy + 1, None, seed)
    return torch.lerp(torch.lerp(a, b, tx), torch.lerp(c, d, tx), ty)


def value_noise3(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, seed: int) -> torch.Tensor:
    """Smooth 3D value noise in ``[0, 1]`` with unit lattice spacing."""
    fx, fy, fz = torch.floor(x), torch.floor(y), torch.floor(z)
    tx, ty, tz = x - fx, y - fy, z - fz
    tx, ty, tz = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty), tz * tz * (3 - 2 * tz)
    ix, iy, iz = fx.to(torch.int64), fy.to(torch.int64), fz.to(torch.int64)
    out = []
    for dz in (0, 1):
        c00 = hash01(ix, iy, iz + dz, seed)
        c10 = hash01(ix + 1, iy, iz + dz, seed)
        c01 = hash01(ix, iy + 1, iz + dz, seed)
        c11 = hash01(ix + 1, iy + 1, iz + dz, seed)
        out.append(torch.lerp(torch.lerp(c00, c10, tx), torch.lerp(c01, c11, tx), ty))
    return torch.lerp(out[0], out[1], tz)


def fbm2(
    x: torch.Tensor, y: torch.Tensor, seed: int | torch.Tensor, octaves: int = 3, footprint: torch.Tensor | None = None
) -> torch.Tensor:
    """Fractal sum of :func:`value_noise2` octaves (frequency x2, amplitude x0.5), in ``[0, 1]``.

    ``footprint`` (lattice units per pixel, per point) fades octaves towards their mean 0.5 before they alias
    (a mip-map for procedural noise): distant or grazing surfaces stay smooth instead of sparkling.
    """
    total, amp, norm = torch.zeros_like(x), 1.0, 0.0
    for o in range(octaves):
        s = float(2**o)
        w = amp if footprint is None else amp * (1 - smoothstep(0.2, 0.45, footprint * s))
        total = total + w * value_noise2(x * s, y * s, seed + 7919 * o) + (amp - w) * 0.5
        norm += amp
        amp *= 0.5
    return total / norm


def fbm3(
    x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, seed: int, octaves: int = 3, footprint: torch.Tensor | None = None
) -> torch.Tensor:
    """Fractal sum of :func:`value_noise3` octaves, in ``[0, 1]`` (``footprint`` as in :func:`fbm2`)."""
    total, amp, norm = torch.zeros_like(x), 1.0, 0.0
    for o in range(octaves):
        s = float(2**o)
        w = amp if footprint is None else amp * (1 - smoothstep(0.2, 0.45, footprint * s))
        total = total + w * value_noise3(x * s, y * s, z * s, seed + 7919 * o) + (amp - w) * 0.5
        norm += amp
        amp *= 0.5
    return total / norm


def pose_from_axes(right: np.ndarray, down: np.ndarray, forward: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``world_from_camera`` ``(4, 4)`` float64 from the camera's axes and centre in world coordinates."""
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = right, down, forward, centre
    return T


def box_rects(
    lo: torch.Tensor, hi: torch.Tensor, camera_from_world: torch.Tensor, K: torch.Tensor, hs: int, ws: int,
    antialias: bool, near: float = 0.05, far: float = math.inf,
) -> list[tuple[int, int, int, int, int]]:
    """Sample-grid rectangles that can see each axis-aligned box (a conservative screen-space cull).

    Args:
        lo: ``(M, 3)`` box minimum corners (world).
        hi: ``(M, 3)`` box maximum corners.
        camera_from_world: ``(4, 4)``.
        K: ``(3, 3)`` pixels.
        hs: sample-grid height.
        ws: sample-grid width.
        antialias: whether the sample grid is the half-pixel grid of :func:`sample_directions`.
        near: boxes wholly nearer than this (in z) are skipped; boxes straddling it get the full grid.
        far: boxes wholly beyond this z are skipped.

    Returns:
        ``(box_index, row0, row1, col0, col1)`` per visible box (half-open ranges), nearest box first
        (by the smallest camera z of its corners), so :func:`intersect_boxes` can skip occluded boxes.
    """
    sel = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=torch.bool)
    corners = torch.where(sel[None], hi[:, None], lo[:, None])  # (M, 8, 3)
    cam = corners @ camera_from_world[:3, :3].T + camera_from_world[:3, 3]
    z = cam[..., 2]
    zc = z.clamp_min(1e-6)
    u = K[0, 0] * cam[..., 0] / zc + K[0, 2]
    v = K[1, 1] * cam[..., 1] / zc + K[1, 2]
    to_grid = 2.0 if antialias else 1.0
    off = 0.5 if antialias else 0.0
    c0 = torch.floor((u.amin(1) + off) * to_grid).to(torch.int64) - 1
    c1 = torch.ceil((u.amax(1) + off) * to_grid).to(torch.int64) + 2
    r0 = torch.floor((v.amin(1) + off) * to_grid).to(torch.int64) - 1
    r1 = torch.ceil((v.amax(1) + off) * to_grid).to(torch.int64) + 2
    straddle = (z.amin(1) < near) & (z.amax(1) >= near)
    out = []
    for m in torch.argsort(z.amin(1)).tolist():
        if float(z[m].max()) < near or float(z[m].min()) > far:
            continue
        if bool(straddle[m]):
            out.append((m, 0, hs, 0, ws))
            continue
        a, b = max(int(r0[m]), 0), min(int(r1[m]), hs)
        c, d = max(int(c0[m]), 0), min(int(c1[m]), ws)
        if a < b and c < d:
            out.append((m, a, b, c, d))
    return out


def intersect_boxes(
    origin: torch.Tensor, dirs: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
    rects: list[tuple[int, int, int, int, int]], t_best: torch.Tensor, id_best: torch.Tensor,
    eps: float = 1e-4,
) -> None:
    """Z-buffer the nearest entry into axis-aligned boxes (slab method), in place.

    Args:
        origin: ``(3,)`` common ray origin (world).
        dirs: ``(Hs, Ws, 3)`` world ray directions.
        lo: ``(M, 3)`` box minima.
        hi: ``(M, 3)`` box maxima.
        rects: from :func:`box_rects`; only rays inside a box's rectangle are tested against it.
        t_best: ``(Hs, Ws)`` ray parameters of the nearest hits so far (``inf`` for none), updated.
        id_best: ``(Hs, Ws)`` int64 index of the nearest surface so far, set to the box index where nearer.
    """
    zmin = _box_zmin(lo, hi, origin, dirs) if rects else None
    inv_all = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    for m, a, b, c, d in rects:
        tb = t_best[a:b, c:d]
        if zmin is not None and float(tb.max()) < float(zmin[m]):  # wholly hidden behind nearer surfaces
            continue
        inv = inv_all[a:b, c:d]
        t0 = (lo[m] - origin) * inv
        t1 = (hi[m] - origin) * inv
        tmin = torch.minimum(t0, t1).amax(-1)
        tmax = torch.maximum(t0, t1).amin(-1)
        better = (tmax >= tmin) & (tmin > eps) & (tmin < tb)
        t_best[a:b, c:d] = torch.where(better, tmin, tb)
        ib = id_best[a:b, c:d]
        id_best[a:b, c:d] = torch.where(better, torch.full_like(ib, m), ib)


def _box_zmin(lo: torch.Tensor, hi: torch.Tensor, origin: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Smallest ray parameter (camera z) any point of each box can have: a lower bound for occlusion culls.

    The optical axis is the direction of the ray with unit z; its world direction is recovered from the
    directions grid (``z = 1`` rays all share the same component along the axis).
    """
    # World optical axis: the normal of the plane z_cam = 1 that every direction lies on.
    d = dirs.reshape(-1, 3)
    a, b, c = d[0], d[d.shape[0] // 2 + 1], d[-1]
    axis = torch.linalg.cross(b - a, c - a)
    axis = axis / axis.norm()
    if torch.dot(axis, a) < 0:
        axis = -axis
    axis = axis / torch.dot(axis, a)  # scale so that dot(axis, dir) = 1 for every ray: dot(p - o, axis) = z
    sel = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=torch.bool)
    corners = torch.where(sel[None], hi[:, None], lo[:, None])
    return ((corners - origin) @ axis).amin(1)


def intersect_spheres(
    origin: torch.Tensor, dirs: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest front-face hit of rays from ``origin`` (outside every sphere) with spheres.

    Args:
        origin: ``(3,)``.
        dirs: ``(N, 3)`` directions (any length).
        centres: ``(M, 3)``.
        radii: ``(M,)``.

    Returns:
        ``t`` ``(N,)`` (``inf`` where missed) and the sphere index ``(N,)`` int64 (``-1`` where missed).
    """
    n = dirs.shape[0]
    if centres.shape[0] == 0:
        return torch.full((n,), math.inf), torch.full((n,), -1, dtype=torch.int64)
    oc = origin - centres  # (M, 3)
    a = (dirs * dirs).sum(-1, keepdim=True)  # (N, 1)
    b = 2 * dirs @ oc.T  # (N, M)
    c = (oc * oc).sum(-1) - radii**2  # (M,)
    disc = b * b - 4 * a * c
    t = (-b - disc.clamp_min(0).sqrt()) / (2 * a)
    t = torch.where((disc >= 0) & (t > 0), t, torch.full_like(t, math.inf))
    t_min, idx = t.min(dim=1)
    return t_min, torch.where(torch.isfinite(t_min), idx, torch.full_like(idx, -1))


def coco_boxes(
    instances: torch.Tensor, instance_category: dict[int, int], categories: list[str], min_area: int = 4,
    extra: dict[int, dict] | None = None,
) -> dict:
    """COCO detection ground truth from per-frame instance-id maps (boxes enclose the visible pixels).

    Args:
        instances: int ``(T, H, W)`` instance ids, 0 = none; ids are stable across frames.
        instance_category: instance id -> COCO category id (1-based index into ``categories``).
        categories: category names.
        min_area: instances with fewer visible pixels in a frame get no box there.
        extra: optional per-instance fields copied into each annotation (e.g. ``{"moving": True}``).

    Returns:
        ``{"images", "annotations", "categories"}``; ``bbox`` is ``[x, y, w, h]`` in pixels with ``x, y`` the
        top-left edge of the top-left visible pixel; each annotation carries ``instance_id``.
    """
    T, H, W = instances.shape
    images = [{"id": t, "frame_index": t, "width": W, "height": H, "file_name": f"{t:06d}"} for t in range(T)]
    annotations: list[dict] = []
    for t in range(T):
        frame = instances[t]
        for iid in torch.unique(frame).tolist():
            if iid == 0:
                continue
            mask = frame == iid
            area = int(mask.sum())
            if area < min_area:
                continue
            rows = torch.nonzero(mask.any(1)).flatten()
            cols = torch.nonzero(mask.any(0)).flatten()
            x0, x1, y0, y1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
            ann = {
                "id": len(annotations) + 1,
                "image_id": t,
                "category_id": int(instance_category[iid]),
                "instance_id": int(iid),
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": float(area),
                "iscrowd": 0,
            }
            ann.update((extra or {}).get(iid, {}))
            annotations.append(ann)
    cats = [{"id": i + 1, "name": name} for i, name in enumerate(categories)]
    return {"images": images, "annotations": annotations, "categories": cats}
