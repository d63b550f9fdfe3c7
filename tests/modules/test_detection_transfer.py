"""DetectionTransfer: the clip reaches the backbone, frozen vs fine-tuned encoders, COCO mAP, and learning."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from stssl.data.box_clips import BoxClips, collate_boxes
from stssl.encoders import build_encoder
from stssl.modules.detection_transfer import ClipTransform, DetectionTransfer, PyramidBackbone, default_stages

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _encoder(name: str = "resnet18_2d_tiny", **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder(name, **kwargs)


def _batch(B: int = 2, T: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "video": torch.rand(B, 3, T, 32, 64, generator=g),
        "boxes": [torch.tensor([[4.0, 6.0, 28.0, 22.0], [40.0, 8.0, 60.0, 30.0]]), torch.zeros(0, 4)][:B],
        "labels": [torch.tensor([1, 2]), torch.zeros(0, dtype=torch.int64)][:B],
        "iscrowd": [torch.tensor([False, True]), torch.zeros(0, dtype=torch.bool)][:B],
    }


@pytest.mark.parametrize(("name", "stages", "strides"), [
    ("resnet18_2d_tiny", (2, 3, 4), (8, 16, 32)),
    ("r3d_tiny", (2, 3), (8, 16)),
    ("vit_micro", (3,), (8,)),  # one stride throughout: the deepest block
])
def test_backbone_levels_follow_the_encoder_pyramid(name: str, stages: tuple, strides: tuple) -> None:
    encoder = _encoder(name)
    assert default_stages(encoder.spec) == stages
    backbone = PyramidBackbone(encoder, out_channels=32, extra_levels="p6p7").eval()
    assert backbone.strides == (*strides, strides[-1] * 2, strides[-1] * 4)
    video = torch.rand(2, 3, 4, 64, 128)
    folded = backbone(video.flatten(1, 2))  # (B, 3 * T, H, W) as the transform passes it
    assert [tuple(f.shape) for f in folded.values()] == [(2, 32, -(-64 // s), 128 // s) for s in backbone.strides]
    for a, b in zip(folded.values(), backbone(video).values(), strict=True):
        torch.testing.assert_close(a, b)


def test_backbone_sees_the_whole_clip_and_decodes_its_last_frame() -> None:
    video = torch.rand(1, 3, 4, 32, 32)
    early = video.clone()
    early[:, :, 0] = torch.rand(1, 3, 32, 32)
    frame_model = PyramidBackbone(_encoder("resnet18_2d_tiny"), out_channels=32).eval()
    clip_model = PyramidBackbone(_encoder("r3d_tiny", width=4), out_channels=32).eval()
    with torch.no_grad():
        # a frame encoder looks at the last frame only; a 3D CNN's last time step also sees the frames before
        torch.testing.assert_close(frame_model(video)["0"], frame_model(early)["0"])
        assert not torch.allclose(clip_model(video)["0"], clip_model(early)["0"])


def test_clip_transform_normalises_pads_and_never_resizes() -> None:
    transform = ClipTransform(mean=0.5, std=0.25, size_divisible=32).eval()
    images = [torch.full((6, 30, 50), 0.75), torch.full((6, 20, 64), 0.25)]
    target = [{"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "labels": torch.tensor([1])}] * 2
    batch, out = transform(images, target)
    assert batch.tensors.shape == (2, 6, 32, 64) and batch.image_sizes == [(30, 50), (20, 64)]
    assert batch.tensors[0, :, :30, :50].eq(1.0).all() and batch.tensors[1, :, :20].eq(-1.0).all()
    assert batch.tensors[0, :, 30:].eq(0).all()  # padding
    assert out is not None and out[0]["boxes"].tolist() == [[1.0, 2.0, 3.0, 4.0]]
    dets = [{"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]])}]
    assert transform.postprocess(dets, [(30, 50)], [(30, 50)])[0]["boxes"].tolist() == [[1.0, 2.0, 3.0, 4.0]]


def test_detections_are_per_clip_and_inside_the_frame() -> None:
    model = DetectionTransfer(_encoder(), num_classes=3).eval()
    with torch.no_grad():
        dets = model((_batch()["video"] * 255).to(torch.uint8))
    assert len(dets) == 2
    for det in dets:
        assert det["boxes"].shape[-1] == 4 and det["scores"].shape == det["labels"].shape == det["boxes"].shape[:1]
        assert (det["boxes"][:, [0, 2]] <= 64).all() and (det["boxes"][:, [1, 3]] <= 32).all()
        assert len(det["labels"]) and ((det["labels"] >= 1) & (det["labels"] <= 2)).all()  # never background


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_frozen_encoder_gets_no_gradient_and_stays_in_eval() -> None:
    model = DetectionTransfer(_encoder(), num_classes=3, freeze_encoder=True, max_steps=5)
    model.train()
    assert not model.encoder.training and model.detector.head.training and model.backbone.fpn.training
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    loss = model.training_step(_batch(), 0)
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("detector.backbone.encoder"))
    for key, value in model.encoder.state_dict().items():  # BatchNorm statistics too
        torch.testing.assert_close(value, before[key])
    opt = model.configure_optimizers()["optimizer"]
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == len(
        [p for p in model.parameters() if p.requires_grad])


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_fine_tuned_encoder_learns_with_its_own_lr() -> None:
    model = DetectionTransfer(_encoder(), num_classes=3, lr=1e-3, encoder_lr_scale=0.1, max_steps=10)
    model.training_step(_batch(), 0).backward()
    assert all(p.grad is not None for p in model.parameters())
    opt = model.configure_optimizers()["optimizer"]
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize(("name", "kwargs", "T"), [("r3d_tiny", {"width": 4}, 4), ("vit_micro", {}, 2)])
def test_clip_encoders_train_end_to_end(name: str, kwargs: dict, T: int) -> None:
    model = DetectionTransfer(_encoder(name, **kwargs), num_classes=3, extra_levels="pool")
    loss = model.training_step(_batch(T=T), 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_crowd_boxes_are_not_trained_on() -> None:
    batch = _batch()
    targets = DetectionTransfer._targets(batch, with_crowd=False)
    assert targets[0]["boxes"].tolist() == [[4.0, 6.0, 28.0, 22.0]] and targets[0]["labels"].tolist() == [1]
    assert DetectionTransfer._targets(batch, with_crowd=True)[0]["iscrowd"].tolist() == [0, 1]


class _Oracle(DetectionTransfer):
    """Predicts given boxes: the clip's index is written in its pixels."""

    answers: list[dict[str, torch.Tensor]] = []

    def forward(self, video, targets=None):  # type: ignore[no-untyped-def,override]
        return [self.answers[int(v[0, 0, 0, 0])] for v in video]


