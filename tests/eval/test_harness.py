"""stssl-eval: encoder factories from checkpoints, the protocols on a tiny rendered world, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from stssl.encoders import build_encoder
from stssl.eval.cli import _factories, build_parser, eval_main, run_eval
from stssl.eval.protocols import (
    DepthPoseProtocol,
    PropagationProtocol,
    Protocol,
    SegmentationProtocol,
    WorldSplit,
    dense_frame_features,
    loss_summary,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def _fake_checkpoint(path: Path, name: str = "resnet18_2d_tiny") -> dict[str, torch.Tensor]:
    """A checkpoint holding only trained-looking encoder weights (no saved config: the architecture is named)."""
    torch.manual_seed(123)
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in build_encoder(name).state_dict().items()}
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in state.items()}}, path)
    return state


def test_factories_give_fresh_pretrained_and_scratch_encoders(tmp_path: Path) -> None:
    saved = _fake_checkpoint(tmp_path / "enc.ckpt")
    made = _factories(str(tmp_path / "enc.ckpt"), "resnet18_2d_tiny", {}, baseline=True, seed=0)
    assert set(made) == {"pretrained", "scratch"}
    a, b = made["pretrained"](), made["pretrained"]()
    assert a is not b  # a fresh copy per call: fine-tuning one does not touch the next
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    scratch = made["scratch"]().state_dict()
    assert any(not torch.equal(scratch[k], saved[k]) for k in saved if saved[k].is_floating_point())
    # the scratch init is the seed's, the same on every call and every run
    again = _factories(None, "resnet18_2d_tiny", {}, baseline=True, seed=0)
    assert set(again) == {"scratch"}
    for key, value in again["scratch"]().state_dict().items():
        torch.testing.assert_close(value, scratch[key])


def test_pretraining_world_of_a_checkpoint(tmp_path: Path) -> None:
    from stssl.eval.probe import pretraining_world

    path = tmp_path / "enc.ckpt"
    _fake_checkpoint(path)
    assert pretraining_world(path) is None  # no data-module arguments saved
    ckpt = torch.load(path, weights_only=False)
    for data, expected in [
        ({"sources": None, "world": "driving", "world_train_seeds": [3, 12]}, {"world": "driving", "train_seeds": [3, 12]}),
        ({"sources": ["videos.csv"], "world": "driving", "world_train_seeds": [3, 12]}, None),  # trained on files
        ({"sources": None, "world": None, "world_train_seeds": [3]}, None),
    ]:
        torch.save({**ckpt, "datamodule_hyper_parameters": data}, path)
        assert pretraining_world(path) == expected, data
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        pretraining_world(tmp_path / "nope.ckpt")


class _WorldResult(Protocol):
    """Scores nothing; describes the world scenes it would have scored, as the world protocols do."""

    name = "world_result"

    def __init__(self, world: str, test_seeds: list[int]) -> None:
        self.world, self.test_seeds = world, test_seeds

    def run(self, encoders: dict, out_dir: Path) -> dict:
        return {"world": self.world, "train_seeds": [0], "test_seeds": self.test_seeds}


def test_run_eval_records_test_scenes_seen_in_pretraining(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "enc.ckpt"
    _fake_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    torch.save({**ckpt, "datamodule_hyper_parameters": {"sources": None, "world": "driving",
                                                        "world_train_seeds": list(range(16))}}, path)
    kwargs = {"checkpoint": str(path), "encoder_name": "resnet18_2d_tiny", "output_dir": tmp_path / "run"}
    with caplog.at_level("WARNING", logger="stssl"):
        out = run_eval(_WorldResult("driving", [17, 12, 18]), **kwargs)
    assert out["test_seeds_in_pretraining"] == [12]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test_seeds_in_pretraining"] == [12]
    assert "[12]" in caplog.text and "transductive" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="stssl"):
        assert run_eval(_WorldResult("driving", [1000]), **kwargs)["test_seeds_in_pretraining"] == []
        assert "test_seeds_in_pretraining" not in run_eval(_WorldResult("endoscopy", [12]), **kwargs)
        assert "test_seeds_in_pretraining" not in run_eval(_WorldResult("driving", [12]), encoder_name="r3d_tiny",
                                                           output_dir=tmp_path / "run")  # no checkpoint
    assert not caplog.text


class _FirstWeight(Protocol):
    """Scores each encoder by its first parameter's mean: distinct random inits give distinct scores."""

    name = "first_weight"

    def run(self, encoders: dict, out_dir: Path) -> dict:
        return {name: {"w": float(next(make().parameters()).detach().mean()), "nested": {"n": 1.0}, "tag": "x"}
                for name, make in encoders.items()}


