#!/usr/bin/env python
"""One comparison table from many ``stssl-eval`` runs: a row per encoder (each checkpoint's ``pretrained`` encoder,
and each distinct ``scratch`` baseline), a column per protocol metric. JSON and Markdown out.

Reads the ``metrics.json`` of every run directory given (any protocol: probe, dense_probe, segmentation,
detection, propagation, finetune, depth_pose) and keys each run by its checkpoint. Give names to checkpoints with
``--name NAME=CHECKPOINT`` (default: the checkpoint's run folder, e.g. ``vcop_tiny``). Scratch rows are keyed by
the encoder architecture ``stssl-eval`` records (``scratch (ResNet3D, 0.12M parameters, dim 128)``), so every
checkpoint of one architecture shares its scratch rows; runs with ``baseline: false`` add none. Random inits of
several seeds (a run's ``baseline_seeds``, or runs of random inits alone, ``stssl-eval --encoder.name NAME --seed
S``) give a row per seed and ``scratch mean of N (...)`` / ``scratch max of N (...)`` rows: compare a checkpoint
with those, not with one init.

    stssl-eval --config configs/eval/probe_world.yaml --checkpoint runs/vcop/.../last.ckpt --output_dir ev/probe_vcop
    stssl-eval --config configs/eval/segmentation_world.yaml --checkpoint ... --output_dir ev/seg_vcop
    python tools/eval_table.py ev/* --name vcop=runs/vcop/.../last.ckpt --json ev/table.json --markdown ev/table.md

Columns: ``knn``, ``linear`` (probe), ``dense_knn``, ``dense_linear`` (dense probe mIoU), ``seg@<fraction>`` (mIoU), ``det@<fraction>`` (COCO mAP), ``jf``
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
    if protocol == "dense_probe":
        return {"dense_knn": result["knn"]["miou"], "dense_linear": result["linear"]["miou"]}
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
    raise ValueError(f"eval_table: unknown protocol {protocol!r} (known: probe, dense_probe, segmentation, "
                     "detection, propagation, finetune, depth_pose)")


def _checkpoint_name(checkpoint: str | None, names: dict[str, str]) -> str:
    if checkpoint is None:
        return "(no checkpoint)"
    for name, path in names.items():
        if Path(path).resolve() == Path(checkpoint).resolve():
            return name
    parts = Path(checkpoint).parts
    # runs/<name>/version_N/checkpoints/last.ckpt -> <name>
    return parts[-4] if len(parts) >= 4 and parts[-2] == "checkpoints" else Path(checkpoint).stem


def _architecture(metrics: dict[str, Any], name: str) -> str:
    """Scratch rows are per architecture (``metrics["architecture"]``, written by ``stssl-eval``), else per run."""
    return str(metrics.get("architecture") or metrics.get("encoder") or name)


def _scratch_entries(metrics: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """``(seed, result)`` of every random init a run scored: ``scratch`` (its ``seed``, 0 if not recorded) and
    ``scratch_seed<S>``."""
    entries = []
    if isinstance(metrics.get("scratch"), dict):
        entries.append((int(metrics.get("seed") or 0), metrics["scratch"]))
    for key, result in metrics.items():
        if key.startswith("scratch_seed") and key[len("scratch_seed"):].isdigit() and isinstance(result, dict):
            entries.append((int(key[len("scratch_seed"):]), result))
    return entries


def _put(cells: Row, row: str, new: Row, path: Path) -> None:
    """Add ``new`` to ``row``'s ``cells``; a cell two runs give different values is an error."""
    for column, value in new.items():
        value = float("nan") if value is None else float(value)
        old = cells.get(column)
        if old is not None and not (math.isclose(old, value, abs_tol=1e-9) or (math.isnan(old) and math.isnan(value))):
            raise ValueError(f"eval_table: row {row!r} column {column!r} has {old} and {value} ({path})")
        cells[column] = value


def collect(run_dirs: list[Path], names: dict[str, str] | None = None) -> dict[str, Row]:
    """``{row name: {column: value}}`` from the ``metrics.json`` of every run directory.

    Every random init is a row of its architecture: ``scratch (<architecture>)`` when the runs hold one seed of it,
    ``scratch seed <S> (<architecture>)`` per seed when they hold several, gathered from every run (a checkpoint's
    baseline, its ``baseline_seeds``, and runs of a random init alone: ``stssl-eval --encoder.name ... --seed S``).
    Several seeds add ``scratch mean of N (...)`` and ``scratch max of N (...)`` rows, each cell over the ``N`` seeds
    that scored that column (NaN cells skipped), so a probe scored over 5 inits and a segmentation over 3 give rows
    of 5 and of 3.

    Raises:
        FileNotFoundError: a run directory without ``metrics.json``.
        ValueError: a ``metrics.json`` without ``protocol`` or any encoder result, or two runs giving one cell
            different values.
    """
    table: dict[str, Row] = {}
    scratch: dict[str, dict[int, Row]] = {}  # architecture label -> seed -> cells
    for run_dir in run_dirs:
        path = run_dir / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"eval_table: {path} not found (is {run_dir} an stssl-eval output_dir?)")
        metrics = json.loads(path.read_text())
        entries = _scratch_entries(metrics) if isinstance(metrics, dict) else []
        if not isinstance(metrics, dict) or "protocol" not in metrics or ("pretrained" not in metrics and not entries):
            raise ValueError(f"eval_table: {path} has no 'protocol' or 'pretrained' / 'scratch' key; "
                             "not an stssl-eval result")
        name = _checkpoint_name(metrics.get("checkpoint"), names or {})
        if "pretrained" in metrics:
            _put(table.setdefault(name, {}), name, metric_cells(metrics["protocol"], metrics["pretrained"]), path)
        label = _architecture(metrics, name)
        for seed, result in entries:
            cells = scratch.setdefault(label, {}).setdefault(seed, {})
            _put(cells, f"scratch seed {seed} ({label})", metric_cells(metrics["protocol"], result), path)
    for label, seeds in scratch.items():
        if len(seeds) == 1:
            table[f"scratch ({label})"] = next(iter(seeds.values()))
            continue
        for seed in sorted(seeds):
            table[f"scratch seed {seed} ({label})"] = seeds[seed]
        columns = {c for cells in seeds.values() for c in cells}
        for column in columns:
            values = [cells[column] for cells in seeds.values() if column in cells and not math.isnan(cells[column])]
            if len(values) < 2:
                continue
            table.setdefault(f"scratch mean of {len(values)} ({label})", {})[column] = sum(values) / len(values)
            table.setdefault(f"scratch max of {len(values)} ({label})", {})[column] = max(values)
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
