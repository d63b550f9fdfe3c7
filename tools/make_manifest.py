#!/usr/bin/env python
"""Write a manifest (CSV or JSONL) for a folder of videos.

Usage:
    python tools/make_manifest.py ROOT --out m.csv [--labels-from-folders] [--probe] [--backend auto]

- Scans ROOT recursively for video files (sorted). Paths are written relative to the manifest's folder.
- ``--labels-from-folders``: UCF101 style ``ROOT/<class>/...``; the label is the index of the top-level folder
  in the sorted class names, and a ``class`` column holds the name.
- ``--probe``: open every video with :func:`stssl.data.readers.open_video` and record ``num_frames`` and ``fps``;
  unreadable videos are skipped and listed on stderr (exit status 0 unless nothing was readable).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stssl.data.sources import VIDEO_EXTENSIONS, VideoRecord, write_manifest


def scan(root: Path, labels_from_folders: bool) -> tuple[list[VideoRecord], list[dict]]:
    """Video records under ``root`` and their extra columns (``class`` when labelled)."""
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    records, extra = [], []
    if labels_from_folders:
        paths = [p for p in paths if len(p.relative_to(root).parts) > 1]
        classes = sorted({p.relative_to(root).parts[0] for p in paths})
        index = {c: i for i, c in enumerate(classes)}
        for p in paths:
            name = p.relative_to(root).parts[0]
            records.append(VideoRecord(str(p), label=index[name]))
            extra.append({"class": name})
    else:
        records = [VideoRecord(str(p)) for p in paths]
        extra = [{} for _ in paths]
    return records, extra


def probe(records: list[VideoRecord], extra: list[dict], backend: str) -> tuple[list, list, list[tuple[str, str]]]:
    """Keep the readable records, adding ``num_frames`` and ``fps``; returns ``(records, extra, failures)``."""
    from stssl.data.readers import VideoReadError, open_video

    kept, kept_extra, failed = [], [], []
    for rec, ex in zip(records, extra, strict=True):
        try:
            reader = open_video(rec.path, backend=backend)
            try:
                n, fps = len(reader), float(reader.fps)
            finally:
                reader.close()
            if n <= 0:
                raise VideoReadError(f"{rec.path}: no frames")
        except VideoReadError as err:
            failed.append((rec.path, str(err)))
            continue
        rec.num_frames = n
        kept.append(rec)
        kept_extra.append({**ex, "fps": round(fps, 6)})
    return kept, kept_extra, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder to scan (recursively) for video files")
    parser.add_argument("--out", type=Path, required=True, help="manifest to write: .csv or .jsonl")
    parser.add_argument("--labels-from-folders", action="store_true", help="label = sorted index of ROOT/<class>")
    parser.add_argument("--probe", action="store_true", help="open every video: record num_frames/fps, skip bad")
    parser.add_argument("--backend", default="auto", help="reader backend for --probe")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"{args.root}: not a folder")
    if args.out.suffix.lower() not in (".csv", ".jsonl"):
        parser.error(f"--out {args.out}: use a .csv or .jsonl file")
    records, extra = scan(args.root, args.labels_from_folders)
    if not records:
        print(f"{args.root}: no video files ({', '.join(VIDEO_EXTENSIONS)}) found", file=sys.stderr)
        return 1
    if args.probe:
        records, extra, failed = probe(records, extra, args.backend)
        for path, why in failed:
            print(f"skipped unreadable video {path}: {why}", file=sys.stderr)
        if not records:
            print(f"{args.root}: no readable videos", file=sys.stderr)
            return 1
    write_manifest(records, args.out, extra)
    print(f"wrote {len(records)} videos to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
