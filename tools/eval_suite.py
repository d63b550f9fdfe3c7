#!/usr/bin/env python
"""Every world evaluation of one encoder: probe, dense probe, segmentation, detection, label propagation; one table.

Runs ``stssl-eval`` once per protocol config (``configs/eval/<protocol>_world.yaml``) for a checkpoint's encoder
(``--checkpoint``) or a random init (``--encoder NAME --seed S``), each into ``<out>/<protocol>/``, and gives the
dense protocols the temporal context the encoder needs: the clip length of the dense probe, segmentation and
detection and the propagation context are ``--frames`` (default: 1 for a per-frame 2D encoder, the reference clip length of a video
ViT, 4 for other video encoders). Checkpoint runs use ``--baseline false`` unless ``--baseline`` is given (score
random inits once per architecture, as separate runs: ``--encoder NAME --seed S``). Then
``tools/eval_table.py`` over every run directory under the given roots prints the table.

    python tools/eval_suite.py --checkpoint runs/vcop/version_0/checkpoints/last.ckpt --out ev/vcop
    python tools/eval_suite.py --encoder r3d_tiny --seed 1 --out ev/scratch_r3d_s1
    python tools/eval_suite.py --encoder r3d_tiny --seed 2 --out ev/scratch_r3d_s2 --protocols segmentation
    python tools/eval_table.py ev/*/*          # the table over all of them (a row per seed, mean / max rows)

The issue-6 table in the README was made with the ``stssl-eval`` calls these commands print (the same configs and
overrides, run from a job queue) over the pretraining runs of ``tools/pretext_report.py``: segmentation at 10 % and
100 % labels, detection at 100 % (the ``--seg-fractions`` / ``--det-fractions`` defaults here).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ("probe", "dense_probe", "segmentation", "detection", "propagation")


def default_frames(encoder: object) -> int:
    """Frames of context for the dense protocols: 1 for a per-frame encoder, a ViT's reference clip length, else 4.

    Example:
        >>> from stssl.encoders import build_encoder
        >>> default_frames(build_encoder("resnet18_2d_tiny")), default_frames(build_encoder("r3d_tiny"))
        (1, 4)
        >>> default_frames(build_encoder("vit_micro"))
        8
    """
    from stssl.encoders import FrameEncoder2D, VideoViT

    if isinstance(encoder, FrameEncoder2D):
        return 1
    if isinstance(encoder, VideoViT):
        return int(encoder.ref_grid[0]) * int(encoder.tubelet_t)
    return 4


def commands(
    protocols: list[str],
    out: Path,
    frames: int,
    *,
    checkpoint: str | None = None,
    encoder: str | None = None,
    seed: int = 0,
    baseline: bool = False,
    seg_fractions: str = "[0.1, 1.0]",
    det_fractions: str = "[1.0]",
    extra: list[str] | None = None,
) -> dict[str, list[str]]:
    """``{protocol: stssl-eval argument list}`` (without the executable).

    Example:
        >>> cmds = commands(["segmentation"], Path("ev"), 4, checkpoint="a.ckpt")
        >>> cmds["segmentation"][:2], cmds["segmentation"][-4:]
        (['--config', 'configs/eval/segmentation_world.yaml'], ['--checkpoint', 'a.ckpt', '--baseline', 'false'])
    """
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"eval_suite: unknown protocols {unknown}; choose from {list(PROTOCOLS)}")
    if (checkpoint is None) == (encoder is None):
        raise ValueError("eval_suite: give exactly one of --checkpoint and --encoder")
    if frames < 1:
        raise ValueError(f"eval_suite: --frames must be >= 1, got {frames}")
    per_protocol = {
        "probe": ["--baseline_seeds=[]"],
        "dense_probe": ["--baseline_seeds=[]", f"--protocol.init_args.clip_len={frames}"],
        "segmentation": [f"--protocol.init_args.label_fractions={seg_fractions}", f"--protocol.init_args.clip_len={frames}"],
        "detection": [f"--protocol.init_args.label_fractions={det_fractions}", f"--protocol.init_args.clip_len={frames}"],
        "propagation": [f"--protocol.init_args.context={frames}"],
    }
    source = (["--encoder.name", str(encoder), "--seed", str(seed)] if encoder is not None else
              ["--checkpoint", str(checkpoint), "--baseline", "true" if baseline else "false"])
    return {
        p: ["--config", f"configs/eval/{p}_world.yaml", *per_protocol[p], "--output_dir", str(out / p),
            *(extra or []), *source]
        for p in protocols
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="an stssl-train checkpoint")
    source.add_argument("--encoder", help="a registered encoder name, scored from a random init")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init (--encoder)")
    parser.add_argument("--out", type=Path, required=True, help="one sub-folder per protocol goes here")
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    parser.add_argument("--frames", type=int, default=None, help="context frames (default: from the encoder)")
    parser.add_argument("--baseline", action="store_true", help="also score the checkpoint's random init")
    parser.add_argument("--seg-fractions", default="[0.1, 1.0]")
    parser.add_argument("--det-fractions", default="[1.0]")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("extra", nargs="*", help="more stssl-eval arguments for every protocol, after --")
    args = parser.parse_args(argv)
    frames = args.frames
    if frames is None:
        if args.checkpoint is not None:
            from stssl.eval.probe import load_encoder_from_checkpoint

            frames = default_frames(load_encoder_from_checkpoint(args.checkpoint))
        else:
            from stssl.encoders import build_encoder

            frames = default_frames(build_encoder(args.encoder))
    cmds = commands(args.protocols, args.out, frames, checkpoint=args.checkpoint, encoder=args.encoder,
                    seed=args.seed, baseline=args.baseline, seg_fractions=args.seg_fractions,
                    det_fractions=args.det_fractions, extra=args.extra)
    exe = [sys.executable, "-m", "stssl.eval.cli"]  # the stssl-eval entry point
    failed = []
    for protocol, cmd in cmds.items():
        print(shlex.join(["stssl-eval", *cmd]), flush=True)
        if args.dry_run:
            continue
        (args.out / protocol).mkdir(parents=True, exist_ok=True)
        start = time.time()
        proc = subprocess.run([*exe, *cmd], cwd=ROOT, capture_output=True, text=True)
        (args.out / protocol / "log.txt").write_text(proc.stdout + proc.stderr)
        print(f"  {protocol}: exit {proc.returncode}, {time.time() - start:.0f} s", flush=True)
        if proc.returncode != 0:
            failed.append(protocol)
            print(proc.stderr[-2000:], file=sys.stderr)
    if not args.dry_run:
        done = [args.out / p for p in cmds if p not in failed and (args.out / p / "metrics.json").is_file()]
        if done:
            subprocess.run([sys.executable, str(ROOT / "tools" / "eval_table.py"), *map(str, done)], cwd=ROOT)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
