"""``stssl-eval``: score the encoder of any ``stssl-train`` checkpoint (and a random-init baseline) by one protocol.

    stssl-eval --config configs/eval/segmentation_world.yaml --checkpoint runs/version_0/checkpoints/last.ckpt
    stssl-eval --config configs/eval/probe_world.yaml --encoder.name r3d_tiny        # random init only
    stssl-eval --print_config --config configs/eval/propagation_world.yaml

The schema is jsonargparse's, as ``stssl-train``'s (LightningCLI) is: ``--config`` files compose, every
constructor argument of the protocol is a key (``protocol.class_path`` / ``protocol.init_args``),
``--print_config`` prints the full config. (Not LightningCLI itself: most protocols do not train one
LightningModule — kNN extracts features, segmentation trains one head per encoder and label fraction.)

Encoders scored: ``pretrained`` (the checkpoint's encoder with its weights) and, with ``baseline: true``,
``scratch`` (the same architecture freshly initialised from ``seed``). Random inits differ by more than many
pretraining gains (the R3D preset's ego-motion probe: linear 0.667-0.796 over seeds 0-4), so ``baseline_seeds``
scores more of them, as ``scratch_seed<S>``, and ``scratch_range`` gives the ``min`` / ``mean`` / ``max`` of every
metric over all random inits (``seed`` and ``baseline_seeds``). Without a checkpoint, ``encoder.name``
(a registry name, :func:`stssl.encoders.build_encoder`) gives the architecture and only ``scratch`` is scored.

Output, in ``output_dir`` (created; an existing ``metrics.json`` there is replaced): ``metrics.json`` (the
protocol's result plus the settings), ``config.yaml`` and the protocol's plots and per-sample files.

Test-scene leakage: when the checkpoint was pretrained on the built-in world and the protocol scores world
scenes, ``metrics.json`` records ``test_seeds_in_pretraining``: the test seeds whose video the encoder saw
during pretraining (``[]`` when none; a warning names them otherwise).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["eval_main", "metric_spread", "run_eval", "seeds_seen_in_pretraining"]

logger = logging.getLogger("stssl")


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` (strict JSON has neither; e.g. the IoU of an unseen class)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _factories(
    checkpoint: str | None,
    name: str | None,
    kwargs: dict,
    baseline: bool,
    seed: int,
    device: str = "cpu",
    baseline_seeds: Sequence[int] = (),
) -> dict[str, Any]:
    import torch

    from stssl.encoders import build_encoder
    from stssl.eval.probe import load_encoder_from_checkpoint

    def random_init(s: int) -> Any:
        torch.manual_seed(s)
        if name:
            return build_encoder(name, **kwargs)
        return load_encoder_from_checkpoint(str(checkpoint), random_init=True)

    def factory(encoder: Any) -> Any:
        return lambda: copy.deepcopy(encoder).to(device)

    given = random_init(seed) if name else None
    factories: dict[str, Any] = {}
    if checkpoint:
        factories["pretrained"] = factory(
            load_encoder_from_checkpoint(checkpoint, encoder=copy.deepcopy(given) if given else None))
    if baseline or not checkpoint:
        factories["scratch"] = factory(given if given is not None else random_init(seed))
        for s in baseline_seeds:
            factories[f"scratch_seed{s}"] = factory(random_init(s))
    return factories


def metric_spread(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{"min": .., "mean": .., "max": ..}`` of the numeric entries that all ``rows`` share, nested as they are.

    Non-finite values (e.g. the IoU of a class a test set lacks) are left out of a statistic; an entry that is not
    a finite number in any row is dropped.

    Example:
        >>> spread = metric_spread([{"acc": 0.5, "0.1": {"miou": 0.2}}, {"acc": 0.7, "0.1": {"miou": 0.4}}])
        >>> spread["min"], spread["max"]["0.1"], round(spread["mean"]["acc"], 6)
        ({'acc': 0.5, '0.1': {'miou': 0.2}}, {'miou': 0.4}, 0.6)
    """
    spread: dict[str, dict[str, Any]] = {"min": {}, "mean": {}, "max": {}}
    if not rows:
        return spread
    for key, value in rows[0].items():
        values = [row.get(key) for row in rows]
        if isinstance(value, Mapping) and all(isinstance(v, Mapping) for v in values):
            inner = metric_spread(values)  # type: ignore[arg-type]
            for stat, tree in inner.items():
                if tree:
                    spread[stat][key] = tree
            continue
        numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        finite = [v for v in numbers if math.isfinite(v)]
        if len(numbers) == len(rows) and finite:
            spread["min"][key], spread["max"][key] = min(finite), max(finite)
            spread["mean"][key] = sum(finite) / len(finite)
    return spread


