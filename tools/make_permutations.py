#!/usr/bin/env python
"""Write a jigsaw permutation set chosen by maximal average Hamming distance, with its statistics.

Usage:
    python tools/make_permutations.py --num 1000 [--num-tiles 9] [--seed 0] --out perms_1000.npy

- The set is :func:`stssl.tasks.jigsaw.max_hamming_permutations` ``(num, num_tiles, seed)``: Noroozi & Favaro's
  greedy selection, ``(num, num_tiles)`` int64, one permutation per row.
- ``--out x.npy`` writes the array with :func:`numpy.save` and its statistics next to it as ``x.json``;
  ``--out x.json`` writes one JSON object ``{"permutations": [[...], ...], "stats": {...}}``.
- The statistics (also printed as JSON on stdout): ``num``, ``num_tiles``, ``seed``, ``avg_hamming`` and
  ``min_hamming`` over all pairs of rows, and ``seconds`` spent choosing the set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from stssl.tasks.jigsaw import hamming_stats, max_hamming_permutations


def build(num: int, num_tiles: int, seed: int) -> tuple[np.ndarray, dict]:
    """The permutation set and its statistics."""
    t0 = time.perf_counter()
    perms = max_hamming_permutations(num, num_tiles, seed)
    seconds = time.perf_counter() - t0
    avg, low = hamming_stats(perms) if num >= 2 else (float("nan"), 0)
    stats = {
        "num": num,
        "num_tiles": num_tiles,
        "seed": seed,
        "avg_hamming": round(avg, 4),
        "min_hamming": low,
        "seconds": round(seconds, 3),
    }
    return perms.numpy(), stats


def write(perms: np.ndarray, stats: dict, out: Path) -> list[Path]:
    """Write the set to ``out`` (``.npy`` plus a ``.json`` sidecar, or one ``.json``); return the files written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, perms)
        sidecar = out.with_suffix(".json")
        sidecar.write_text(json.dumps(stats, indent=2) + "\n")
        return [out, sidecar]
    if out.suffix == ".json":
        out.write_text(json.dumps({"permutations": perms.tolist(), "stats": stats}) + "\n")
        return [out]
    raise ValueError(f"make_permutations: --out must end in .npy or .json, got {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=100, help="permutations in the set (classes of the task)")
    parser.add_argument("--num-tiles", type=int, default=9, help="tiles per puzzle (grid * grid)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first, random permutation")
    parser.add_argument("--out", type=Path, required=True, help="output file, .npy (+ .json stats) or .json")
    args = parser.parse_args(argv)
    if args.out.suffix not in (".npy", ".json"):
        parser.error(f"--out must end in .npy or .json, got {args.out}")
    try:
        perms, stats = build(args.num, args.num_tiles, args.seed)
    except ValueError as err:
        parser.error(str(err))
    files = write(perms, stats, args.out)
    print(json.dumps({**stats, "files": [str(f) for f in files]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
