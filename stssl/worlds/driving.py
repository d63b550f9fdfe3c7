"""A procedural driving world with exact ground truth (KITTI-like camera).

World frame: metres, ``x`` east, ``y`` down (gravity), ``z`` north; the ground is the plane ``y = 0``. Streets
run along the lines ``x = i * block`` and ``z = j * block`` (a Manhattan grid); each street has two 3.5 m lanes
(dashed centre line, solid edge lines) and parking strips, then 3 m sidewalks; inside each block stand box
buildings with windowed facades, with grass ("terrain") between them. Cars are pairs of boxes (body, cabin),
parked at the kerbs or driving in the oncoming lane. The camera (height 1.65 m, like KITTI's) drives in the
right lane at constant speed, going straight or turning at intersections along quarter-circle arcs.

Everything is ray cast analytically (ray/plane, ray/box slabs); textures are functions of world (or car-local)
coordinates, so static surfaces are photometrically consistent across frames. Lighting is Lambertian under a
fixed sun (view-independent). Moving cars break consistency, as in real driving; their annotations carry
``"moving": true``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from stssl.worlds.render import (
    box_rects,
    centre_samples,
    coco_boxes,
    fbm2,
    hash01,
    intersect_boxes,
    kitti_like_intrinsics,
    pose_from_axes,
    resolve_colour,
    sample_directions,
    smoothstep,
    soft_step,
    value_noise2,
)
from stssl.worlds.scene_io import Scene

__all__ = ["DRIVING_CLASSES", "render_driving"]

DRIVING_CLASSES = ["sky", "road", "lane_marking", "sidewalk", "terrain", "building", "car"]
SKY, ROAD, MARKING, SIDEWALK, TERRAIN, BUILDING, CAR = range(7)

ROAD_HALF = 7.0  # street centre to kerb, metres
SIDEWALK_WIDTH = 3.0
LANE = 1.75  # lane centre offset from the street centre
PARK = 5.3  # parked-car centre offset
CAM_HEIGHT = 1.65
CAR_L, CAR_W = 4.2, 1.8
BUILDING_COLOURS = np.array(
    [[0.72, 0.62, 0.52], [0.62, 0.38, 0.32], [0.78, 0.76, 0.70], [0.55, 0.58, 0.62], [0.80, 0.70, 0.50],
     [0.50, 0.45, 0.42], [0.70, 0.52, 0.45], [0.86, 0.84, 0.80]],
)
CAR_COLOURS = np.array(
    [[0.75, 0.1, 0.1], [0.1, 0.2, 0.6], [0.9, 0.9, 0.9], [0.15, 0.15, 0.15], [0.55, 0.57, 0.6], [0.1, 0.45, 0.2],
     [0.85, 0.65, 0.1], [0.45, 0.25, 0.15]],
)
SUN = np.array([0.45, -1.0, 0.3]) / np.linalg.norm([0.45, -1.0, 0.3])


@dataclass
class _Boxes:
    lo: list
    hi: list
    kind: list  # 0 building, 1 car body, 2 car cabin
    colour: list
    seed: list
    inst: list

    def add(self, lo, hi, kind, colour, seed, inst=0) -> None:
        self.lo.append(lo)
        self.hi.append(hi)
        self.kind.append(kind)
        self.colour.append(colour)
        self.seed.append(seed)
        self.inst.append(inst)

    def tensors(self) -> dict[str, torch.Tensor]:
        if not self.lo:
            return {
                "lo": torch.zeros(0, 3), "hi": torch.zeros(0, 3), "kind": torch.zeros(0, dtype=torch.int64),
                "colour": torch.zeros(0, 3), "seed": torch.zeros(0, dtype=torch.int64),
                "inst": torch.zeros(0, dtype=torch.int64),
            }
        return {
            "lo": torch.tensor(np.array(self.lo), dtype=torch.float32),
            "hi": torch.tensor(np.array(self.hi), dtype=torch.float32),
            "kind": torch.tensor(self.kind, dtype=torch.int64),
            "colour": torch.tensor(np.array(self.colour), dtype=torch.float32),
            "seed": torch.tensor(self.seed, dtype=torch.int64),
            "inst": torch.tensor(self.inst, dtype=torch.int64),
        }


def _dir(h: int) -> np.ndarray:
    """Unit (x, z) heading for grid direction h (0 north, 1 east, 2 south, 3 west)."""
    return np.array([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]][h % 4])


def _right(h: int) -> np.ndarray:
    return _dir(h + 1)


class _Route:
    """The camera path: straight lane segments joined by quarter-circle arcs, sampled by arc length."""

    def __init__(self, rng: np.random.Generator, length: float, block: float, turn_radius: float, turn_prob: float):
        h, node = 0, np.zeros(2)
        start = node + _right(h) * LANE + _dir(h) * block * 0.35
        verts = [start]
        self.edges: list[tuple[np.ndarray, int]] = []  # (start node, heading) of every traversed block
        total, last_turns = 0.0, [0, 0]
        while total < length + 3 * block:
            self.edges.append((node.copy(), h))
            node = node + _dir(h) * block
            total += block
            choices = [0, 1, -1]
            if last_turns[0] == last_turns[1] != 0:
                choices.remove(last_turns[1])
            turn = 0 if rng.random() > turn_prob else int(rng.choice([c for c in choices if c != 0]))
            last_turns = [last_turns[1], turn]
            if turn:
                h_out = (h + turn) % 4
                verts.append(node + _right(h) * LANE + _right(h_out) * LANE)
                h = h_out
        verts.append(node + _right(h) * LANE + _dir(h) * block * 0.5)
        self.nodes_visited = [e[0] for e in self.edges] + [node]
        # Primitives: ("line", p0, d, L) and ("arc", p0, d1, d2, r).
        self.prims: list[tuple] = []
        r = turn_radius
        p = verts[0]
        for i in range(1, len(verts)):
            d1 = (verts[i] - verts[i - 1]) / np.linalg.norm(verts[i] - verts[i - 1])
            if i < len(verts) - 1:
                d2 = (verts[i + 1] - verts[i]) / np.linalg.norm(verts[i + 1] - verts[i])
                end = verts[i] - d1 * r
                self.prims.append(("line", p, d1, float(np.linalg.norm(end - p))))
                self.prims.append(("arc", end, d1, d2, r))
                p = verts[i] + d2 * r
            else:
                self.prims.append(("line", p, d1, float(np.linalg.norm(verts[i] - p))))
        lengths = [pr[3] if pr[0] == "line" else pr[4] * math.pi / 2 for pr in self.prims]
        self.starts = np.concatenate([[0.0], np.cumsum(lengths)])

    def at(self, s: float) -> tuple[np.ndarray, np.ndarray]:
        """(x, z) position and unit heading at arc length ``s``."""
        i = int(np.clip(np.searchsorted(self.starts, s, side="right") - 1, 0, len(self.prims) - 1))
        a = s - self.starts[i]
        pr = self.prims[i]
        if pr[0] == "line":
            return pr[1] + pr[2] * a, pr[2]
        _, p0, d1, d2, r = pr
        phi = a / r
        centre = p0 + d2 * r
        pos = centre - d2 * r * math.cos(phi) + d1 * r * math.sin(phi)
        tangent = d2 * math.sin(phi) + d1 * math.cos(phi)
        return pos, tangent / np.linalg.norm(tangent)


def _car(boxes: _Boxes, centre_xz: np.ndarray, along_x: bool, colour: np.ndarray, inst: int, seed: int) -> None:
    hl, hw = CAR_L / 2, CAR_W / 2
    ext = np.array([hl, hw]) if along_x else np.array([hw, hl])
    cx, cz = centre_xz
    boxes.add([cx - ext[0], -1.0, cz - ext[1]], [cx + ext[0], -0.25, cz + ext[1]], 1, colour, seed, inst)
    cab = ext * np.array([0.55, 0.88]) if along_x else ext * np.array([0.88, 0.55])
    boxes.add([cx - cab[0], -1.45, cz - cab[1]], [cx + cab[0], -1.0, cz + cab[1]], 2, colour, seed, inst)


def _populate(rng_seed: int, route: _Route, block: float, parked_density: float):
    """Static buildings and parked cars around the route."""
    boxes = _Boxes([], [], [], [], [], [])
    blocks: set[tuple[int, int]] = set()
    for n in route.nodes_visited:
        a, b = int(round(n[0] / block)), int(round(n[1] / block))
        for i in range(a - 2, a + 2):
            for j in range(b - 2, b + 2):
                blocks.add((i, j))
    inst = 0
    car_inst_colour: dict[int, np.ndarray] = {}
    margin = ROAD_HALF + SIDEWALK_WIDTH
    for i, j in sorted(blocks):
        rng = np.random.default_rng([rng_seed, i + 10_000, j + 10_000])
        x0, z0 = i * block + margin, j * block + margin
        x1, z1 = (i + 1) * block - margin, (j + 1) * block - margin
        # Four sides: (fixed coordinate axis, inward sign) — buildings line the kerbs of each block.
        for side in range(4):
            along_x = side in (0, 1)  # sides facing streets along x (south / north edges)
            lo_a, hi_a = (x0, x1) if along_x else (z0, z1)
            pos = lo_a + (rng.uniform(0, 2) if side % 2 else 0.0)
            while pos < hi_a - 4:
                width = min(rng.uniform(7, 15), hi_a - pos)
                if rng.random() > 0.12:
                    setback, depth, height = rng.uniform(0, 1.5), rng.uniform(8, 12), rng.uniform(6, 24)
                    if side == 0:  # facade faces south (street z = j*block)
                        lo, hi = [pos, -height, z0 + setback], [pos + width, 0.0, z0 + setback + depth]
                    elif side == 1:
                        lo, hi = [pos, -height, z1 - setback - depth], [pos + width, 0.0, z1 - setback]
                    elif side == 2:
                        lo, hi = [x0 + setback, -height, pos], [x0 + setback + depth, 0.0, pos + width]
                    else:
                        lo, hi = [x1 - setback - depth, -height, pos], [x1 - setback, 0.0, pos + width]
                    colour = BUILDING_COLOURS[rng.integers(len(BUILDING_COLOURS))] * rng.uniform(0.85, 1.1)
                    boxes.add(lo, hi, 0, colour, int(rng.integers(1 << 20)))
                pos += width + rng.uniform(0.0, 1.0)
            # Parked cars along this side's kerb.
            pos = lo_a - SIDEWALK_WIDTH + 5.0
            while pos + CAR_L <= hi_a + SIDEWALK_WIDTH - 5.0:
                if rng.random() < parked_density:
                    inst += 1
                    colour = CAR_COLOURS[rng.integers(len(CAR_COLOURS))] * rng.uniform(0.8, 1.1)
                    car_inst_colour[inst] = colour
                    if side == 0:
                        centre = np.array([pos + CAR_L / 2, j * block + PARK])
                    elif side == 1:
                        centre = np.array([pos + CAR_L / 2, (j + 1) * block - PARK])
                    elif side == 2:
                        centre = np.array([i * block + PARK, pos + CAR_L / 2])
                    else:
                        centre = np.array([(i + 1) * block - PARK, pos + CAR_L / 2])
                    _car(boxes, centre, along_x, colour, inst, int(rng.integers(1 << 20)))
                pos += CAR_L + rng.uniform(1.0, 3.0)
    return boxes, inst


def _band(x: torch.Tensor, lo: float, hi: float, width: torch.Tensor) -> torch.Tensor:
    """1 inside ``[lo, hi]``, 0 outside, edges blurred over the footprint ``width`` (area-preserving-ish)."""
    return (soft_step(lo, x, width) - soft_step(hi, x, width)).clamp_min(0)


def _fade(freq: float, fp: torch.Tensor) -> torch.Tensor:
    """Weight of a detail of spatial frequency ``freq`` (1/m) at footprint ``fp`` (m/pixel): 0 before aliasing."""
    return 1 - smoothstep(0.2, 0.45, fp * freq)


def _ground(p: torch.Tensor, block: float, seed: int, fp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Albedo ``(N, 3)`` and class ``(N,)`` of ground points ``(N, 3)`` with pixel footprints ``fp`` (m)."""
    x, z = p[:, 0], p[:, 2]
    dx = x - block * torch.round(x / block)  # offset from the nearest street along z
    dz = z - block * torch.round(z / block)
    ax, az = dx.abs(), dz.abs()
    on_road_z = ax < ROAD_HALF  # within a street running along z
    on_road_x = az < ROAD_HALF
    road = on_road_z | on_road_x
    cross = on_road_z & on_road_x
    walk = ~road & ((ax < ROAD_HALF + SIDEWALK_WIDTH) | (az < ROAD_HALF + SIDEWALK_WIDTH))

    def markings(w: torch.Tensor) -> torch.Tensor:
        def lines(lat: torch.Tensor, lon: torch.Tensor) -> torch.Tensor:
            dash = _band(torch.remainder(lon, 6.0), 0.0, 3.0, w)
            centre = _band(lat, -0.08, 0.08, w) * dash
            return torch.maximum(centre, _band(lat, 6.22, 6.38, w))

        mark = torch.where(on_road_z & ~cross, lines(ax, z), torch.zeros_like(x))
        mark = torch.where(on_road_x & ~cross, lines(az, x), mark)
        stop_z = on_road_z & (ax < ROAD_HALF - 0.3) & (az > ROAD_HALF)
        stop_x = on_road_x & (az < ROAD_HALF - 0.3) & (ax > ROAD_HALF)
        mark = torch.where(stop_z, _band(az, ROAD_HALF + 0.2, ROAD_HALF + 0.6, w), mark)
        return torch.where(stop_x, _band(ax, ROAD_HALF + 0.2, ROAD_HALF + 0.6, w), mark)

    mark = markings(fp.clamp_min(0.02))
    n = fbm2(x * 1.7, z * 1.7, seed + 11, octaves=4, footprint=fp * 1.7)
    fine = 0.5 + (value_noise2(x * 9.0, z * 9.0, seed + 12) - 0.5) * _fade(9.0, fp)
    asphalt = (0.16 + 0.34 * n + 0.1 * fine)[:, None] * torch.tensor([1.0, 1.0, 1.05])
    paint = torch.tensor([0.92, 0.92, 0.88]) * (0.85 + 0.15 * n[:, None])
    road_col = torch.lerp(asphalt, paint, mark[:, None])
    wt = fp.clamp_min(0.01) / 0.6
    tile = _band(torch.remainder(x, 0.6) / 0.6, 0.05, 0.95, wt) * _band(torch.remainder(z, 0.6) / 0.6, 0.05, 0.95, wt)
    walk_col = (0.55 + 0.2 * fbm2(x * 2.5, z * 2.5, seed + 13, footprint=fp * 2.5))[:, None] * torch.tensor(
        [1.0, 0.97, 0.92]
    )
    walk_col = walk_col * (0.65 + 0.35 * tile[:, None])
    g = fbm2(x * 1.3, z * 1.3, seed + 14, octaves=4, footprint=fp * 1.3)
    grass = torch.stack([0.18 + 0.25 * g, 0.35 + 0.25 * g, 0.12 + 0.1 * g], -1)
    colour = torch.where(road[:, None], road_col, torch.where(walk[:, None], walk_col, grass))
    cls = torch.full_like(x, TERRAIN, dtype=torch.int64)
    cls[walk] = SIDEWALK
    cls[road] = ROAD
    cls[road & (markings(torch.full_like(fp, 1e-3)) > 0.5)] = MARKING
    return colour, cls


