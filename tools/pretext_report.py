#!/usr/bin/env python
"""Short CPU runs of the pretext-task configs on the built-in world: does each task learn? JSON out.

For every config, runs ``stssl-train fit`` for a few epochs on the default driving world, then reports each
task's validation metrics after the first and the last epoch, next to chance for the classification tasks.
Validation uses ``--val-clips`` clips in all from the config's held-out world sequences (``data.world_val_seeds``,
default one), spread evenly over them (labels are drawn afresh per clip).
With ``--probe``, the last checkpoint of each run is then scored by ``stssl-eval`` with that config (e.g. the
frozen kNN + linear ego-motion probe, checkpoint vs the same architecture from random init) into
``<run_dir>/probe/metrics.json``.

    python tools/pretext_report.py --json .bench/pretext.json
    python tools/pretext_report.py --configs configs/pretrain/arrow_tiny.yaml --epochs 3
    python tools/pretext_report.py --configs configs/pretrain/simclr_tiny.yaml --epochs 20 \
        --probe configs/eval/probe_world.yaml --json .bench/simclr.json

Output: ``{"<config stem>": {"wall_s": .., "run_dir": .., "tasks": {"<task>": {"chance": .., "first": {metric:
value}, "last": {metric: value}}}, "probe": {"wall_s": .., "<encoder>": {metric: value}}}}`` (``probe`` with
``--probe`` only; ``<encoder>`` is ``pretrained`` and, where the eval config asks for a baseline, ``scratch``;
``scratch_range`` holds the min / mean / max over random inits where the config sets ``baseline_seeds``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs" / "pretrain").glob("*_tiny.yaml"))

# Chance accuracy of a classification task from its (default or configured) number of classes.
CLASSES = {
    "arrow": lambda a: 2,
    "shuffle_learn": lambda a: 2,
    "speed": lambda a: len(a.get("speeds", (1, 2, 4))),
    "vcop": lambda a: math.factorial(a.get("num_clips", 3)),
    "opn": lambda a: math.factorial(a.get("num_frames", 4)) // 2,
}


def _tasks(config_path: Path) -> dict[str, dict]:
    """``{task name: init_args}`` of the config's tasks."""
    import yaml

    config = yaml.safe_load(config_path.read_text())
    tasks = {}
    for entry in config["model"]["tasks"]:
        cls = entry["class_path"].rsplit(".", 1)[-1]
        from stssl.tasks import TASKS

        name = entry.get("init_args", {}).get("name") or next(
            (n for n, c in TASKS.items() if c.__name__ == cls), cls
        )
        tasks[name] = entry.get("init_args", {}) or {}
    return tasks


def _rows(metrics_csv: Path, prefix: str) -> list[dict[str, float]]:
    """The CSV logger's rows that hold ``prefix`` metrics (epoch-level ones for ``train/``)."""
    rows = []
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            vals = {k: float(v) for k, v in row.items() if k.startswith(prefix) and v not in ("", None)
                    and not k.endswith("_step")}
            if vals and (prefix != "train/" or any(k.endswith("_epoch") for k in vals)):
                rows.append(vals)
    return rows


def _val_rows(metrics_csv: Path) -> list[dict[str, float]]:
    return _rows(metrics_csv, "val/")


def probe_run(run_dir: Path, eval_config: str, reuse: bool = False) -> dict:
    """Score ``run_dir``'s last checkpoint with ``stssl-eval --config eval_config``: ``{"wall_s": .., "<encoder>":
    {metric: value}}`` for every scored encoder (``{"error": ..}`` when the evaluation fails)."""
    out = run_dir / "probe"
    wall = float("nan")
    if not (reuse and (out / "metrics.json").is_file()):
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        cmd = [sys.executable, "-m", "stssl.eval.cli", "--config", str(ROOT / eval_config), "--checkpoint", str(ckpt),
               "--output_dir", str(out)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], "wall_s": round(wall, 1)}
    metrics = json.loads((out / "metrics.json").read_text())
    result: dict = {"wall_s": round(wall, 1)}
    for encoder in ("pretrained", "scratch"):
        if isinstance(metrics.get(encoder), dict):
            result[encoder] = {k: v for k, v in metrics[encoder].items() if isinstance(v, (int, float))}
    if "scratch_range" in metrics:  # with the eval config's baseline_seeds: min / mean / max over random inits
        result["scratch_range"] = metrics["scratch_range"]
    if "chance" in metrics:
        result["chance"] = metrics["chance"]
    return result


