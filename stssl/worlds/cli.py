"""``stssl-world {driving,endoscopy} --out DIR --frames N --height H --width W --seed S``: render a scene folder."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from stssl.worlds import WORLDS
from stssl.worlds.scene_io import write_scene

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stssl-world", description="Render a procedural world with exact ground truth.")
    p.add_argument("world", choices=sorted(WORLDS), help="which world to render")
    p.add_argument("--out", required=True, type=Path, help="scene folder to write (created)")
    p.add_argument("--frames", type=int, default=100, help="number of frames")
    p.add_argument("--height", type=int, default=None, help="image height (even; default: the world's)")
    p.add_argument("--width", type=int, default=None, help="image width (even; default: the world's)")
    p.add_argument("--seed", type=int, default=0, help="layout/texture/camera seed")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``stssl-world``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    sizes = {"driving": (96, 320), "endoscopy": (128, 128)}[args.world]
    height = args.height if args.height is not None else sizes[0]
    width = args.width if args.width is not None else sizes[1]
    if height % 2 or width % 2 or height < 2 or width < 2:
        parser.error(f"--height and --width must be even and >= 2 (H.264 yuv420p), got {height}x{width}")
    if args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")
    scene = WORLDS[args.world](frames=args.frames, height=height, width=width, seed=args.seed)
    out = write_scene(scene, args.out)
    valid = scene.depth[scene.depth > 0]
    counts = Counter(a["instance_id"] for a in scene.boxes["annotations"])
    print(f"wrote {out}")
    print(
        f"  {args.world}: {scene.num_frames} frames {height}x{width} @ {scene.fps:g} fps, seed {args.seed}; "
        f"depth {float(valid.min()) if len(valid) else 0:.3g}..{float(valid.max()) if len(valid) else 0:.3g} m; "
        f"classes {scene.classes}; {len(scene.boxes['annotations'])} boxes of {len(counts)} instances"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