def _oracle_map(answers: list[dict[str, torch.Tensor]], items: list[dict]) -> dict:
    model = _Oracle(_encoder(), num_classes=3, class_names=["car", "truck"])
    model.answers = answers
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    out = trainer.test(model, DataLoader(items, batch_size=2, collate_fn=collate_boxes), verbose=False)
    assert out[0]["test/map"] == pytest.approx(model.last_metrics["map"])
    return model.last_metrics


def test_ground_truth_as_predictions_scores_map_one() -> None:
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(5):
        n = i % 3  # 0, 1 or 2 boxes: an empty frame is a negative
        xy = torch.rand(n, 2, generator=g) * 40
        boxes = torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 20], 1)
        items.append({"video": torch.full((3, 1, 32, 64), float(i)), "boxes": boxes,
                      "labels": torch.tensor([1, 2] if i % 2 == 0 else [2, 1])[:n], "iscrowd": torch.zeros(n, dtype=torch.bool),
                      "scene": 0, "frame": i})
    items[2]["iscrowd"][1] = True  # an ignored box: not predicted, not a miss
    answers = [{"boxes": it["boxes"][~it["iscrowd"]], "labels": it["labels"][~it["iscrowd"]],
                "scores": torch.linspace(0.9, 0.5, int((~it["iscrowd"]).sum()))} for it in items]
    perfect = _oracle_map(answers, items)
    assert perfect["map"] == pytest.approx(1.0) and perfect["map_50"] == perfect["map_75"] == pytest.approx(1.0)
    assert perfect["ap/car"] == pytest.approx(1.0) and perfect["ap/truck"] == pytest.approx(1.0)
    shifted = [{**a, "boxes": a["boxes"] + torch.tensor([3.0, 0.0, 3.0, 0.0])} for a in answers]
    worse = _oracle_map(shifted, items)
    assert worse["map_50"] == pytest.approx(1.0) and worse["map"] < 0.9


def test_bad_inputs_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        DetectionTransfer(_encoder(), num_classes=1)
    with pytest.raises(ValueError, match="class_names"):
        DetectionTransfer(_encoder(), num_classes=3, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="multiple of 32"):
        DetectionTransfer(_encoder(), num_classes=2, fpn_channels=48)
    with pytest.raises(ValueError, match="stages"):
        PyramidBackbone(_encoder(), stages=[3, 2])
    with pytest.raises(ValueError, match="extra_levels"):
        PyramidBackbone(_encoder(), extra_levels="p6")
    with pytest.raises(ValueError, match="multiple of 3"):
        PyramidBackbone(_encoder())(torch.rand(1, 4, 32, 32))


@pytest.mark.slow
def test_learns_to_detect_cars_in_a_world_scene(tiny_driving_scene: Path) -> None:
    """40 steps on the scene's frames: the loss falls and mAP@0.5 on them beats the untrained detector."""
    data = BoxClips([tiny_driving_scene], size=(48, 144), min_box_size=4.0)
    loader = DataLoader(data, batch_size=4, shuffle=True, collate_fn=collate_boxes,
                        generator=torch.Generator().manual_seed(0))
    fixed = collate_boxes([data[i] for i in range(len(data))])
    L.seed_everything(0, verbose=False)
    model = DetectionTransfer(_encoder(), num_classes=2, class_names=data.categories, lr=3e-3, max_steps=40)

    def score() -> tuple[float, dict]:
        model.train()
        with torch.no_grad():
            loss = float(sum(model(fixed["video"], model._targets(fixed, with_crowd=False)).values()))
        trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.test(model, DataLoader(data, batch_size=6, collate_fn=collate_boxes), verbose=False)
        return loss, dict(model.last_metrics)

    loss_before, before = score()
    trainer = L.Trainer(max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, loader)
    loss_after, after = score()
    print(f"loss {loss_before:.3f} -> {loss_after:.3f}; mAP {before['map']:.3f} -> {after['map']:.3f}, "
          f"mAP50 {before['map_50']:.3f} -> {after['map_50']:.3f}")
    assert loss_after < 0.7 * loss_before, (loss_before, loss_after)
    assert after["map_50"] > before["map_50"] + 0.2, (before, after)
