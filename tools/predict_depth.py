#!/usr/bin/env python
"""Depth maps and camera poses for any video from a trained depth + ego-motion checkpoint.

    python tools/predict_depth.py runs/version_0/checkpoints/last.ckpt drive.mp4 --out out/ --size 64 192
    python tools/predict_depth.py CKPT scene_folder/video.mp4 --calib scene_folder --out out/

Writes ``depth.npz`` (+ colour-mapped PNGs), ``poses.txt`` (KITTI odometry format) and, with ``--calib``,
``calib.json`` at the model's resolution: see :func:`stssl.modules.predict_video`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", type=Path, help="a checkpoint written by stssl-train")
    parser.add_argument("video", type=Path, help="a video file or a folder of frames")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="resolution the model sees (default: the training run's data.size)")
    parser.add_argument("--calib", type=Path, default=None,
                        help="a folder with calib.json (or the file) holding K at the video's resolution")
    parser.add_argument("--frame-step", type=int, default=1)
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-png", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from stssl.modules import predict_video
    from stssl.worlds.scene_io import read_calib

    size = args.size
    if size is None:
        if not args.ckpt.is_file():
            parser.error(f"checkpoint {args.ckpt} not found")
        hparams = torch.load(args.ckpt, map_location="cpu", weights_only=False).get("datamodule_hyper_parameters", {})
        size = hparams.get("size")
        if size is None:
            parser.error(f"{args.ckpt} does not record data.size; pass --size H W")
    K = None
    if args.calib is not None:
        K = read_calib(args.calib.parent if args.calib.is_file() else args.calib)["K"]
    written = predict_video(args.ckpt, args.video, args.out, size=(int(size[0]), int(size[1])), K=K,
                            device=args.device, frame_step=args.frame_step, max_frames=args.max_frames,
                            png=not args.no_png)
    print(f"depth: {written['depth']}  poses: {written['poses']}  calib: {written['calib']}  "
          f"frames: {len(written['frame_indices'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