def _architecture(factories: dict[str, Any]) -> str | None:
    """What the scored encoders are, e.g. ``"ResNet3D, 1.23M parameters, dim 128"`` (None without encoders): the
    ``pretrained`` and ``scratch`` rows of one architecture share it, so result tables can pair them."""
    if not factories:
        return None
    encoder = next(iter(factories.values()))()
    params = sum(p.numel() for p in encoder.parameters())
    return f"{type(encoder).__name__}, {params / 1e6:.2f}M parameters, dim {encoder.spec.dim}"


def seeds_seen_in_pretraining(checkpoint: str | None, result: dict[str, Any]) -> list[int] | None:
    """Test scenes of an evaluation ``result`` that were pretraining video of ``checkpoint`` (world seeds, sorted).

    ``None`` when it cannot apply: no checkpoint, a checkpoint not pretrained on a built-in world, or a result that
    scored no world scenes (its ``world`` / ``test_seeds`` keys, from :meth:`WorldSplit.describe
    <stssl.eval.protocols.WorldSplit.describe>`, are absent) or another world.
    """
    from stssl.eval.probe import pretraining_world

    if not checkpoint or "world" not in result or "test_seeds" not in result:
        return None
    pretrained_on = pretraining_world(checkpoint)
    if pretrained_on is None or pretrained_on["world"] != result["world"]:
        return None
    return sorted(set(pretrained_on["train_seeds"]) & {int(s) for s in result["test_seeds"]})