def val_clips_per_video(config_path: Path, val_clips: int) -> int:
    """Validation clips per video so that the config's validation videos (``data.world_val_seeds``, one scene each;
    the datamodule's default is one) hold about ``val_clips`` in all."""
    import yaml

    if val_clips < 1:
        raise ValueError(f"--val-clips must be >= 1, got {val_clips}")
    data = (yaml.safe_load(config_path.read_text()) or {}).get("data") or {}
    seeds = data.get("world_val_seeds", [1000])
    return max(1, math.ceil(val_clips / max(1, len(seeds))))


def run_config(config: str, epochs: int, val_clips: int, out_root: Path, extra: list[str], reuse: bool = False) -> dict:
    path = ROOT / config
    run_root = out_root / path.stem
    wall = float("nan")
    if not (reuse and list(run_root.glob("version_*/metrics.csv"))):
        cmd = [sys.executable, "-m", "stssl.cli", "fit", "--config", str(path), f"--trainer.max_epochs={epochs}",
               f"--trainer.default_root_dir={run_root}", f"--data.val_clips_per_video={val_clips_per_video(path, val_clips)}", *extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], "wall_s": wall}
    run_dir = max(run_root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    rows = _val_rows(run_dir / "metrics.csv")
    train_rows = _rows(run_dir / "metrics.csv", "train/")
    result: dict = {"wall_s": round(wall, 1), "run_dir": str(run_dir), "epochs": epochs, "tasks": {}}
    for name, args in _tasks(path).items():
        prefix = f"val/{name}/"
        entry: dict = {
            "first": {k[len(prefix):]: v for k, v in rows[0].items() if k.startswith(prefix)},
            "last": {k[len(prefix):]: v for k, v in rows[-1].items() if k.startswith(prefix)},
            "best_val_acc": max((r[prefix + "acc"] for r in rows if prefix + "acc" in r), default=None),
            "train_last": {k[len("train/" + name + "/"):-len("_epoch")]: v for k, v in train_rows[-1].items()
                           if k.startswith(f"train/{name}/") and k.endswith("_epoch")} if train_rows else {},
        }
        if name in CLASSES:
            entry["chance"] = 1.0 / CLASSES[name](args)
        result["tasks"][name] = entry
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--val-clips", type=int, default=64, help="validation clips in all, spread over the config's held-out sequences")
    parser.add_argument("--out-root", type=Path, default=Path(".bench/pretext_runs"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true", help="summarise existing runs under --out-root, run the rest")
    parser.add_argument("--probe", default=None, metavar="EVAL_CONFIG",
                        help="score each run's last checkpoint with stssl-eval and this config, e.g. "
                             "configs/eval/probe_world.yaml")
    parser.add_argument("extra", nargs="*", help="more stssl-train arguments, after --")
    args = parser.parse_args(argv)
    results = {}
    for config in args.configs:
        res = run_config(config, args.epochs, args.val_clips, args.out_root, args.extra, reuse=args.reuse)
        results[Path(config).stem] = res
        if "error" in res:
            print(f"{config}: error: {res['error']}", flush=True)
            continue
        for name, entry in res["tasks"].items():
            shown = {k: v for k, v in entry["last"].items() if k in ("acc", "loss", "psnr", "copy_psnr", "target_std")}
            first = {k: round(v, 3) for k, v in entry["first"].items() if k in shown}
            train = {k: round(v, 3) for k, v in entry["train_last"].items() if k in ("acc", "loss")}
            print(f"{Path(config).stem:<24s} {name:<16s} chance {entry.get('chance', float('nan')):.3f}  "
                  f"val first {first}  last { {k: round(v, 3) for k, v in shown.items()} }  "
                  f"best acc {entry['best_val_acc']}  train last {train}  ({res['wall_s']} s)", flush=True)
        if args.probe:
            res["probe"] = probe_run(Path(res["run_dir"]), args.probe, reuse=args.reuse)
            print(f"{Path(config).stem:<24s} probe {res['probe']}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