def _box_albedo(
    p: torch.Tensor, axis: torch.Tensor, b: dict[str, torch.Tensor], idx: torch.Tensor, fp: torch.Tensor
) -> torch.Tensor:
    """Albedo ``(N, 3)`` of points ``p`` on boxes ``idx`` hit on faces normal to ``axis`` (0 x, 1 y, 2 z)."""
    kind, colour, seed, lo = b["kind"][idx], b["colour"][idx], b["seed"][idx], b["lo"][idx]
    q = p - lo  # box-local coordinates (cars move with their boxes)
    u = torch.where(axis == 0, q[:, 2], q[:, 0])
    v = torch.where(axis == 1, q[:, 2], -p[:, 1])  # height above ground on vertical faces
    n = fbm2(u * 2.0, v * 2.0, seed, octaves=3, footprint=fp * 2.0)
    fine = 0.5 + (value_noise2(u * 7.0, v * 7.0, seed + 5) - 0.5) * _fade(7.0, fp)
    # Buildings: wall + window grid (per-building window spacing from the seed).
    wu = 2.6 + 1.2 * hash01(seed, seed, None, 3)
    cu, cv = u / wu, v / 3.2
    fu, fv = cu - torch.floor(cu), cv - torch.floor(cv)
    fpc = fp.clamp_min(0.01)
    win = _band(fu, 0.23, 0.77, fpc / wu) * _band(fv, 0.33, 0.85, fpc / 3.2)
    win = win * (v > 2.2).float() * (axis != 1).float()
    lit = hash01(torch.floor(cu).long(), torch.floor(cv).long(), seed, 17)
    glass = torch.stack([0.08 + 0.35 * lit * lit, 0.1 + 0.3 * lit * lit, 0.16 + 0.15 * lit], -1)
    ledge = _band(fv, -0.03, 0.04, fpc / 3.2) + _band(fv, 0.97, 1.03, fpc / 3.2)
    floor_line = 1 - 0.25 * ledge * (axis != 1).float()
    wall = colour * ((0.6 + 0.7 * n + 0.15 * fine) * floor_line)[:, None]
    building = torch.lerp(wall, glass, win[:, None])
    # Cars: painted body with noise; cabin sides are glass with pillars, cabin roof is paint.
    body = colour * (0.8 + 0.3 * n + 0.1 * fine)[:, None]
    length = torch.where(axis == 0, b["hi"][idx][:, 2] - lo[:, 2], b["hi"][idx][:, 0] - lo[:, 0])
    rel = u / length.clamp_min(1e-3)
    wr = fpc / length.clamp_min(1e-3)
    pillar = 1 - _band(rel, 0.11, 0.89, wr) * (1 - _band(rel, 0.475, 0.525, wr))
    cab_glass = torch.tensor([0.12, 0.14, 0.18]) * (0.7 + 0.6 * fine)[:, None]
    cabin = torch.where((axis == 1)[:, None], body, torch.lerp(cab_glass, body, pillar[:, None]))
    return torch.where((kind == 0)[:, None], building, torch.where((kind == 1)[:, None], body, cabin))


