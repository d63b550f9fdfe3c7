"""A procedural endoscopy world: a camera advancing and rolling inside a bending, vessel-textured tube.

World frame: metres. The tube's centreline is the integral of a smooth random direction field (yaw and pitch
are sums of sinusoids of arc length), so it bends gently in 3D; the tube has a constant radius and is ray cast
exactly as a chain of short cylinders joined by mitre planes (equal-radius cylinders meet the bisecting plane
in the same ellipse, so the wall is continuous). Polyps are spheres centred on the wall.

The only light is a point light at the camera: Lambertian shading with inverse-square falloff plus a Blinn-Phong
specular term (highlights move with the camera, as in real endoscopy), then gamma. The albedo (mucosa with a
network of vessels from ridged 3D noise) is a function of world coordinates, so it is the same in every frame;
the shading is not, which is the realistic difficulty for photometric losses in endoscopy.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from stssl.worlds.render import (
    centre_samples,
    coco_boxes,
    fbm3,
    intersect_spheres,
    pose_from_axes,
    resolve_colour,
    sample_directions,
    smoothstep,
    soft_step,
    value_noise3,
)
from stssl.worlds.scene_io import Scene

__all__ = ["ENDOSCOPY_CLASSES", "render_endoscopy"]

ENDOSCOPY_CLASSES = ["void", "mucosa", "vessel", "polyp"]
VOID, MUCOSA, VESSEL, POLYP = range(4)


def _direction_field(s: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Unit tangent ``(N, 3)`` of the centreline at arc lengths ``s`` (y down; yaw about y, pitch down)."""
    yaw = sum(a * np.sin(2 * math.pi * s / lam + ph) for a, lam, ph in params[0])
    pitch = sum(a * np.sin(2 * math.pi * s / lam + ph) for a, lam, ph in params[1])
    return np.stack([np.cos(pitch) * np.sin(yaw), np.sin(pitch), np.cos(pitch) * np.cos(yaw)], -1)


def _camera_axes(forward: np.ndarray, roll: float) -> tuple[np.ndarray, np.ndarray]:
    right = np.cross([0.0, 1.0, 0.0], forward)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = math.cos(roll), math.sin(roll)
    return c * right + s * down, -s * right + c * down


