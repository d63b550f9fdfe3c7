"""tools/eval_suite.py: every world protocol for one encoder, with the context frames it needs."""

from __future__ import annotations

import doctest
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


def test_doctests(load_tool: Callable[[str], ModuleType]) -> None:
    assert doctest.testmod(load_tool("eval_suite")).failed == 0


def test_commands_give_each_protocol_its_frames_and_source(load_tool: Callable[[str], ModuleType]) -> None:
    tool = load_tool("eval_suite")
    cmds = tool.commands(list(tool.PROTOCOLS), Path("ev"), 4, encoder="r3d_tiny", seed=2)
    assert cmds["segmentation"][2:4] == ["--protocol.init_args.label_fractions=[0.1, 1.0]",
                                         "--protocol.init_args.clip_len=4"]
    assert "--protocol.init_args.clip_len=4" in cmds["detection"]
    assert "--protocol.init_args.label_fractions=[1.0]" in cmds["detection"]
    assert "--protocol.init_args.context=4" in cmds["propagation"] and "--baseline_seeds=[]" in cmds["probe"]
    assert cmds["dense_probe"][:4] == ["--config", "configs/eval/dense_probe_world.yaml", "--baseline_seeds=[]",
                                       "--protocol.init_args.clip_len=4"]
    assert all(c[-4:] == ["--encoder.name", "r3d_tiny", "--seed", "2"] for c in cmds.values())
    assert cmds["probe"][cmds["probe"].index("--output_dir") + 1] == str(Path("ev/probe"))
    with_ckpt = tool.commands(["probe"], Path("ev"), 1, checkpoint="a.ckpt", baseline=True)
    assert with_ckpt["probe"][-4:] == ["--checkpoint", "a.ckpt", "--baseline", "true"]
    with pytest.raises(ValueError, match=r"unknown protocols \['depth'\]"):
        tool.commands(["depth"], Path("ev"), 1, checkpoint="a.ckpt")
    with pytest.raises(ValueError, match="exactly one of --checkpoint and --encoder"):
        tool.commands(["probe"], Path("ev"), 1)
    with pytest.raises(ValueError, match="--frames must be >= 1"):
        tool.commands(["probe"], Path("ev"), 0, encoder="r3d_tiny")


def test_main_runs_each_protocol_then_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str],
                                                load_tool: Callable[[str], ModuleType]) -> None:
    tool = load_tool("eval_suite")
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        if "--output_dir" in cmd:  # an stssl-eval call: write what it would
            out = Path(cmd[cmd.index("--output_dir") + 1])
            failed = out.name == "detection"
            if not failed:
                (out / "metrics.json").write_text(json.dumps(
                    {"protocol": "propagation", "checkpoint": None, "encoder": "resnet18_2d_tiny", "seed": 0,
                     "scratch": {"J": 0.2, "F": 0.3, "JF": 0.25}}))
            return subprocess.CompletedProcess(cmd, 1 if failed else 0, "out", "boom" if failed else "")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(tool.subprocess, "run", fake_run)
    code = tool.main(["--encoder", "resnet18_2d_tiny", "--out", str(tmp_path), "--protocols", "detection",
                      "propagation"])
    assert code == 1  # detection failed: the exit code says so, the others still ran
    evals = [c for c in calls if "--output_dir" in c]
    assert [c[c.index("--config") + 1] for c in evals] == ["configs/eval/detection_world.yaml",
                                                            "configs/eval/propagation_world.yaml"]
    assert "--protocol.init_args.context=1" in evals[1]  # a per-frame encoder: one frame of context
    assert calls[-1][1].endswith("eval_table.py") and calls[-1][2:] == [str(tmp_path / "propagation")]
    assert (tmp_path / "detection" / "log.txt").read_text() == "outboom"
    out = capsys.readouterr()
    assert "stssl-eval --config configs/eval/propagation_world.yaml" in out.out and "boom" in out.err
