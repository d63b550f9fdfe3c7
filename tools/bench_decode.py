"""Decode benchmark: clips/s and frames/s per installed reader backend, raw and through ClipDataset.

For each backend (each in its own subprocess, so peak RSS is per backend):

- dataset: ``ClipDataset`` (random clips of ``T`` frames) + ``DataLoader`` with 0, 1 and 2 workers;
- raw: ``open_video`` once, then ``read`` the *same* clips the 0-worker dataset served.

Usage::

    python tools/bench_decode.py                       # renders a 320x240 H.264 video (g=48, bf=2)
    python tools/bench_decode.py --video my.mp4 --clips 200 --json bench.json

``--json`` writes ``{backend: {"raw_clips_per_s", "raw_frames_per_s", "dataset_clips_per_s": {"0","1","2"},
"peak_rss_mb"}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def render_video(path: Path, frames: int = 300, size: tuple[int, int] = (240, 320), fps: int = 25) -> None:
    """Render a textured, moving H.264 MP4 (long GOP with B-frames) with PyAV."""
    import av

    h, w = size
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, size=(h * 2, w * 2, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"g": "48", "bf": "2", "crf": "20"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            dy, dx = (3 * i) % h, (5 * i) % w
            frame = texture[dy : dy + h, dx : dx + w].copy()
            frame[:, :, 0] = (frame[:, :, 0].astype(np.int32) + 2 * i).clip(0, 255)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def bench_dataset(video: str, backend: str, clip_len: int, clips: int, workers: int) -> tuple[float, list[list[int]]]:
    """Clips/s through ClipDataset + DataLoader, and the frame indices served (in order)."""
    import torch

    from stssl.data.dataset import ClipDataset
    from stssl.data.sources import VideoRecord

    dataset = ClipDataset([VideoRecord(video)], clip_len=clip_len, mode="random", clips_per_video=clips,
                          backend=backend, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, shuffle=False)
    served: list[list[int]] = []
    start = time.perf_counter()
    for sample in loader:
        served.append(sample["frame_indices"].tolist())
    elapsed = time.perf_counter() - start
    return clips / elapsed, served


def bench_raw(video: str, backend: str, clip_indices: list[list[int]]) -> float:
    """Clips/s reading ``clip_indices`` with one reader, opened inside the timed region like the dataset's (opening
    costs a demux scan, and torchcodec's exact mode scans the file too; leaving it out flatters raw)."""
    from stssl.data.readers import open_video

    start = time.perf_counter()
    reader = open_video(video, backend=backend)
    for indices in clip_indices:
        reader.read(indices)
    elapsed = time.perf_counter() - start
    reader.close()
    return len(clip_indices) / elapsed


def run_one(video: str, backend: str, clip_len: int, clips: int) -> dict[str, object]:
    """All measurements for one backend (call in a fresh process for a per-backend peak RSS)."""
    dataset_rates: dict[str, float] = {}
    served: list[list[int]] = []
    for workers in (0, 1, 2):
        rate, clips_served = bench_dataset(video, backend, clip_len, clips, workers)
        dataset_rates[str(workers)] = rate
        if workers == 0:
            served = clips_served
    raw = bench_raw(video, backend, served)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "raw_clips_per_s": raw,
        "raw_frames_per_s": raw * clip_len,
        "dataset_clips_per_s": dataset_rates,
        "dataset0_over_raw": dataset_rates["0"] / raw,
        "peak_rss_mb": peak_kb / 1024.0,
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", help="an H.264 video (default: render a 320x240, 300-frame one)")
    parser.add_argument("--backends", nargs="*", help="default: every installed video backend")
    parser.add_argument("--clip-len", type=int, default=8)
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one backend, print JSON
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.video, args.one, args.clip_len, args.clips)))
        return {}

    from stssl.data.readers import available_backends

    video = args.video
    if video is None:
        video = os.path.join(tempfile.mkdtemp(prefix="stssl_bench_"), "bench.mp4")
        render_video(Path(video))
    backends = args.backends or [b for b in available_backends() if b != "frames"]
    results: dict[str, dict[str, object]] = {}
    for backend in backends:
        out = subprocess.run(
            [sys.executable, __file__, "--video", video, "--one", backend, "--clip-len", str(args.clip_len),
             "--clips", str(args.clips)],
            capture_output=True, text=True, check=False,
        )
        if out.returncode != 0:
            print(f"{backend}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        results[backend] = json.loads(out.stdout.strip().splitlines()[-1])
    header = f"{'backend':<11} {'raw clip/s':>10} {'raw frm/s':>10} {'ds w0':>8} {'ds w1':>8} {'ds w2':>8} " \
             f"{'w0/raw':>7} {'peakMB':>7}"
    print(f"video: {video}, clips of T={args.clip_len}, {args.clips} clips per run")
    print(header)
    for backend, r in results.items():
        ds = r["dataset_clips_per_s"]
        assert isinstance(ds, dict)
        print(f"{backend:<11} {r['raw_clips_per_s']:>10.1f} {r['raw_frames_per_s']:>10.1f} {ds['0']:>8.1f} "
              f"{ds['1']:>8.1f} {ds['2']:>8.1f} {r['dataset0_over_raw']:>7.2f} {r['peak_rss_mb']:>7.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