def _sky(d: torch.Tensor, seed: int) -> torch.Tensor:
    elev = (-d[:, 1] / d.norm(dim=-1)).clamp(0, 1)
    horizon, zenith = torch.tensor([0.78, 0.84, 0.9]), torch.tensor([0.35, 0.55, 0.86])
    base = torch.lerp(horizon, zenith, elev.sqrt()[:, None])
    k = 1.0 / (elev + 0.15)
    clouds = smoothstep(0.45, 0.8, fbm2(d[:, 0] / d.norm(dim=-1) * k * 3, d[:, 2] / d.norm(dim=-1) * k * 3, seed + 99))
    return torch.lerp(base, torch.tensor([0.95, 0.95, 0.97]), 0.7 * clouds[:, None])


def render_driving(
    frames: int = 100,
    height: int = 96,
    width: int = 320,
    seed: int = 0,
    *,
    fps: float = 10.0,
    speed: float = 10.0,
    block: float = 48.0,
    turn_prob: float = 0.5,
    turn_radius: float = 8.0,
    parked_density: float = 0.5,
    moving_cars: int = 3,
    moving_speed: float = 8.0,
    max_depth: float = 250.0,
    antialias: bool = True,
) -> Scene:
    """Render the driving world.

    Args:
        frames: number of frames ``T``.
        height: image height ``H`` (pixels).
        width: image width ``W``; KITTI-like intrinsics (``fx = 0.58 W``, ``fy = 1.92 H``).
        seed: the layout, route, colours and textures are a deterministic function of the seed.
        fps: frame rate of the sequence.
        speed: camera speed, metres per second (KITTI: about 10 m/s at 10 fps).
        block: street grid spacing, metres.
        turn_prob: probability of turning at an intersection.
        turn_radius: radius of the turning arcs, metres.
        parked_density: probability of a parked car in each kerb slot.
        moving_cars: oncoming cars per traversed street block.
        moving_speed: their speed, metres per second.
        max_depth: ground beyond this distance is treated as sky (depth 0).
        antialias: 2x2 supersampling of colour with a tent filter (depth and labels use the centre rays).

    Returns:
        A :class:`~stssl.worlds.scene_io.Scene` with frames ``(T, H, W, 3)``, depth ``(T, H, W)`` (0 = sky),
        semantic ``(T, H, W)`` over :data:`DRIVING_CLASSES` and COCO boxes of cars.

    Example:
        >>> scene = render_driving(frames=2, height=16, width=48, seed=1)
        >>> tuple(scene.frames.shape), scene.classes[int(scene.semantic[0, -1, 24])]
        ((2, 16, 48, 3), 'road')
    """
    if frames < 1 or height < 2 or width < 2:
        raise ValueError(f"render_driving: need frames >= 1 and height, width >= 2, got {frames}, {height}x{width}")
    rng = np.random.default_rng(seed)
    duration = frames / fps
    route = _Route(rng, speed * duration, block, turn_radius, turn_prob)
    static, n_inst = _populate(seed, route, block, parked_density)
    # Oncoming cars, one set per traversed block: (edge index, along0, colour, seed, instance id).
    movers = []
    for e in range(len(route.edges)):
        for _ in range(moving_cars):
            n_inst += 1
            along0 = rng.uniform(10.0, block - 10.0 + moving_speed * duration)
            colour = CAR_COLOURS[rng.integers(len(CAR_COLOURS))] * rng.uniform(0.8, 1.1)
            movers.append((e, along0, colour, int(rng.integers(1 << 20)), n_inst))
    instance_category = {i: 1 for i in range(1, n_inst + 1)}
    moving_extra = {m[4]: {"moving": True} for m in movers}
    extra = {i: moving_extra.get(i, {"moving": False}) for i in range(1, n_inst + 1)}

    K = kitti_like_intrinsics(height, width)
    Kt = torch.tensor(K, dtype=torch.float32)
    dirs_cam = sample_directions(K, height, width, antialias)
    hs, ws = dirs_cam.shape[:2]
    fx = float(K[0, 0])  # pixel footprint = distance / fx / cos(incidence)
    sb = static.tensors()
    sun = torch.tensor(SUN, dtype=torch.float32)

    out_rgb = torch.zeros(frames, height, width, 3, dtype=torch.uint8)
    out_depth = torch.zeros(frames, height, width)
    out_sem = torch.zeros(frames, height, width, dtype=torch.uint8)
    out_inst = torch.zeros(frames, height, width, dtype=torch.int64)
    poses = np.zeros((frames, 4, 4))
    for t in range(frames):
        pos, fwd = route.at(speed * t / fps)
        forward = np.array([fwd[0], 0.0, fwd[1]])
        right = np.array([fwd[1], 0.0, -fwd[0]])
        poses[t] = pose_from_axes(right, np.array([0.0, 1.0, 0.0]), forward, np.array([pos[0], -CAM_HEIGHT, pos[1]]))
        dyn = _Boxes([], [], [], [], [], [])
        for e, along0, colour, cseed, iid in movers:
            along = along0 - moving_speed * t / fps
            if 10.0 <= along <= block - 10.0:
                node, h = route.edges[e]
                centre = node + _right(h) * (-LANE) + _dir(h) * along
                _car(dyn, centre, h % 2 == 1, colour, iid, cseed)
        db = dyn.tensors()
        b = {k: torch.cat([sb[k], db[k]]) for k in sb}
        pose = torch.tensor(poses[t], dtype=torch.float32)
        origin = pose[:3, 3]
        dirs = dirs_cam @ pose[:3, :3].T
        camera_from_world = torch.linalg.inv(torch.tensor(poses[t])).to(torch.float32)
        rects = box_rects(b["lo"], b["hi"], camera_from_world, Kt, hs, ws, antialias, far=max_depth)
        t_box = torch.full((hs, ws), math.inf)
        id_box = torch.full((hs, ws), -1, dtype=torch.int64)
        intersect_boxes(origin, dirs, b["lo"], b["hi"], rects, t_box, id_box)
        dy = dirs[..., 1]
        t_gnd = torch.where(dy > 1e-6, -origin[1] / dy.clamp_min(1e-6), torch.full_like(dy, math.inf))
        t_gnd = torch.where(t_gnd <= max_depth, t_gnd, torch.full_like(t_gnd, math.inf))
        is_box = t_box < t_gnd
        t_hit = torch.where(is_box, t_box, t_gnd)
        is_gnd = ~is_box & torch.isfinite(t_gnd)

        flat_d = dirs.reshape(-1, 3)
        colour = torch.zeros(hs * ws, 3)
        cls = torch.full((hs * ws,), SKY, dtype=torch.int64)
        inst = torch.zeros(hs * ws, dtype=torch.int64)
        m_gnd = is_gnd.flatten()
        if m_gnd.any():
            d = flat_d[m_gnd]
            p = origin + d * t_hit.flatten()[m_gnd, None]
            dist = t_hit.flatten()[m_gnd] * d.norm(dim=-1)
            fp = dist / fx / (d[:, 1] / d.norm(dim=-1)).clamp_min(0.05)
            alb, c = _ground(p, block, seed, fp)
            colour[m_gnd] = alb * (0.45 + 0.55 * float(-sun[1]))
            cls[m_gnd] = c
        m_box = is_box.flatten()
        if m_box.any():
            d = flat_d[m_box]
            idx = id_box.flatten()[m_box]
            p = origin + d * t_hit.flatten()[m_box, None]
            inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
            t0, t1 = (b["lo"][idx] - origin) * inv, (b["hi"][idx] - origin) * inv
            axis = torch.minimum(t0, t1).argmax(-1)
            normal = torch.zeros_like(d)
            normal.scatter_(1, axis[:, None], -torch.sign(d.gather(1, axis[:, None])))
            dn = d.norm(dim=-1)
            fp = t_hit.flatten()[m_box] * dn / fx / ((normal * d).sum(-1).abs() / dn).clamp_min(0.05)
            alb = _box_albedo(p, axis, b, idx, fp)
            colour[m_box] = alb * (0.45 + 0.55 * (normal @ sun).clamp_min(0))[:, None]
            cls[m_box] = torch.where(b["kind"][idx] == 0, BUILDING, CAR).to(torch.int64)
            inst[m_box] = b["inst"][idx]
        m_sky = ~(m_gnd | m_box)
        if m_sky.any():
            colour[m_sky] = _sky(flat_d[m_sky], seed)
        out_rgb[t] = resolve_colour(colour.reshape(hs, ws, 3), antialias)
        out_depth[t] = torch.where(
            torch.isfinite(centre_samples(t_hit, antialias)), centre_samples(t_hit, antialias), torch.zeros(())
        )
        out_sem[t] = centre_samples(cls.reshape(hs, ws), antialias).to(torch.uint8)
        out_inst[t] = centre_samples(inst.reshape(hs, ws), antialias)

    categories = ["car"]
    boxes = coco_boxes(out_inst, instance_category, categories, extra=extra)
    meta = {
        "world": "driving", "seed": seed, "frames": frames, "height": height, "width": width, "fps": fps,
        "speed": speed, "block": block, "turn_prob": turn_prob, "turn_radius": turn_radius,
        "parked_density": parked_density, "moving_cars": moving_cars, "moving_speed": moving_speed,
        "max_depth": max_depth, "antialias": antialias, "camera_height": CAM_HEIGHT,
    }
    return Scene(
        frames=out_rgb,
        K=torch.tensor(K),
        world_from_camera=torch.tensor(poses),
        depth=out_depth,
        semantic=out_sem,
        classes=list(DRIVING_CLASSES),
        boxes=boxes,
        fps=fps,
        meta=meta,
    )