def run_eval(
    protocol: Any,
    *,
    checkpoint: str | None = None,
    encoder_name: str | None = None,
    encoder_kwargs: dict | None = None,
    baseline: bool = True,
    output_dir: str | Path = "runs/eval",
    seed: int = 0,
    device: str = "auto",
    baseline_seeds: Sequence[int] = (),
) -> dict[str, Any]:
    """Score encoders with ``protocol`` and write ``metrics.json`` into ``output_dir``; returns the metrics.

    Args:
        protocol: a :class:`~stssl.eval.protocols.Protocol`.
        checkpoint: an ``stssl-train`` checkpoint whose encoder is scored as ``pretrained``.
        encoder_name / encoder_kwargs: the architecture (registry name) when there is no checkpoint, or for a
            checkpoint without a saved config.
        baseline: also score ``scratch``: the same architecture, freshly initialised from ``seed``.
        output_dir: the run directory.
        seed: seeds the random init.
        device: where the frozen-feature protocols run their encoders (``"auto"``: CUDA when available); the
            training protocols use Lightning's ``accelerator="auto"``.
        baseline_seeds: more random inits to score (``scratch_seed<S>``), summarised with ``scratch`` in
            ``scratch_range`` (:func:`metric_spread`).

    Raises:
        ValueError: when neither ``checkpoint`` nor ``encoder_name`` says which encoder to score, or
            ``baseline_seeds`` repeats a seed or is given without a baseline.
    """
    from stssl.eval.protocols import DepthPoseProtocol

    if not checkpoint and not encoder_name:
        raise ValueError("stssl-eval: give --checkpoint (an stssl-train .ckpt) or --encoder.name (random init only)")
    if checkpoint and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"stssl-eval: checkpoint {checkpoint} not found")
    baseline_seeds = [int(s) for s in baseline_seeds]
    if baseline_seeds and checkpoint and not baseline:
        raise ValueError(f"stssl-eval: baseline_seeds {baseline_seeds} given with baseline: false")
    if len({seed, *baseline_seeds}) != len(baseline_seeds) + 1:
        raise ValueError(f"stssl-eval: baseline_seeds {baseline_seeds} must differ from each other and from seed {seed}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(protocol, DepthPoseProtocol):
        protocol.checkpoint = checkpoint
        factories: dict[str, Any] = {}
    else:
        import torch

        dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        factories = _factories(checkpoint, encoder_name, dict(encoder_kwargs or {}), baseline, seed, dev,
                               baseline_seeds)
    started = time.perf_counter()
    result = protocol.run(factories, out)
    scratch_rows = [result[k] for k in ("scratch", *(f"scratch_seed{s}" for s in baseline_seeds))
                    if isinstance(result.get(k), dict)]
    if len(scratch_rows) > 1:
        result["scratch_range"] = {"seeds": [seed, *baseline_seeds], **metric_spread(scratch_rows)}
    leaked = seeds_seen_in_pretraining(checkpoint, result)
    if leaked:
        logger.warning("stssl-eval: test scenes %s (%s world seeds) were pretraining video of %s: the pretrained "
                       "scores are transductive on them", leaked, result["world"], checkpoint)
    metrics = {
        "protocol": protocol.name,
        "checkpoint": checkpoint,
        "encoder": encoder_name,
        "architecture": _architecture(factories),
        "seed": seed,
        "wall_s": round(time.perf_counter() - started, 1),
        **result,
    }
    if leaked is not None:
        metrics["test_seeds_in_pretraining"] = leaked
    metrics = _json_safe(json.loads(json.dumps(metrics, default=float)))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=False) + "\n")
    return metrics


def build_parser() -> Any:
    from jsonargparse import ActionConfigFile, ArgumentParser

    from stssl.eval.protocols import Protocol

    parser = ArgumentParser(prog="stssl-eval", description=__doc__.split("\n\n")[0], exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config (repeatable; later files win)")
    parser.add_subclass_arguments(Protocol, "protocol", help="the evaluation protocol (stssl.eval.protocols)")
    parser.add_argument("--checkpoint", type=str | None, default=None, help="stssl-train checkpoint to score")
    parser.add_argument("--encoder.name", type=str | None, default=None, help="encoder registry name")
    parser.add_argument("--encoder.kwargs", type=dict, default={}, help="kwargs for build_encoder")
    parser.add_argument("--baseline", type=bool, default=True, help="also score a random-init encoder")
    parser.add_argument("--output_dir", type=str, default="runs/eval", help="run directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init")
    parser.add_argument("--baseline_seeds", type=list[int], default=[],
                        help="more random inits (scratch_seed<S>), summarised in scratch_range")
    parser.add_argument("--device", type=str, default="auto", help="device of the frozen-feature protocols")
    return parser


def eval_main(argv: list[str] | None = None) -> None:
    """Entry point of ``stssl-eval`` (the metrics go to ``metrics.json`` and stdout)."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[stssl] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    parser = build_parser()
    cfg = parser.parse_args(sys.argv[1:] if argv is None else argv)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    init = instantiate(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    parser.save(cfg, out / "config.yaml", overwrite=True)
    metrics = run_eval(
        init.protocol, checkpoint=cfg.checkpoint, encoder_name=cfg.encoder.name, encoder_kwargs=cfg.encoder.kwargs,
        baseline=cfg.baseline, output_dir=out, seed=cfg.seed, device=cfg.device, baseline_seeds=cfg.baseline_seeds,
    )
    print(json.dumps(metrics, indent=1))
    print(f"stssl-eval: wrote {out / 'metrics.json'}", flush=True)


if __name__ == "__main__":  # pragma: no cover
    eval_main()
