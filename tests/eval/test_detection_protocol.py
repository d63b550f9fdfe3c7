"""DetectionProtocol: the label-efficiency run on a tiny world through run_eval, and the shipped config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from stssl.encoders import build_encoder
from stssl.eval.cli import build_parser, eval_main, run_eval
from stssl.eval.detection_protocol import DetectionProtocol
from stssl.eval.protocols import WorldSplit, plot_metric_curve

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_split(root: Path) -> WorldSplit:
    return WorldSplit("driving", train_seeds=[0], test_seeds=[5], frames=6, height=32, width=96, root=str(root))


def _fake_checkpoint(path: Path, name: str = "resnet18_2d_tiny") -> None:
    torch.manual_seed(123)
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in build_encoder(name).state_dict().items()}
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in state.items()}}, path)


@pytest.mark.slow
def test_protocol_scores_each_encoder_at_each_fraction(tmp_path: Path) -> None:
    _fake_checkpoint(tmp_path / "enc.ckpt")
    protocol = DetectionProtocol(_tiny_split(tmp_path / "worlds"), size=(32, 96), label_fractions=[1.0, 0.5],
                                 max_steps=2, batch_size=2, fpn_channels=32, min_box_size=3.0)
    out = run_eval(protocol, checkpoint=str(tmp_path / "enc.ckpt"), encoder_name="resnet18_2d_tiny",
                   output_dir=tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["protocol"] == "detection" and saved["classes"] == ["car"]
    assert (tmp_path / "run" / "detection_efficiency.png").is_file()
    assert out["label_fractions"] == [0.5, 1.0] and out["test_frames"] == 6 and out["input_size"] == [32, 96]
    assert out["test_boxes"]["boxes"] > out["test_boxes"]["ignored"] > 0
    for name in ("pretrained", "scratch"):
        assert set(saved[name]) == {"0.5", "1.0"}
        assert [saved[name][f]["labelled_frames"] for f in ("0.5", "1.0")] == [3, 6]
        for metrics in saved[name].values():
            assert {"map", "map_50", "map_75", "mar_100"} <= set(metrics)
            assert 0.0 <= metrics["map_75"] <= metrics["map_50"] <= 1.0 and 0.0 <= metrics["map"] <= 1.0


def test_warmup_reaches_the_detector_optimizer() -> None:
    from stssl.modules.detection_transfer import DetectionTransfer

    protocol = DetectionProtocol(max_steps=20, warmup_steps=5, lr=0.01)
    model = DetectionTransfer(build_encoder("resnet18_2d_tiny"), 2, **protocol._head_kwargs())  # as make_model
    out = model.configure_optimizers()
    assert out["optimizer"].param_groups[0]["lr"] == pytest.approx(0.002)  # step 0: 1/5 of the rate
    out["optimizer"].step()
    for _ in range(5):
        out["lr_scheduler"]["scheduler"].step()
    assert out["optimizer"].param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 5 / 20)))


def test_config_parses_into_the_protocol(tmp_path: Path) -> None:
    parser = build_parser()
    cfg = parser.parse_args(["--config", str(ROOT / "configs/eval/detection_world.yaml"),
                             "--encoder.name", "resnet18_2d_tiny", "--protocol.init_args.max_steps", "7"])
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    protocol = instantiate(cfg).protocol
    assert isinstance(protocol, DetectionProtocol)
    assert protocol.max_steps == 7 and protocol.size == (64, 192) and protocol.label_fractions == [0.1, 1.0]
    assert protocol.warmup_steps == 30
    assert protocol.split.train_seeds == [0, 1, 2, 3] and protocol.split.test_seeds == [1000]


@pytest.mark.slow
def test_cli_runs_the_detection_config(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "configs/eval/detection_world.yaml").read_text())
    config["protocol"]["init_args"]["split"]["init_args"].update(
        frames=6, height=32, width=96, root=str(tmp_path / "worlds"), train_seeds=[0], test_seeds=[5])
    config["protocol"]["init_args"].update(size=[32, 96], max_steps=2, batch_size=2, label_fractions=[1.0])
    config["output_dir"] = str(tmp_path / "run")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    eval_main(["--config", str(tmp_path / "cfg.yaml"), "--encoder.name", "resnet18_2d_tiny"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["protocol"] == "detection" and set(metrics["scratch"]) == {"1.0"}
    assert "map_50" in metrics["scratch"]["1.0"] and (tmp_path / "run" / "config.yaml").is_file()


def test_plot_draws_the_named_metric(tmp_path: Path) -> None:
    result = {"a": {"0.1": {"map": 0.1}, "1.0": {"map": 0.3}}, "b": {}}
    path = plot_metric_curve(result, tmp_path / "x" / "curve.png", ["a", "b"], metric="map", ylabel="mAP")
    assert path.is_file() and path.stat().st_size > 1000
    with pytest.raises(KeyError):
        plot_metric_curve({"a": {"1.0": {"miou": 0.1}}}, tmp_path / "y.png", ["a"], metric="map", ylabel="mAP")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="label_fractions"):
        DetectionProtocol(label_fractions=[0.0, 1.0])
    with pytest.raises(ValueError, match="max_steps"):
        DetectionProtocol(max_steps=0)
    with pytest.raises(ValueError, match=r"warmup_steps must be >= 0, got -1"):
        DetectionProtocol(warmup_steps=-1)
