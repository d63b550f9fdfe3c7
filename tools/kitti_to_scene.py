#!/usr/bin/env python
"""Convert a KITTI raw drive into a stssl scene folder (velodyne ground-truth depth, OXTS camera poses).

    python tools/kitti_to_scene.py data/kitti_raw/2011_09_26/2011_09_26_drive_0002_sync --out scenes/kitti_0002
    stssl-train validate --config runs/version_0/config.yaml --ckpt_path runs/version_0/checkpoints/last.ckpt \\
        --data.val_sources='[scenes/kitti_0002]'

The calibration files (calib_cam_to_cam.txt, calib_velo_to_cam.txt, calib_imu_to_velo.txt) are read from the
drive's parent (date) folder; see :func:`stssl.data.kitti.kitti_drive_to_scene` for what is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("drive_dir", type=Path, help="<date>/<date>_drive_XXXX_sync")
    parser.add_argument("--out", type=Path, required=True, help="scene folder to write (replaced if it exists)")
    parser.add_argument("--camera", default="image_02", choices=["image_00", "image_01", "image_02", "image_03"])
    parser.add_argument("--max-frames", type=int, default=None, help="convert only the first N frames")
    parser.add_argument("--crf", type=int, default=18, help="H.264 quality of video.mp4 (lower = closer to the PNGs)")
    args = parser.parse_args(argv)
    if args.max_frames is not None and args.max_frames < 1:
        parser.error(f"--max-frames must be >= 1, got {args.max_frames}")

    import numpy as np

    from stssl.data.kitti import KittiFormatError, kitti_drive_to_scene
    from stssl.worlds.scene_io import read_depth, read_poses

    try:
        out = kitti_drive_to_scene(args.drive_dir, args.out, camera=args.camera, max_frames=args.max_frames,
                                   crf=args.crf)
    except KittiFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    depth, poses = read_depth(out), read_poses(out)
    meta = json.loads((out / "meta.json").read_text())
    valid = (depth > 0).reshape(len(depth), -1).sum(1)
    steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    summary = {
        "scene": str(out),
        "frames": int(len(depth)),
        "size_hw": list(depth.shape[1:]),
        "frames_without_velodyne": meta["frames_without_velodyne"],
        "valid_depth_pixels_per_frame": float(valid.mean()),
        "depth_range_m": [float(depth[depth > 0].min()), float(depth.max())] if valid.any() else None,
        "path_length_m": float(steps.sum()),
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
