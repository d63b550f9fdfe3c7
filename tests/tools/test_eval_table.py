"""tools/eval_table.py: stssl-eval results of many checkpoints -> one table."""

from __future__ import annotations

import doctest
import json
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARCH = "ResNet3D, 0.12M parameters, dim 128"


def _run(root: Path, name: str, protocol: str, checkpoint: str | None, pretrained: dict, scratch: dict | None = None,
         architecture: str | None = ARCH) -> Path:
    run = root / name
    run.mkdir(parents=True)
    metrics = {"protocol": protocol, "checkpoint": checkpoint, "architecture": architecture, "pretrained": pretrained}
    if scratch is not None:
        metrics["scratch"] = scratch
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_doctests(load_tool: Callable[[str], ModuleType]) -> None:
    assert doctest.testmod(load_tool("eval_table")).failed == 0


def test_rows_per_checkpoint_and_one_scratch_row_per_architecture(tmp_path: Path, load_tool: Callable[[str], ModuleType]) -> None:
    tool = load_tool("eval_table")
    vcop, moco = "runs/vcop_tiny/version_0/checkpoints/last.ckpt", "runs/x/version_3/checkpoints/last.ckpt"
    runs = [
        _run(tmp_path, "probe_vcop", "probe", vcop, {"knn_acc": 0.6, "linear_acc": 0.83},
             {"knn_acc": 0.7, "linear_acc": 0.75}),
        _run(tmp_path, "seg_vcop", "segmentation", vcop, {"0.1": {"miou": 0.56}, "1.0": {"miou": 0.58}},
             {"0.1": {"miou": 0.55}, "1.0": {"miou": 0.60}}),
        _run(tmp_path, "probe_moco", "probe", moco, {"knn_acc": 0.65, "linear_acc": 0.78},
             {"knn_acc": 0.7, "linear_acc": 0.75}),  # the same scratch encoder, the same figures
        _run(tmp_path, "jf_moco", "propagation", moco, {"J": 0.3, "F": 0.2, "JF": 0.25}),  # baseline: false
        _run(tmp_path, "det_moco", "detection", moco, {"0.1": {"map": 0.08, "map_50": 0.2}}),
        _run(tmp_path, "depth", "depth_pose", moco, {"depth/abs_rel": 0.19, "pose/ate": 0.013, "depth/a1": 0.7},
             architecture=None),
    ]
    table = tool.collect(runs, {"moco": moco})
    assert set(table) == {"vcop_tiny", "moco", f"scratch ({ARCH})"}
    assert table["vcop_tiny"] == {"knn": 0.6, "linear": 0.83, "seg@0.1": 0.56, "seg@1.0": 0.58}
    assert table["moco"] == {"knn": 0.65, "linear": 0.78, "jf": 0.25, "det@0.1": 0.08, "abs_rel": 0.19, "ate": 0.013}
    assert table[f"scratch ({ARCH})"] == {"knn": 0.7, "linear": 0.75, "seg@0.1": 0.55, "seg@1.0": 0.60}
    lines = tool.to_markdown(table).splitlines()
    assert lines[0] == "| encoder | knn | linear | seg@0.1 | seg@1.0 | det@0.1 | jf | abs_rel | ate |"
    assert lines[2].startswith("| moco | 0.650 | 0.780 |  |  | 0.080 | 0.250 | 0.190 | 0.013 |")
    assert lines[-1].startswith(f"| scratch ({ARCH}) |")  # scratch rows last