def test_baseline_seeds_score_more_random_inits_and_their_range(tmp_path: Path) -> None:
    _fake_checkpoint(tmp_path / "enc.ckpt")
    out = run_eval(_FirstWeight(), checkpoint=str(tmp_path / "enc.ckpt"), encoder_name="resnet18_2d_tiny",
                   output_dir=tmp_path / "run", seed=3, baseline_seeds=[0, 1])
    assert set(out) >= {"pretrained", "scratch", "scratch_seed0", "scratch_seed1", "scratch_range"}
    scores = [out[k]["w"] for k in ("scratch", "scratch_seed0", "scratch_seed1")]
    assert len(set(scores)) == 3  # three different inits
    spread = out["scratch_range"]
    assert spread["seeds"] == [3, 0, 1] and spread["min"]["nested"] == {"n": 1.0} and "tag" not in spread["max"]
    assert spread["min"]["w"] == min(scores) and spread["max"]["w"] == max(scores)
    assert spread["mean"]["w"] == pytest.approx(sum(scores) / 3)
    # each extra init is that seed's init: the same as the scratch row of a run with that seed
    alone = run_eval(_FirstWeight(), encoder_name="resnet18_2d_tiny", output_dir=tmp_path / "alone", seed=1)
    assert alone["scratch"]["w"] == out["scratch_seed1"]["w"] and "scratch_range" not in alone
    # a random-init-only run (no checkpoint) gets its range too
    spread_no_ckpt = run_eval(_FirstWeight(), encoder_name="resnet18_2d_tiny", output_dir=tmp_path / "r2",
                           baseline_seeds=[1])["scratch_range"]
    assert spread_no_ckpt["min"]["w"] < spread_no_ckpt["max"]["w"]
    with pytest.raises(ValueError, match="must differ"):
        run_eval(_FirstWeight(), encoder_name="resnet18_2d_tiny", output_dir=tmp_path / "x", seed=1, baseline_seeds=[1])
    with pytest.raises(ValueError, match="baseline: false"):
        run_eval(_FirstWeight(), checkpoint=str(tmp_path / "enc.ckpt"), encoder_name="resnet18_2d_tiny",
                 output_dir=tmp_path / "x", baseline=False, baseline_seeds=[1])


def test_metric_spread_skips_non_finite_values() -> None:
    from stssl.eval.cli import metric_spread

    spread = metric_spread([{"a": 1.0, "b": float("nan"), "c": float("nan")}, {"a": 3.0, "b": 2.0, "c": float("nan")}])
    assert spread["min"] == {"a": 1.0, "b": 2.0} and spread["mean"] == {"a": 2.0, "b": 2.0}
    assert metric_spread([]) == {"min": {}, "mean": {}, "max": {}}


