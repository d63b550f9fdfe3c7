#!/usr/bin/env python
"""Frozen-feature probes (kNN + linear) of an encoder on the driving world's ego-motion task, JSON out.

The task (:func:`stssl.eval.world_tasks.world_probe_dataset`): is the camera going straight, turning left or
turning right over a clip? Labels come from the rendered scenes' ground-truth poses; train and test scenes are
rendered from disjoint seeds (cached under ``--root``). Compare a random-init encoder with a pretrained one:

    python tools/probe_world.py --encoder r3d_tiny --out runs/probe_random.json          # random-init baseline
    python tools/probe_world.py --ckpt runs/version_0/checkpoints/last.ckpt --out runs/probe_ssl.json

Output: ``{"encoder", "ckpt", "knn_acc", "knn_mean_class_acc", "linear_acc", "linear_mean_class_acc",
"linear_train_acc", "chance", "class_names", "class_counts", ...}``; ``chance`` is the test accuracy of always
predicting the most frequent train class.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script from a checkout: make `stssl` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def _seeds(text: str) -> list[int]:
    return [int(s) for s in text.replace(",", " ").split()]


def build_parser() -> argparse.ArgumentParser:
    from stssl.eval.world_tasks import DEFAULT_TEST_SEEDS, DEFAULT_TRAIN_SEEDS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, default=None, help="stssl-train checkpoint; its encoder is probed")
    p.add_argument("--encoder", default="r3d_tiny", help="registry name (random init; or the architecture of a ckpt "
                   "without a saved config)")
    p.add_argument("--encoder-kwargs", default="{}", help='JSON kwargs for build_encoder, e.g. \'{"width": 8}\'')
    p.add_argument("--root", type=Path, default=None, help="world cache ($STSSL_CACHE or ~/.cache/stssl/worlds)")
    p.add_argument("--train-seeds", type=_seeds, default=list(DEFAULT_TRAIN_SEEDS), help="e.g. '0,1,2'")
    p.add_argument("--test-seeds", type=_seeds, default=list(DEFAULT_TEST_SEEDS))
    p.add_argument("--frames", type=int, default=200, help="frames per rendered scene")
    p.add_argument("--render-size", type=_size, default=(64, 192), help="rendered HxW")
    p.add_argument("--size", type=_size, default=None, help="HxW of the clips fed to the encoder (default: rendered)")
    p.add_argument("--clip-len", type=int, default=8)
    p.add_argument("--frame-stride", type=int, default=2)
    p.add_argument("--step", type=int, default=2, help="frames between clip starts")
    p.add_argument("--yaw-threshold", type=float, default=20.0, help="degrees; |yaw| below is straight")
    p.add_argument("--margin", type=float, default=5.0, help="degrees around the threshold whose clips are dropped")
    p.add_argument("--no-balance", action="store_true", help="keep every straight clip")
    p.add_argument("--pool", default="mean", choices=["mean", "grid2"])
    p.add_argument("--bn-recalibrate", action="store_true", help="recompute BatchNorm statistics on the train clips "
                   "first (a random-init encoder's are the defaults)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--epochs", type=int, default=100, help="L-BFGS iterations of the linear probe")
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seeds the random-init encoder and the linear probe")
    p.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the probes; print and return (and with ``--out`` write) the JSON result."""
    args = build_parser().parse_args(argv)
    import torch
    from torch.utils.data import DataLoader

    from stssl.encoders import build_encoder
    from stssl.eval.probe import (
        extract_features,
        knn_classify,
        linear_probe,
        load_encoder_from_checkpoint,
        mean_class_accuracy,
        recalibrate_batchnorm,
    )
    from stssl.eval.world_tasks import world_probe_dataset

    root = args.root or Path(os.environ.get("STSSL_CACHE") or Path("~/.cache/stssl/worlds").expanduser())
    started = time.perf_counter()
    train, test, info = world_probe_dataset(
        root, train_seeds=args.train_seeds, test_seeds=args.test_seeds, frames=args.frames,
        height=args.render_size[0], width=args.render_size[1], clip_len=args.clip_len, frame_stride=args.frame_stride,
        step=args.step, size=args.size, yaw_threshold_deg=args.yaw_threshold, margin_deg=args.margin,
        balance=not args.no_balance,
    )
    data_s = time.perf_counter() - started

    torch.manual_seed(args.seed)
    kwargs = json.loads(args.encoder_kwargs)
    if args.ckpt is not None:
        # a ckpt with a saved LightningCLI config rebuilds its own encoder; else --encoder names the architecture
        try:
            encoder = load_encoder_from_checkpoint(args.ckpt, map_location=args.device)
        except ValueError as err:
            if "no saved encoder config" not in str(err):
                raise
            encoder = load_encoder_from_checkpoint(
                args.ckpt, encoder=build_encoder(args.encoder, **kwargs), map_location=args.device
            )
        name = type(encoder).__name__
    else:
        encoder = build_encoder(args.encoder, **kwargs).to(args.device)
        name = args.encoder

    def loader(ds: Any) -> DataLoader:
        return DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)

    started = time.perf_counter()
    if args.bn_recalibrate:
        recalibrate_batchnorm(encoder, loader(train), device=args.device)
    train_x, train_y = extract_features(encoder, loader(train), pool=args.pool, device=args.device)
    test_x, test_y = extract_features(encoder, loader(test), pool=args.pool, device=args.device)
    features_s = time.perf_counter() - started

    num_classes = len(info.class_names)
    knn_pred = knn_classify(train_x, train_y, test_x, k=args.k, temperature=args.temperature, num_classes=num_classes)
    linear = linear_probe(train_x, train_y, test_x, test_y, epochs=args.epochs, weight_decay=args.weight_decay,
                          num_classes=num_classes, seed=args.seed)
    majority = int(torch.bincount(train_y, minlength=num_classes).argmax())
    result: dict[str, Any] = {
        "encoder": name,
        "ckpt": None if args.ckpt is None else str(args.ckpt),
        "task": "ego_motion (straight/left/right)",
        "knn_acc": round(float((knn_pred == test_y).float().mean()), 4),
        "knn_mean_class_acc": round(mean_class_accuracy(knn_pred, test_y, num_classes), 4),
        "linear_acc": round(linear["acc"], 4),
        "linear_mean_class_acc": round(linear["mean_class_acc"], 4),
        "linear_train_acc": round(linear["train_acc"], 4),
        "chance": round(float((test_y == majority).float().mean()), 4),
        "chance_mean_class": round(1.0 / len(test_y.unique()), 4),
        "class_names": list(info.class_names),
        "class_counts": info.counts,
        "class_counts_before_balance": info.raw_counts,
        "dropped_ambiguous": info.dropped_ambiguous,
        "train_scenes": info.train_scenes,
        "test_scenes": info.test_scenes,
        "feature_dim": int(train_x.shape[1]),
        "settings": json.loads(json.dumps(vars(args), default=str)),
        "render_s": info.render_s,
        "data_s": round(data_s, 2),
        "features_s": round(features_s, 2),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
