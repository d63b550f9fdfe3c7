#!/usr/bin/env python
"""One comparison table from many ``stssl-eval`` runs: a row per encoder (each checkpoint's ``pretrained`` encoder,
and each distinct ``scratch`` baseline), a column per protocol metric. JSON and Markdown out.

Reads the ``metrics.json`` of every run directory given (any protocol: probe, segmentation, detection,
propagation, finetune, depth_pose) and keys each run by its checkpoint. Give names to checkpoints with
``--name NAME=CHECKPOINT`` (default: the checkpoint's run folder, e.g. ``vcop_tiny``). Scratch rows are keyed by
the encoder architecture ``stssl-eval`` records (``scratch (ResNet3D, 0.12M parameters, dim 128)``), so every
checkpoint of one architecture shares one scratch row; runs with ``baseline: false`` add none. Runs that scored
several random inits (``baseline_seeds``) add their range's mean and max as ``scratch mean of N (...)`` and
``scratch max of N (...)`` rows: compare a checkpoint with those, not with one init.

    stssl-eval --config configs/eval/probe_world.yaml --checkpoint runs/vcop/.../last.ckpt --output_dir ev/probe_vcop
    stssl-eval --config configs/eval/segmentation_world.yaml --checkpoint ... --output_dir ev/seg_vcop
    python tools/eval_table.py ev/* --name vcop=runs/vcop/.../last.ckpt --json ev/table.json --markdown ev/table.md

Columns: ``knn``, ``linear`` (probe), ``seg@<fraction>`` (mIoU), ``det@<fraction>`` (COCO mAP), ``jf``
(propagation), ``ft`` (fine-tuning accuracy), ``abs_rel`` / ``ate`` (depth and pose); missing cells are empty.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

Row = dict[str, float]


def metric_cells(protocol: str, result: dict[str, Any]) -> Row:
    """The table cells of one encoder's result (``metrics["pretrained"]`` or ``["scratch"]``) for a protocol.

    Example:
        >>> metric_cells("segmentation", {"0.1": {"miou": 0.5}, "1.0": {"miou": 0.6}})
        {'seg@0.1': 0.5, 'seg@1.0': 0.6}
        >>> metric_cells("probe", {"knn_acc": 0.7, "linear_acc": 0.8, "knn_mean_class_acc": 0.69})
        {'knn': 0.7, 'linear': 0.8}
    """
    if protocol == "probe":
        return {"knn": result["knn_acc"], "linear": result["linear_acc"]}
    if protocol == "segmentation":
        return {f"seg@{frac}": cell["miou"] for frac, cell in result.items() if isinstance(cell, dict)}
    if protocol == "detection":
        return {f"det@{frac}": cell["map"] for frac, cell in result.items() if isinstance(cell, dict)}
    if protocol == "propagation":
        return {"jf": result["JF"]}
    if protocol == "finetune":
        accs = {f"ft@{frac}": cell["acc"] for frac, cell in result.items() if isinstance(cell, dict) and "acc" in cell}
        return accs or ({"ft": result["acc"]} if "acc" in result else {})
    if protocol == "depth_pose":
        return {column: result[key] for column, key in (("abs_rel", "depth/abs_rel"), ("ate", "pose/ate")) if key in result}
    raise ValueError(f"eval_table: unknown protocol {protocol!r} (known: probe, segmentation, detection, "
                     "propagation, finetune, depth_pose)")


def _checkpoint_name(checkpoint: str | None, names: dict[str, str]) -> str:
    if checkpoint is None:
        return "(no checkpoint)"
    for name, path in names.items():
        if Path(path).resolve() == Path(checkpoint).resolve():
            return name
    parts = Path(checkpoint).parts
    # runs/<name>/version_N/checkpoints/last.ckpt -> <name>
    return parts[-4] if len(parts) >= 4 and parts[-2] == "checkpoints" else Path(checkpoint).stem


def _scratch_key(metrics: dict[str, Any], name: str, label: str = "scratch") -> str:
    """Scratch rows are per architecture (``metrics["architecture"]``, written by ``stssl-eval``), else per run."""
    return f"{label} ({metrics.get('architecture') or metrics.get('encoder') or name})"


def collect(run_dirs: list[Path], names: dict[str, str] | None = None) -> dict[str, Row]:
    """``{row name: {column: value}}`` from the ``metrics.json`` of every run directory.

    Raises:
        FileNotFoundError: a run directory without ``metrics.json``.
        ValueError: a ``metrics.json`` without ``protocol`` or ``pretrained``, or two runs giving one cell different
            values.
    """
    table: dict[str, Row] = {}
    for run_dir in run_dirs:
        path = run_dir / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"eval_table: {path} not found (is {run_dir} an stssl-eval output_dir?)")
        metrics = json.loads(path.read_text())
        if "protocol" not in metrics or "pretrained" not in metrics:
            raise ValueError(f"eval_table: {path} has no 'protocol' or 'pretrained' key; not an stssl-eval result")
        name = _checkpoint_name(metrics.get("checkpoint"), names or {})
        rows = [(name, metrics["pretrained"])]
        if isinstance(metrics.get("scratch"), dict):
            rows.append((_scratch_key(metrics, name), metrics["scratch"]))
        spread = metrics.get("scratch_range")
        if isinstance(spread, dict):
            for stat in ("mean", "max"):
                rows.append((_scratch_key(metrics, name, f"scratch {stat} of {len(spread['seeds'])}"), spread[stat]))
        for row, result in rows:
            for column, value in metric_cells(metrics["protocol"], result).items():
                value = float("nan") if value is None else float(value)
                old = table.setdefault(row, {}).get(column)
                if old is not None and not (math.isclose(old, value, abs_tol=1e-9) or (math.isnan(old) and math.isnan(value))):
                    raise ValueError(f"eval_table: row {row!r} column {column!r} has {old} and {value} ({path})")
                table[row][column] = value
    return table


def to_markdown(table: dict[str, Row], digits: int = 3) -> str:
    """A Markdown table: one row per encoder (scratch rows last), columns in a fixed protocol order.

    Example:
        >>> print(to_markdown({"vcop": {"knn": 0.6, "seg@0.1": 0.56}, "scratch (vcop)": {"knn": 0.7}}))
        | encoder | knn | seg@0.1 |
        |---|---|---|
        | vcop | 0.600 | 0.560 |
        | scratch (vcop) | 0.700 |  |
    """
    order = ("knn", "linear", "ft", "seg", "det", "jf", "abs_rel", "ate")
    columns = sorted({c for row in table.values() for c in row},
                     key=lambda c: (order.index(c.split("@")[0]) if c.split("@")[0] in order else len(order), c))
    rows = sorted(table, key=lambda r: (r.startswith("scratch"), r))
    lines = ["| encoder | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        cells = [f"{table[row][c]:.{digits}f}" if c in table[row] else "" for c in columns]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="stssl-eval output directories")
    parser.add_argument("--name", action="append", default=[], metavar="NAME=CHECKPOINT",
                        help="row name of a checkpoint (repeatable)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    names = {}
    for item in args.name:
        if "=" not in item:
            parser.error(f"--name expects NAME=CHECKPOINT, got {item!r}")
        key, value = item.split("=", 1)
        names[key] = value
    table = collect(args.run_dirs, names)
    markdown = to_markdown(table)
    print(markdown)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        safe = {row: {c: (None if math.isnan(v) else v) for c, v in cells.items()} for row, cells in table.items()}
        args.json.write_text(json.dumps(safe, indent=1, sort_keys=True, allow_nan=False) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown + "\n")


if __name__ == "__main__":
    main()