def test_random_inits_of_several_seeds_give_a_row_each_and_mean_and_max_rows(
    tmp_path: Path, load_tool: Callable[[str], ModuleType]
) -> None:
    tool = load_tool("eval_table")
    run = _run(tmp_path, "probe", "probe", "runs/simclr/version_0/checkpoints/last.ckpt",
               {"knn_acc": 0.6, "linear_acc": 0.8}, {"knn_acc": 0.74, "linear_acc": 0.71})
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.update(seed=0, scratch_seed1={"knn_acc": 0.6, "linear_acc": 0.8},
                   scratch_seed2={"knn_acc": 0.76, "linear_acc": 0.74})  # baseline_seeds: [1, 2]
    (run / "metrics.json").write_text(json.dumps(metrics))
    seg = [_run(tmp_path, f"seg{s}", "segmentation", None, None, {"1.0": {"miou": m}})  # random inits alone
           for s, m in ((0, 0.5), (1, 0.7))]
    for s, path in enumerate(seg):
        m = json.loads((path / "metrics.json").read_text())
        m.pop("pretrained"), m.update(seed=s)
        (path / "metrics.json").write_text(json.dumps(m))
    table = tool.collect([run, *seg])
    assert table[f"scratch seed 0 ({ARCH})"] == {"knn": 0.74, "linear": 0.71, "seg@1.0": 0.5}
    assert table[f"scratch seed 2 ({ARCH})"] == {"knn": 0.76, "linear": 0.74}
    mean3, max3 = table[f"scratch mean of 3 ({ARCH})"], table[f"scratch max of 3 ({ARCH})"]
    assert mean3 == pytest.approx({"knn": 0.7, "linear": 0.75}) and max3 == {"knn": 0.76, "linear": 0.8}
    assert table[f"scratch mean of 2 ({ARCH})"] == pytest.approx({"seg@1.0": 0.6})
    assert table[f"scratch max of 2 ({ARCH})"] == {"seg@1.0": 0.7} and table["simclr"]["linear"] == 0.8
    assert f"scratch ({ARCH})" not in table  # one seed of an architecture is "scratch (...)"; several are not


def test_main_writes_json_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str], load_tool: Callable[[str], ModuleType]) -> None:
    tool = load_tool("eval_table")
    run = _run(tmp_path, "probe", "probe", "a/b/checkpoints/last.ckpt", {"knn_acc": math.nan, "linear_acc": 0.5})
    tool.main([str(run), "--name", "mine=a/b/checkpoints/last.ckpt", "--json", str(tmp_path / "t.json"),
               "--markdown", str(tmp_path / "t.md")])
    assert "| mine | nan | 0.500 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "t.json").read_text()) == {"mine": {"knn": None, "linear": 0.5}}
    assert (tmp_path / "t.md").read_text().splitlines()[2] == "| mine | nan | 0.500 |"


def test_bad_inputs_are_clear_errors(tmp_path: Path, load_tool: Callable[[str], ModuleType]) -> None:
    tool = load_tool("eval_table")
    with pytest.raises(FileNotFoundError, match=r"empty/metrics.json not found"):
        (tmp_path / "empty").mkdir()
        tool.collect([tmp_path / "empty"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text(json.dumps({"knn": 1}))
    with pytest.raises(ValueError, match="no 'protocol' or 'pretrained'"):
        tool.collect([bad])
    a = _run(tmp_path, "a", "probe", "x.ckpt", {"knn_acc": 0.1, "linear_acc": 0.2}, {"knn_acc": 0.5, "linear_acc": 0.5})
    b = _run(tmp_path, "b", "probe", "y.ckpt", {"knn_acc": 0.1, "linear_acc": 0.2}, {"knn_acc": 0.6, "linear_acc": 0.5})
    with pytest.raises(ValueError, match=r"'scratch seed 0 \(ResNet3D.*column 'knn' has 0.5 and 0.6"):  # one init, two figures
        tool.collect([a, b])
    with pytest.raises(ValueError, match="unknown protocol 'nope'"):
        tool.metric_cells("nope", {})
    dense = {"stage": 1, "linear": {"miou": 0.4, "pixel_accuracy": 0.8}, "knn": {"miou": 0.45}}
    assert tool.metric_cells("dense_probe", dense) == {"dense_knn": 0.45, "dense_linear": 0.4}
