"""The frozen dense probes: pixel sampling, upsampled pixel features, the linear map's commuting with upsampling, and
the protocol on a tiny rendered world (an oracle encoder scores 1, a random one less)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stssl.encoders import build_encoder
from stssl.encoders.base import Encoder
from stssl.eval.cli import run_eval
from stssl.eval.dense_probe import DenseProbeProtocol, frame_feature_maps, pixel_features, sample_pixels
from stssl.eval.probe import fit_linear_classifier
from stssl.eval.protocols import WorldSplit
from stssl.types import EncoderSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sample_pixels_draws_distinct_labelled_pixels() -> None:
    masks = torch.zeros(3, 4, 5, dtype=torch.long)
    masks[1] = 255
    masks[2, :, :2] = 255
    frame, y, x = sample_pixels(masks, 10, seed=3)
    assert len(frame) == 10 and bool((masks[frame, y, x] != 255).all())
    assert len({(int(f), int(r), int(c)) for f, r, c in zip(frame, y, x, strict=True)}) == 10
    assert frame.tolist() == sorted(frame.tolist())
    again = sample_pixels(masks, 10, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((frame, y, x), again, strict=True))  # seeded
    assert not torch.equal(sample_pixels(masks, 10, seed=4)[2], x)
    every = sample_pixels(masks, 1000)  # fewer left than asked: all of them
    assert len(every[0]) == 20 + 12 and set(every[0].tolist()) == {0, 2}
    assert len(sample_pixels(masks, 1000, ignore_index=None)[0]) == 60
    with pytest.raises(ValueError, match="ignore_index=255"):
        sample_pixels(torch.full((1, 2, 2), 255), 3)
    with pytest.raises(ValueError, match="count"):
        sample_pixels(masks, 0)


def test_pixel_features_are_the_bilinearly_upsampled_maps() -> None:
    maps = torch.randn(3, 5, 3, 4)
    frame, y, x = sample_pixels(torch.zeros(3, 12, 16, dtype=torch.long), 50, seed=0)
    up = F.interpolate(maps, size=(12, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(pixel_features(maps, (12, 16), frame, y, x), up[frame, :, y, x], atol=1e-6)


def test_linear_logits_commute_with_bilinear_upsampling() -> None:
    """The protocol upsamples logits instead of features: the same numbers, for a standardised linear map."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 6, generator=g) * 3 + 1, torch.randint(0, 4, (200,), generator=g)
    probe = fit_linear_classifier(x, y, epochs=20, num_classes=4)
    maps = torch.randn(2, 6, 3, 5, generator=g)
    up_logits = F.interpolate(probe.logits_map(maps), size=(9, 15), mode="bilinear", align_corners=False)
    logits_up = probe.logits_map(F.interpolate(maps, size=(9, 15), mode="bilinear", align_corners=False))
    assert torch.allclose(up_logits, logits_up, atol=1e-4)
    assert probe.logits(x).shape == (200, 4) and probe.mean is not None
    with pytest.raises(ValueError, match="logits_map"):
        probe.logits_map(torch.randn(2, 5, 3, 3))


def _split(root: Path) -> WorldSplit:
    return WorldSplit("driving", train_seeds=[0], test_seeds=[5], frames=6, height=32, width=96, root=str(root))


