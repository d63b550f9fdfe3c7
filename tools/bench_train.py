#!/usr/bin/env python
"""Training-step throughput and peak memory per (encoder, task, resolution), JSON out.

Each configuration runs in a fresh subprocess so its peak RSS is its own. Inputs are random tensors of the
shape the task needs (decoding is measured by tools/bench_decode.py), so this isolates model + loss + backward
+ optimizer step.

    python tools/bench_train.py --json .bench/train.json
    python tools/bench_train.py --configs vcop:r3d_tiny:64x192 depth_motion:resnet18_2d_tiny:64x192 --steps 10
    python tools/bench_train.py --matrix --json .bench/matrix.json   # every CPU preset x every temporal task, 64x64

``--matrix`` pairs every CPU preset (:data:`stssl.encoders.CPU_PRESETS`) with every task at 64x64 (depth + motion
only with the per-frame encoders, masked modelling only with the ViTs: the other pairs are not defined).

Output: ``{"<task>:<encoder>:<H>x<W>": {"steps_per_s": x, "clips_per_s": y, "peak_rss_mb": z,
"batch_size": b, "frames": t, "device": "cpu", "threads": n}, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# The encoders a task is defined for (others: every encoder).
TASK_ENCODERS = {
    "depth_motion": ("resnet18_2d_tiny", "resnet50_2d_tiny"),
    "mae": ("vit_micro",),
}


def matrix_configs(size: str = "64x64") -> list[str]:
    """``task:encoder:size`` for every CPU preset x task pair that is defined."""
    from stssl.encoders import CPU_PRESETS
    from stssl.tasks import TASKS

    return [
        f"{task}:{encoder}:{size}"
        for task in sorted(TASKS)
        for encoder in CPU_PRESETS
        if encoder in TASK_ENCODERS.get(task, CPU_PRESETS)
    ]


DEFAULT_CONFIGS = [
    "vcop:r3d_tiny:64x192",
    "vcop:r3d_tiny:112x112",
    "vcop:r2plus1d_tiny:64x192",
    "depth_motion:resnet18_2d_tiny:64x192",
    "depth_motion:resnet18_2d_tiny:128x416",
]


def run_one(config: str, steps: int, warmup: int, batch_size: int, device: str) -> dict:
    import torch

    from stssl.encoders import build_encoder
    from stssl.tasks import TASKS

    task_name, encoder_name, size = config.split(":")
    height, width = (int(v) for v in size.split("x"))
    if task_name not in TASKS:
        raise SystemExit(f"unknown task {task_name!r}; choose from {sorted(TASKS)}")
    torch.manual_seed(0)
    dev = torch.device(device)
    encoder = build_encoder(encoder_name).to(dev)
    task = TASKS[task_name]()
    task.build(encoder.spec)
    task.to(dev)
    frames = max(task.requires.min_frames, encoder.spec.min_frames, 2)
    batch = {"video": torch.rand(batch_size, 3, frames, height, width, device=dev)}
    if task.requires.intrinsics:
        K = torch.tensor([[0.58 * width, 0, width / 2 - 0.5], [0, 1.92 * height, height / 2 - 0.5], [0, 0, 1]])
        batch["K"] = K.expand(batch_size, 3, 3).contiguous().to(dev)
    params = list(encoder.parameters()) + list(task.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        out = task(batch, encoder)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        task.on_optimizer_step(encoder)  # e.g. an EMA target's update

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    result = {
        "steps_per_s": steps / elapsed,
        "clips_per_s": steps * batch_size / elapsed,
        "batch_size": batch_size,
        "frames": frames,
        "device": dev.type,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if dev.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="task:encoder:HxW entries")
    parser.add_argument("--matrix", action="store_true", help="every CPU preset x task at --matrix-size")
    parser.add_argument("--matrix-size", default="64x64")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._one:  # child process: one configuration, JSON on stdout
        print(json.dumps(run_one(args._one, args.steps, args.warmup, args.batch_size, args.device)))
        return 0
    configs = matrix_configs(args.matrix_size) if args.matrix else args.configs
    results: dict[str, dict] = {}
    print(f"{'config':<42s} {'steps/s':>8s} {'clips/s':>8s} {'peak RSS MB':>12s}")
    for config in configs:
        cmd = [sys.executable, __file__, "--_one", config, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch-size", str(args.batch_size), "--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            results[config] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
            print(f"{config:<42s} error: {results[config]['error']}")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results[config] = res
        print(f"{config:<42s} {res['steps_per_s']:8.2f} {res['clips_per_s']:8.2f} {res['peak_rss_mb']:12.0f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