def test_run_eval_needs_an_encoder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--checkpoint"):
        run_eval(SegmentationProtocol(), output_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        run_eval(SegmentationProtocol(), checkpoint=str(tmp_path / "missing.ckpt"), output_dir=tmp_path)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        run_eval(DepthPoseProtocol(), encoder_name="r3d_tiny", output_dir=tmp_path)


def _tiny_split(root: Path, **kwargs: object) -> WorldSplit:
    return WorldSplit("driving", train_seeds=[0], test_seeds=[5], frames=6, height=32, width=96, root=str(root),
                      **kwargs)  # type: ignore[arg-type]


@pytest.mark.slow
def test_segmentation_protocol_writes_the_label_efficiency_curve(tmp_path: Path) -> None:
    _fake_checkpoint(tmp_path / "enc.ckpt")
    protocol = SegmentationProtocol(_tiny_split(tmp_path / "worlds"), size=(32, 96), label_fractions=[1.0, 0.5],
                                    max_steps=2, batch_size=2)
    out = run_eval(protocol, checkpoint=str(tmp_path / "enc.ckpt"), encoder_name="resnet18_2d_tiny",
                   output_dir=tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["protocol"] == "segmentation"
    assert (tmp_path / "run" / "label_efficiency.png").is_file()
    assert out["label_fractions"] == [0.5, 1.0] and out["test_frames"] == 6
    for name in ("pretrained", "scratch"):
        assert set(out[name]) == {"0.5", "1.0"}
        assert [out[name][f]["labelled_frames"] for f in ("0.5", "1.0")] == [3, 6]
        assert 0.0 <= out[name]["1.0"]["miou"] <= 1.0 and "iou/road" in out[name]["1.0"]
        for metrics in out[name].values():  # the training loss of every run is kept (2 finite steps here)
            assert metrics["train_loss_nonfinite_steps"] == 0 and metrics["train_loss_first"] > 0
            assert metrics["train_loss_last"] == pytest.approx(metrics["train_loss_first"])  # same 2-step window
    # different initial weights, different results
    assert out["pretrained"]["1.0"]["miou"] != out["scratch"]["1.0"]["miou"]


def test_loss_summary_counts_non_finite_steps() -> None:
    losses = [5.0, 4.0, float("inf"), 3.0, 2.0, 1.0, float("nan")]
    assert loss_summary(losses, window=3) == {"train_loss_first": 4.0, "train_loss_last": 2.0,
                                              "train_loss_nonfinite_steps": 2}
    empty = loss_summary([float("nan")])
    assert math.isnan(empty["train_loss_first"]) and math.isnan(empty["train_loss_last"])
    assert empty["train_loss_nonfinite_steps"] == 1


def test_dense_frame_features_are_causal_per_frame() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("r3d_tiny", width=4).eval()
    video = torch.rand(3, 5, 32, 32)
    feats = dense_frame_features(encoder, video, context=2, batch_size=2)
    stage = [s[1] for s in encoder.spec.strides].index(8)  # by default the stage of spatial stride 8
    assert feats.shape == (5, encoder.spec.channels[stage], 4, 4)
    changed = video.clone()
    changed[:, 4] = torch.rand(3, 32, 32)
    assert torch.allclose(dense_frame_features(encoder, changed, context=2)[:4], feats[:4])  # the past is unchanged
    with pytest.raises(ValueError, match="stage"):
        dense_frame_features(encoder, video, stage=9)


def test_pretraining_configs_keep_the_eval_test_scenes_out() -> None:
    """No config trains on a world scene an evaluation config tests on (a world seed's scene is the same camera path
    at every length and size, so the seeds must not meet)."""
    from stssl.eval.world_tasks import DEFAULT_TEST_SEEDS

    test_seeds = {"driving": set(DEFAULT_TEST_SEEDS)}  # the probe / fine-tuning default split
    for path in sorted((ROOT / "configs/eval").glob("*.yaml")):
        split = (yaml.safe_load(path.read_text())["protocol"].get("init_args") or {}).get("split")
        if split:
            args = split["init_args"]
            test_seeds.setdefault(args["world"], set()).update(args["test_seeds"])
    assert test_seeds["driving"] >= {12, 1000}
    checked = 0
    for path in sorted(ROOT.glob("configs/*/*.yaml")):
        data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
        if "world_train_seeds" in data:
            checked += 1
            world = data.get("world", "driving")
            leaked = set(data["world_train_seeds"]) & test_seeds.get(world, set())
            assert not leaked, f"{path.relative_to(ROOT)} trains on {world} test scenes {sorted(leaked)}"
    assert checked >= 6


@pytest.mark.slow
def test_cli_runs_the_propagation_config(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "configs/eval/propagation_world.yaml").read_text())
    config["protocol"]["init_args"]["split"]["init_args"].update(
        frames=6, height=32, width=96, root=str(tmp_path / "worlds"), test_seeds=[5])
    config["protocol"]["init_args"].update(size=[32, 96], max_frames=4)
    config["output_dir"] = str(tmp_path / "run")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    eval_main(["--config", str(tmp_path / "cfg.yaml"), "--encoder.name", "resnet18_2d_tiny"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["protocol"] == "propagation" and set(metrics["scratch"]) == {"J", "F", "JF"}
    assert 0.0 < metrics["scratch"]["J"] <= 1.0
    assert (tmp_path / "run" / "config.yaml").is_file()
    enc = build_encoder("resnet18_2d_tiny")
    params = sum(p.numel() for p in enc.parameters())
    assert metrics["architecture"] == f"FrameEncoder2D, {params / 1e6:.2f}M parameters, dim {enc.spec.dim}"


def test_propagation_of_the_ground_truth_itself_is_perfect(tmp_path: Path) -> None:
    """An 'encoder' whose features are the one-hot ground-truth classes propagates the labels exactly."""
    from stssl.data.labelled import SemanticClips
    from stssl.encoders.base import Encoder
    from stssl.types import EncoderSpec

    split = _tiny_split(tmp_path / "worlds")
    data = SemanticClips(split.scenes("test"), size=(32, 96))
    lookup = {tuple(data.videos[0][t].flatten().tolist()): t for t in range(data.videos[0].shape[0])}

    class Oracle(Encoder):
        def __init__(self) -> None:
            super().__init__()
            self.spec = EncoderSpec(channels=(7,), strides=((1, 1, 1),))

        def forward_features(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
            frames = (video[:, :, -1] * 255).round().to(torch.uint8)
            masks = torch.stack([data.masks[0][lookup[tuple(f.flatten().tolist())]] for f in frames])
            onehot = torch.nn.functional.one_hot(masks, 7).permute(0, 3, 1, 2).float()
            return (onehot[:, :, None],)

    protocol = PropagationProtocol(split, size=(32, 96), max_frames=6, radius=100.0, topk=5)
    result = protocol.run({"oracle": Oracle}, tmp_path)
    assert result["oracle"]["J"] == pytest.approx(1.0) and result["oracle"]["F"] == pytest.approx(1.0)


def test_eval_configs_parse() -> None:
    parser = build_parser()
    for path in sorted((ROOT / "configs" / "eval").glob("*.yaml")):
        cfg = parser.parse_args(["--config", str(path), "--encoder.name", "r3d_tiny"])
        init = (getattr(parser, "instantiate", None) or parser.instantiate_classes)(cfg)
        assert isinstance(init.protocol, Protocol) and init.protocol.name != Protocol.name, path


def test_propagation_on_a_davis_tree_scores_every_object(tmp_path: Path, eval_trees) -> None:
    masks = eval_trees.make_davis(tmp_path / "davis", T=5, H=24, W=32)
    protocol = PropagationProtocol(size=(24, 32), davis_root=str(tmp_path / "davis"), radius=100.0)
    seqs = protocol.sequences()
    assert [name for name, _, _ in seqs] == ["dog", "bear"]  # the split file's order
    name, frames, gt = seqs[0]
    assert frames.shape == (5, 3, 24, 32) and torch.equal(gt, torch.from_numpy(masks).long())
    result = run_eval(protocol, encoder_name="resnet18_2d_tiny", output_dir=tmp_path / "run")
    assert result["sequences"] == ["dog", "bear"] and 0.0 <= result["scratch"]["JF"] <= 1.0


def test_segmentation_on_a_cityscapes_tree(tmp_path: Path, eval_trees) -> None:
    eval_trees.make_cityscapes(tmp_path / "cs", with_sequence=True, splits=("train", "val"))
    protocol = SegmentationProtocol(cityscapes_root=str(tmp_path / "cs"), size=(4, 8), clip_len=2, frame_stride=1,
                                    label_fractions=[0.5, 1.0], max_steps=1, batch_size=2)
    train = protocol.data("train", 0.5)
    assert len(train) == 1 and train.num_classes == 19
    item = train[0]
    assert item["video"].shape == (3, 2, 4, 8) and item["mask"].shape == (4, 8)
    assert set(item["mask"].unique().tolist()) <= set(range(19)) | {255}
    out = run_eval(protocol, encoder_name="resnet18_2d_tiny", output_dir=tmp_path / "run")
    assert out["cityscapes_root"] == str(tmp_path / "cs") and out["test_frames"] == 2
    assert [out["scratch"][f]["labelled_frames"] for f in ("0.5", "1.0")] == [1, 2]


def _colour_class_folders(root: Path) -> None:
    """Two classes of 16x16 clips, red-ish and blue-ish with noise; three videos per class and split."""
    from stssl.worlds.scene_io import write_video

    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c, colour in enumerate(((255, 0, 0), (0, 0, 255))):
            for i in range(3):
                noise = (torch.rand(4, 16, 16, 3, generator=g) * 60).to(torch.uint8)
                frames = noise + torch.tensor(colour).div(2).to(torch.uint8)
                (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
                write_video(root / split / f"class{c}" / f"v{i}.mp4", frames.numpy(), fps=10)


def test_probe_on_class_folders(tmp_path: Path) -> None:
    from stssl.eval.protocols import ProbeProtocol

    _colour_class_folders(tmp_path)
    protocol = ProbeProtocol(train_root=str(tmp_path / "train"), test_root=str(tmp_path / "test"), clip_len=2,
                             k=3, epochs=20)
    out = run_eval(protocol, encoder_name="r3d_tiny", output_dir=tmp_path / "run")
    assert out["task"] == "class_folders" and out["class_names"] == ["class0", "class1"]
    # colours this different separate even with random features
    assert out["scratch"]["knn_acc"] == 1.0 and out["scratch"]["linear_acc"] == 1.0
    assert out["stage"] == -1 and out["pool"] == "mean"
    protocol.stage = 0  # the stem-side stage sees colour too
    first = run_eval(protocol, encoder_name="r3d_tiny", output_dir=tmp_path / "run0")
    assert first["stage"] == 0 and first["scratch"]["linear_acc"] == 1.0
    protocol.stage = 7
    with pytest.raises(ValueError, match="stage 7 but the encoder's pyramid has 4 levels"):
        run_eval(protocol, encoder_name="r3d_tiny", output_dir=tmp_path / "run7")
    with pytest.raises(ValueError, match="both train_root and test_root"):
        ProbeProtocol(train_root=str(tmp_path / "train"))


@pytest.mark.slow
def test_finetune_on_class_folders_learns_and_counts_labels(tmp_path: Path) -> None:
    from stssl.eval.protocols import FinetuneProtocol

    _colour_class_folders(tmp_path)
    protocol = FinetuneProtocol(train_root=str(tmp_path / "train"), test_root=str(tmp_path / "test"), clip_len=2,
                                clips_per_video=2, label_fractions=[0.5, 1.0], max_steps=25, batch_size=4, lr=3e-3)
    out = run_eval(protocol, encoder_name="r3d_tiny", encoder_kwargs={"width": 4}, output_dir=tmp_path / "run")
    assert out["protocol"] == "finetune" and out["classes"] == ["class0", "class1"] and out["test_frames"] == 12
    assert [out["scratch"][f]["labelled_frames"] for f in ("0.5", "1.0")] == [6, 12]
    assert out["scratch"]["1.0"]["acc"] == 1.0 and out["scratch"]["1.0"]["test_clips"] == 12
    assert (tmp_path / "run" / "finetune_efficiency.png").is_file()


def test_classification_transfer_frozen_and_metrics() -> None:
    from stssl.modules.finetune import ClassificationTransfer

    torch.manual_seed(0)
    model = ClassificationTransfer(build_encoder("r3d_tiny", width=4), 3, freeze_encoder=True)
    model.train()
    assert not model.encoder.training
    video, label = torch.rand(4, 3, 2, 16, 16), torch.tensor([0, 1, 2, 0])
    torch.nn.functional.cross_entropy(model(video), label).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    # accuracy and mean per-class accuracy from the accumulated confusion matrix
    model._confusion["test"] = torch.tensor([[2, 0, 0], [1, 1, 0], [0, 0, 0]])
    from types import SimpleNamespace

    model._trainer = SimpleNamespace(sanity_checking=False, strategy=SimpleNamespace(reduce=lambda x, reduce_op: x))
    model.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    model._eval_end("test")
    assert model.last_metrics["acc"] == 0.75 and model.last_metrics["mean_class_acc"] == 0.75


def test_world_propagation_objects_are_the_first_frame_classes_numbered_from_one(tmp_path: Path) -> None:
    """DAVIS counts ids 1..max(first frame) as objects: an unused id in between would score as a free J = F = 1."""
    from stssl.data.labelled import SemanticClips

    split = _tiny_split(tmp_path / "worlds")
    (name, frames, gt), = PropagationProtocol(split, size=(32, 96), max_frames=6).sequences()
    classes = SemanticClips(split.scenes("test"), size=(32, 96)).masks[0]
    present = classes[0].unique()
    assert torch.equal(gt[0].unique(), torch.arange(1, len(present) + 1))
    # same class, same object id, in every frame; classes absent from frame 0 are background
    for c, obj in zip(present.tolist(), range(1, len(present) + 1), strict=True):
        assert bool((gt[classes == c] == obj).all())
    assert bool((gt[~torch.isin(classes, present)] == 0).all())