def _oracle(protocol: DenseProbeProtocol, stride: int) -> type[Encoder]:
    """An 'encoder' whose map is the one-hot ground truth of the clip's last frame (average-pooled by ``stride``)."""
    lookup = {}
    for split in ("train", "test"):
        data = protocol.data(split)
        for video, masks in zip(data.videos, data.masks, strict=True):
            lookup.update({tuple(video[t].flatten().tolist()): masks[t] for t in range(video.shape[0])})
    num_classes = protocol.data("test").num_classes

    class Oracle(Encoder):
        def __init__(self) -> None:
            super().__init__()
            self.spec = EncoderSpec(channels=(num_classes,), strides=((1, stride, stride),))
            self.unused = torch.nn.Linear(1, 1)  # an encoder has parameters (where it runs)

        def forward_features(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
            frames = (video[:, :, -1] * 255).round().to(torch.uint8)
            masks = torch.stack([lookup[tuple(f.flatten().tolist())] for f in frames])
            onehot = F.one_hot(masks, num_classes).permute(0, 3, 1, 2).float()
            return (F.avg_pool2d(onehot, stride)[:, :, None],)

    return Oracle


def test_an_oracle_encoder_scores_one_and_a_random_one_less(tmp_path: Path) -> None:
    # every train pixel (3 frames of 32x96) in both probes: lane marking covers 3 of them
    protocol = DenseProbeProtocol(_split(tmp_path / "worlds"), size=(32, 96), frame_step=2, train_pixels=10000,
                                  knn_train_pixels=10000, knn_test_pixels=1500, epochs=50, bn_recalibrate=False)
    result = protocol.run({"oracle": _oracle(protocol, 1), "coarse": _oracle(protocol, 4),
                           "random": lambda: build_encoder("resnet18_2d_tiny")}, tmp_path)
    assert result["train_frames"] == 3 and result["test_frames"] == 3 and "road" in result["classes"]
    oracle = result["oracle"]
    assert oracle["linear"]["miou"] == pytest.approx(1.0) and oracle["knn"]["miou"] == pytest.approx(1.0)
    assert oracle["train_pixels"] == 3 * 32 * 96 and oracle["knn_test_pixels"] == 1500 and oracle["feature_size"] == [32, 96]
    coarse = result["coarse"]  # 8x24 cells: edges blur, the layout stays
    assert coarse["feature_size"] == [8, 24] and 0.5 < coarse["linear"]["pixel_accuracy"] < 1.0
    rand = result["random"]
    assert rand["stage"] == 2  # the stage of spatial stride 8 by default
    for probe in ("linear", "knn"):
        assert 0.0 < rand[probe]["miou"] < 1.0 and "iou/road" in rand[probe]
        assert rand[probe]["pixel_accuracy"] < oracle[probe]["pixel_accuracy"]


def test_run_eval_scores_a_3d_cnn_on_clips_with_baseline_seeds(tmp_path: Path) -> None:
    protocol = DenseProbeProtocol(_split(tmp_path / "worlds"), size=(32, 96), clip_len=2, frame_step=1, stage=-1,
                                  train_pixels=2000, knn_train_pixels=1000, knn_test_pixels=1000, epochs=20)
    out = run_eval(protocol, encoder_name="r3d_tiny", output_dir=tmp_path / "run", baseline_seeds=[1])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["protocol"] == "dense_probe" and out["train_frames"] == 5  # frame 0 has no clip before it
    assert out["scratch"]["stage"] == -1 and out["scratch"]["feature_size"] == [2, 6]
    assert out["scratch"]["linear"]["miou"] != out["scratch_seed1"]["linear"]["miou"]
    assert set(saved["scratch_range"]["max"]) >= {"linear", "knn"}


def test_frame_feature_maps_errors_name_the_input() -> None:
    encoder = build_encoder("resnet18_2d_tiny")
    video = torch.zeros(2, 3, 1, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="no 'mask'"):
        frame_feature_maps(encoder, [{"video": video}])
    with pytest.raises(ValueError, match=r"\['mask'\]"):
        frame_feature_maps(encoder, [{"video": video, "mask": torch.zeros(2, 16, 32, dtype=torch.long)}])
    with pytest.raises(ValueError, match="stage 7"):
        frame_feature_maps(encoder, [{"video": video, "mask": torch.zeros(2, 32, 32, dtype=torch.long)}], stage=7)
    with pytest.raises(ValueError, match="no batches"):
        frame_feature_maps(encoder, [])
    maps, masks = frame_feature_maps(encoder, [{"video": video, "mask": torch.zeros(2, 32, 32, dtype=torch.long)}],
                                     stage=0)
    assert maps.shape == (2, encoder.spec.channels[0], 16, 16) and masks.shape == (2, 32, 32)
    with pytest.raises(ValueError, match="train_pixels"):
        DenseProbeProtocol(train_pixels=0)
    with pytest.raises(ValueError, match="temperature"):
        DenseProbeProtocol(temperature=0.0)


def test_a_cityscapes_tree_trains_and_scores_no_ignored_pixel(tmp_path: Path, eval_trees) -> None:
    eval_trees.make_cityscapes(tmp_path / "cs", with_sequence=False, splits=("train", "val"))
    protocol = DenseProbeProtocol(size=(16, 32), cityscapes_root=str(tmp_path / "cs"), stage=0, train_pixels=5000,
                                  knn_train_pixels=500, knn_test_pixels=500, epochs=5)
    train = protocol.data("train")
    masks = torch.stack([train[i]["mask"] for i in range(len(train))])
    assert len(train) == 2 and train.num_classes == 19 and bool((masks == 255).any())
    result = protocol.run({"random": lambda: build_encoder("resnet18_2d_tiny")}, tmp_path)
    assert result["cityscapes_root"] == str(tmp_path / "cs") and len(result["classes"]) == 19
    kept = int((masks != 255).sum())
    assert 0 < kept < masks.numel() and result["random"]["train_pixels"] == kept  # every pixel but the ignored
    assert 0.0 <= result["random"]["linear"]["pixel_accuracy"] <= 1.0 and "iou/road" in result["random"]["knn"]
