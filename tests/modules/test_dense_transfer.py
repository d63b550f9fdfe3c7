"""SegmentationTransfer: shapes, frozen vs fine-tuned encoders, and that it learns to segment a world scene."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from stssl.data.labelled import SemanticClips
from stssl.encoders import build_encoder
from stssl.eval.segmentation import SegmentationMeter
from stssl.modules.dense_transfer import SegmentationTransfer


def _encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder("r3d_tiny", width=4)


def test_forward_segments_the_last_frame() -> None:
    model = SegmentationTransfer(_encoder(), num_classes=5)
    video = torch.rand(2, 3, 4, 32, 48)
    assert model(video).shape == (2, 5, 32, 48)
    uint8 = (video * 255).round().to(torch.uint8)
    torch.testing.assert_close(model(uint8), model(uint8.float() / 255))
    # the output depends on the last frame (it is decoded) ...
    changed = video.clone()
    changed[:, :, -1] = torch.rand_like(changed[:, :, -1])
    assert not torch.allclose(model(video), model(changed))


def test_frozen_encoder_gets_no_gradient_and_stays_in_eval() -> None:
    model = SegmentationTransfer(_encoder(), num_classes=3, freeze_encoder=True)
    model.train()
    assert not model.encoder.training and model.decoder.training
    loss = model._loss({"video": torch.rand(2, 3, 2, 32, 32), "mask": torch.randint(0, 3, (2, 32, 32))})[0]
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    opt = model.configure_optimizers()
    assert len(opt.param_groups) == 1  # the decoder only


def test_fine_tuned_encoder_learns_with_its_own_lr() -> None:
    model = SegmentationTransfer(_encoder(), num_classes=3, lr=1e-3, encoder_lr_scale=0.1, max_steps=10)
    loss = model._loss({"video": torch.rand(2, 3, 2, 32, 32), "mask": torch.randint(0, 3, (2, 32, 32))})[0]
    loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    opt = model.configure_optimizers()["optimizer"]
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4]


def test_bad_inputs_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationTransfer(_encoder(), num_classes=1)
    with pytest.raises(ValueError, match="class_names"):
        SegmentationTransfer(_encoder(), num_classes=3, class_names=["a"])
    model = SegmentationTransfer(_encoder(), num_classes=3)
    with pytest.raises(ValueError, match="mask"):
        model._loss({"video": torch.rand(1, 3, 2, 32, 32), "mask": torch.zeros(1, 16, 16, dtype=torch.long)})


@pytest.mark.slow
def test_learns_to_segment_a_world_scene(tiny_driving_scene: Path) -> None:
    """60 steps on the scene's frames: mIoU on them beats the untrained network and predicting the majority class."""
    data = SemanticClips([tiny_driving_scene], size=(32, 96))
    loader = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    L.seed_everything(0, verbose=False)
    model = SegmentationTransfer(build_encoder("resnet18_2d_tiny"), data.num_classes, lr=3e-3)

    def score() -> float:
        meter = SegmentationMeter(data.num_classes)
        model.eval()
        with torch.no_grad():
            for batch in DataLoader(data, batch_size=6):
                meter.update(model(batch["video"]).argmax(1), batch["mask"])
        model.train()
        return meter.compute()["miou"]

    before = score()
    masks = torch.stack([data[i]["mask"] for i in range(len(data))])
    majority = SegmentationMeter(data.num_classes)
    majority.update(torch.full_like(masks, int(masks.flatten().mode().values)), masks)
    trainer = L.Trainer(max_steps=60, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, loader)
    after = score()
    print(f"mIoU before {before:.3f}, after {after:.3f}, majority {majority.compute()['miou']:.3f}")
    assert after > before + 0.2 and after > majority.compute()["miou"] + 0.2, (before, after)