def _tube_hits(
    origin: torch.Tensor, d: torch.Tensor, verts: torch.Tensor, radius: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest wall hit of rays ``d`` ``(N, 3)`` from ``origin`` inside the mitred tube through ``verts``.

    Returns:
        ``t`` ``(N,)`` (``inf`` where missed) and the segment index ``(N,)``.
    """
    a = verts[:-1]
    seg = verts[1:] - a
    u = seg / seg.norm(dim=-1, keepdim=True)  # (S, 3)
    # Joint planes: normal = bisector of neighbouring segment directions; the chain's ends use the segment's.
    m = torch.cat([u[:1], u[:-1] + u[1:], u[-1:]])
    m = m / m.norm(dim=-1, keepdim=True)  # (S + 1, 3)
    oa = origin - a  # (S, 3)
    oau = (oa * u).sum(-1)  # (S,)
    du = d @ u.T  # (N, S)
    doa = d @ oa.T
    dd = (d * d).sum(-1, keepdim=True)
    qa = (dd - du * du).clamp_min(1e-12)
    qb = 2 * (doa - du * oau)
    qc = (oa * oa).sum(-1) - oau * oau - radius**2
    disc = (qb * qb - 4 * qa * qc).clamp_min(0).sqrt()
    ov = origin - verts  # (S + 1, 3)
    dm = d @ m.T  # (N, S + 1)
    ovm = (ov * m).sum(-1)  # (S + 1,)
    best = torch.full((d.shape[0],), math.inf)
    best_seg = torch.zeros(d.shape[0], dtype=torch.int64)
    for sign in (-1.0, 1.0):
        t = (-qb + sign * disc) / (2 * qa)
        side0 = ovm[:-1] + t * dm[:, :-1]  # >= 0 past the segment's start plane
        side1 = ovm[1:] + t * dm[:, 1:]  # < 0 before its end plane
        ok = (t > 1e-6) & (side0 >= 0) & (side1 < 0)
        t = torch.where(ok, t, torch.full_like(t, math.inf))
        tmin, idx = t.min(dim=1)
        better = tmin < best
        best = torch.where(better, tmin, best)
        best_seg = torch.where(better, idx, best_seg)
    return best, best_seg


def _albedo(
    p: torch.Tensor, seed: int, vessel_scale: float, fp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mucosa albedo ``(N, 3)`` and vessel mask ``(N,)`` at world points ``p`` (metres), footprints ``fp`` (m)."""
    q = p / vessel_scale
    fpl = fp / vessel_scale
    base = fbm3(q[:, 0] * 1.5, q[:, 1] * 1.5, q[:, 2] * 1.5, seed, octaves=3, footprint=fpl * 1.5)
    # Ridged noise: thin ridges where the noise crosses 0.5 -> a vessel-like network; edges blur with the
    # footprint and the finer network fades out before it aliases.
    v1 = 1 - (2 * value_noise3(q[:, 0], q[:, 1], q[:, 2], seed + 1) - 1).abs()
    v2 = 1 - (2 * value_noise3(q[:, 0] * 2.3, q[:, 1] * 2.3, q[:, 2] * 2.3, seed + 2) - 1).abs()
    ves1 = soft_step(0.82, v1, (2.5 * fpl).clamp_min(0.04)) * (1 - smoothstep(0.3, 0.8, fpl))
    ves2 = soft_step(0.9, v2, (5.0 * fpl).clamp_min(0.04)) * (1 - smoothstep(0.15, 0.4, fpl))
    vessel = torch.maximum(ves1, 0.7 * ves2)
    base = smoothstep(0.2, 0.8, base)
    mucosa = torch.stack([0.55 + 0.45 * base, 0.25 + 0.42 * base, 0.22 + 0.36 * base], -1)
    vessel_col = torch.tensor([0.50, 0.10, 0.12])
    hard = torch.maximum((v1 > 0.82).float(), (v2 > 0.9).float())
    return torch.lerp(mucosa, vessel_col.expand_as(mucosa), vessel[:, None]), hard


def render_endoscopy(
    frames: int = 100,
    height: int = 128,
    width: int = 128,
    seed: int = 0,
    *,
    fps: float = 30.0,
    speed: float = 0.06,
    radius: float = 0.02,
    focal: float = 0.5,
    roll_speed: float = 0.35,
    wobble: float = 0.15,
    bend: float = 0.5,
    polyps: int = 4,
    specular: float = 0.35,
    falloff: float = 2.0,
    shininess: float = 20.0,
    segment: float = 0.005,
    view_distance: float = 0.15,
    antialias: bool = True,
) -> Scene:
    """Render the endoscopy world.

    Args:
        frames: number of frames ``T``.
        height: image height ``H`` (pixels).
        width: image width ``W``.
        seed: the tube, polyps, textures and camera path are a deterministic function of the seed.
        fps: frame rate.
        speed: camera advance along the centreline, metres per second.
        radius: tube radius, metres.
        focal: ``fx = fy = focal * W`` (0.5: a 90 degree horizontal field of view).
        roll_speed: mean camera roll rate about the optical axis, radians per second (plus a sinusoid).
        wobble: lateral camera offset from the centreline, as a fraction of ``radius``.
        bend: amplitude (radians) of the centreline's yaw oscillation (pitch gets 0.6 of it).
        polyps: number of polyps (spheres on the wall) ahead of the camera.
        specular: strength of the specular highlight.
        falloff: exponent of the light's distance falloff (2: inverse square; 0: none).
        shininess: Blinn-Phong exponent.
        segment: length of the cylinders approximating the bent tube, metres.
        view_distance: walls beyond this arc length ahead of the camera are not rendered (they are black).
        antialias: 2x2 supersampling of colour with a tent filter (depth and labels use the centre rays).

    Returns:
        A :class:`~stssl.worlds.scene_io.Scene`: depth ``(T, H, W)`` (0 where nothing is hit), semantic over
        :data:`ENDOSCOPY_CLASSES`, COCO boxes of polyps.

    Example:
        >>> scene = render_endoscopy(frames=2, height=16, width=16, seed=0)
        >>> tuple(scene.depth.shape), bool((scene.depth[0, 8, 0] > 0).item())
        ((2, 16, 16), True)
    """
    if frames < 1 or height < 2 or width < 2:
        raise ValueError(f"render_endoscopy: need frames >= 1 and height, width >= 2, got {frames}, {height}x{width}")
    rng = np.random.default_rng(seed)
    lam = rng.uniform(0.12, 0.35, size=(2, 3))
    amp = bend * rng.uniform(0.3, 0.6, size=(2, 3)) * np.array([[1.0], [0.6]])
    amp[:, 0] /= 2  # keep the curvature radius well above the tube radius
    phase = rng.uniform(0, 2 * math.pi, size=(2, 3))
    params = np.stack([amp, lam, phase], -1)  # (2, 3, 3)
    s_cam_end = speed * (frames - 1) / fps
    s0, s1 = -0.05, s_cam_end + view_distance + 0.05
    fine_ds = segment / 6
    s_fine = np.arange(s0, s1 + fine_ds, fine_ds)
    tang = _direction_field(s_fine, params)
    centre_fine = np.concatenate([[np.zeros(3)], np.cumsum((tang[:-1] + tang[1:]) / 2 * fine_ds, axis=0)])
    centre_fine -= centre_fine[np.searchsorted(s_fine, 0.0)]
    verts_all = torch.tensor(centre_fine[::6], dtype=torch.float32)
    s_verts = s_fine[::6]

    def centre_at(s: float) -> np.ndarray:
        return np.array([np.interp(s, s_fine, centre_fine[:, k]) for k in range(3)])

    # Polyps: spheres centred on the wall ahead of the camera.
    p_centres, p_radii = [], []
    for _ in range(polyps):
        s = rng.uniform(0.03, s_cam_end + 0.1)
        f = _direction_field(np.array([s]), params)[0]
        r_axis, d_axis = _camera_axes(f, rng.uniform(0, 2 * math.pi))
        p_centres.append(centre_at(s) + r_axis * radius)
        p_radii.append(radius * rng.uniform(0.15, 0.3))
    sph_c = torch.tensor(np.array(p_centres).reshape(-1, 3), dtype=torch.float32)
    sph_r = torch.tensor(np.array(p_radii), dtype=torch.float32)

    K = np.array([[focal * width, 0, (width - 1) / 2], [0, focal * width, (height - 1) / 2], [0, 0, 1.0]])
    dirs_cam = sample_directions(K, height, width, antialias)
    hs, ws = dirs_cam.shape[:2]
    out_rgb = torch.zeros(frames, height, width, 3, dtype=torch.uint8)
    out_depth = torch.zeros(frames, height, width)
    out_sem = torch.zeros(frames, height, width, dtype=torch.uint8)
    out_inst = torch.zeros(frames, height, width, dtype=torch.int64)
    poses = np.zeros((frames, 4, 4))
    w1, w2 = rng.uniform(0.4, 0.9, size=2) * 2 * math.pi
    roll0 = rng.uniform(0, 2 * math.pi)
    for t in range(frames):
        time = t / fps
        s = speed * time
        f = _direction_field(np.array([s]), params)[0]
        r0, d0 = _camera_axes(f, 0.0)
        offset = wobble * radius * (math.sin(w1 * time) * r0 + math.sin(w2 * time + 1.0) * d0)
        roll = roll0 + roll_speed * time + 0.3 * math.sin(0.7 * 2 * math.pi * time)
        right, down = _camera_axes(f, roll)
        poses[t] = pose_from_axes(right, down, f, centre_at(s) + offset)
        pose = torch.tensor(poses[t], dtype=torch.float32)
        origin = pose[:3, 3]
        d = (dirs_cam @ pose[:3, :3].T).reshape(-1, 3)
        lo_i = max(int(np.searchsorted(s_verts, s - 0.02)) - 1, 0)
        hi_i = min(int(np.searchsorted(s_verts, s + view_distance)) + 1, len(s_verts))
        verts = verts_all[lo_i:hi_i]
        t_wall, seg = _tube_hits(origin, d, verts, radius)
        t_sph, sph = intersect_spheres(origin, d, sph_c, sph_r)
        is_sph = t_sph < t_wall
        t_hit = torch.where(is_sph, t_sph, t_wall)
        hit = torch.isfinite(t_hit)
        p = origin + d * torch.where(hit, t_hit, torch.zeros(()))[:, None]
        # Normals: towards the axis for the wall, outward for polyps.
        a = verts[:-1][seg]
        u = verts[1:][seg] - a
        u = u / u.norm(dim=-1, keepdim=True)
        radial = (p - a) - ((p - a) * u).sum(-1, keepdim=True) * u
        n_wall = -radial / radial.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        n_sph = (p - sph_c[sph.clamp_min(0)]) if len(sph_r) else torch.zeros_like(p)
        n_sph = n_sph / n_sph.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        normal = torch.where(is_sph[:, None], n_sph, n_wall)
        to_light = origin - p
        dist = to_light.norm(dim=-1).clamp_min(1e-6)
        ndl = ((normal * to_light).sum(-1) / dist).clamp_min(0)
        fp = dist / (focal * width) / ndl.clamp_min(0.05)
        albedo, vessel = _albedo(p, seed, radius * 0.6, fp)
        polyp_col = torch.tensor([0.88, 0.55, 0.45]) * (0.8 + 0.3 * fbm3(p[:, 0] / (radius * 0.1), p[:, 1] / (radius * 0.1), p[:, 2] / (radius * 0.1), seed + 7))[:, None]
        albedo = torch.where(is_sph[:, None], polyp_col, albedo)
        atten = (radius / dist) ** falloff
        light = albedo * (ndl * atten)[:, None] + specular * (ndl**shininess * atten)[:, None]
        colour = torch.where(hit[:, None], light.clamp(0, 1) ** (1 / 2.2), torch.zeros(()))
        cls = torch.where(
            is_sph, torch.tensor(POLYP), torch.where(vessel > 0.5, torch.tensor(VESSEL), torch.tensor(MUCOSA))
        )
        cls = torch.where(hit, cls, torch.tensor(VOID))
        inst = torch.where(hit & is_sph, sph + 1, torch.zeros_like(sph))
        out_rgb[t] = resolve_colour(colour.reshape(hs, ws, 3), antialias)
        tc = centre_samples(t_hit.reshape(hs, ws), antialias)
        out_depth[t] = torch.where(torch.isfinite(tc), tc, torch.zeros(()))
        out_sem[t] = centre_samples(cls.reshape(hs, ws), antialias).to(torch.uint8)
        out_inst[t] = centre_samples(inst.reshape(hs, ws), antialias)

    boxes = coco_boxes(out_inst, {i + 1: 1 for i in range(polyps)}, ["polyp"])
    meta = {
        "world": "endoscopy", "seed": seed, "frames": frames, "height": height, "width": width, "fps": fps,
        "speed": speed, "radius": radius, "focal": focal, "roll_speed": roll_speed, "wobble": wobble,
        "bend": bend, "polyps": polyps, "specular": specular, "falloff": falloff, "shininess": shininess, "segment": segment,
        "view_distance": view_distance, "antialias": antialias,
    }
    return Scene(
        frames=out_rgb,
        K=torch.tensor(K),
        world_from_camera=torch.tensor(poses),
        depth=out_depth,
        semantic=out_sem,
        classes=list(ENDOSCOPY_CLASSES),
        boxes=boxes,
        fps=fps,
        meta=meta,
    )
