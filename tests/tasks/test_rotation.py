"""Rotation prediction: the generator's labels undo the rotation, seeded draws, errors, gradients, learning."""

from __future__ import annotations

import pytest
import torch

from stssl.encoders.frame2d import resnet18_2d_tiny
from stssl.encoders.resnet3d import r3d_tiny
from stssl.tasks.rotation import RotationTask, make_rotation_batch, rotate_clips


def test_rotate_clips_is_rot90_and_inverts() -> None:
    x = torch.rand(4, 3, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    k = torch.tensor([0, 1, 2, 3])
    y = rotate_clips(x, k)
    for i in range(4):
        assert torch.equal(y[i], torch.rot90(x[i], i, dims=(-2, -1)))
    assert torch.equal(rotate_clips(y, -k), x)
    # a quarter turn is counter-clockwise as displayed: the top row becomes the left column, read bottom-up
    assert torch.equal(y[1, :, :, :, 0], x[1, :, :, 0, :].flip(-1))


@pytest.mark.parametrize("crop", ["center", "random"])
def test_labels_undo_the_rotation_on_the_same_window_of_every_frame(crop: str) -> None:
    video = torch.rand(6, 3, 5, 16, 24, generator=torch.Generator().manual_seed(1))
    out = make_rotation_batch(video, clip_len=3, crop=crop, generator=torch.Generator().manual_seed(2))
    assert out.clips.shape == (6, 3, 3, 16, 16) and out.label.shape == (6,)
    assert ((out.label >= 0) & (out.label < 4)).all()
    unrotated = rotate_clips(out.clips, -out.label)
    for b in range(6):
        s, (top, left) = int(out.start[b]), out.corner[b].tolist()
        assert torch.equal(unrotated[b], video[b, :, s : s + 3, top : top + 16, left : left + 16])
    if crop == "center":
        assert (out.corner == torch.tensor([0, 4])).all()


def test_all_rotations_gives_every_angle_of_every_sample() -> None:
    video = torch.rand(2, 3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = make_rotation_batch(video, all_rotations=True, generator=torch.Generator().manual_seed(0))
    assert out.label.tolist() == [0, 1, 2, 3, 0, 1, 2, 3] and out.source.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert torch.equal(rotate_clips(out.clips, -out.label), video[out.source])
    assert not torch.equal(out.clips[0], out.clips[1])


def test_seeded_generator_gives_identical_output() -> None:
    video = torch.rand(8, 3, 4, 12, 16, generator=torch.Generator().manual_seed(0))
    a = make_rotation_batch(video, 2, "random", generator=torch.Generator().manual_seed(5))
    b = make_rotation_batch(video, 2, "random", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.clips, b.clips) and torch.equal(a.label, b.label) and torch.equal(a.corner, b.corner)
    labels = {tuple(make_rotation_batch(video, generator=torch.Generator().manual_seed(s)).label.tolist())
              for s in range(10)}
    assert len(labels) > 1


def test_errors_name_the_input() -> None:
    with pytest.raises(ValueError, match="frames are 16x24, not square.*crop='center'"):
        make_rotation_batch(torch.rand(1, 3, 1, 16, 24), crop="none")
    with pytest.raises(ValueError, match="RotationTask: video has T=2 frames, needs clip_len = 3"):
        enc = r3d_tiny(width=4)
        task = RotationTask(clip_len=3)
        task.build(enc.spec)
        task({"video": torch.rand(1, 3, 2, 16, 16)}, enc)
    with pytest.raises(ValueError, match="RotationTask: unknown crop 'middle'"):
        RotationTask(crop="middle")
    with pytest.raises(ValueError, match="make_rotation_batch video: expected shape"):
        make_rotation_batch(torch.rand(3, 16, 16))
    with pytest.raises(RuntimeError, match="call build"):
        RotationTask()({"video": torch.rand(1, 3, 1, 16, 16)}, r3d_tiny(width=4))


@pytest.mark.parametrize("make_encoder", [lambda: r3d_tiny(width=8), resnet18_2d_tiny], ids=["r3d", "frame2d"])
@pytest.mark.parametrize("clip_len", [1, 3])
def test_gradients_reach_every_parameter(make_encoder, clip_len: int) -> None:
    torch.manual_seed(0)
    enc = make_encoder()
    task = RotationTask(clip_len=clip_len, hidden=16, all_rotations=clip_len == 1)
    task.build(enc.spec)
    out = task({"video": torch.rand(2, 3, 4, 32, 48)}, enc, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in list(task.named_parameters()) + list(enc.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0 or "bias" in name, name


def _oriented_images(n: int, generator: torch.Generator) -> torch.Tensor:
    """Noise images with a bright band along the top edge: their orientation is visible."""
    x = torch.rand(n, 3, 1, 32, 32, generator=generator) * 0.5
    x[..., :6, :] += 0.5
    return x


def test_learns_orientation_above_chance() -> None:
    """A few dozen steps on images whose 'up' is visible: held-out accuracy far above chance (1/4)."""
    torch.manual_seed(0)
    enc = r3d_tiny(width=4)
    task = RotationTask(hidden=32, dropout=0.0)
    task.build(enc.spec)
    opt = torch.optim.Adam(list(enc.parameters()) + list(task.parameters()), lr=3e-3)
    data = torch.Generator().manual_seed(0)
    for step in range(20):
        out = task({"video": _oriented_images(16, data)}, enc, torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    enc.eval()
    task.eval()
    with torch.no_grad():
        held_out = task({"video": _oriented_images(64, torch.Generator().manual_seed(99))}, enc,
                        torch.Generator().manual_seed(1000))
    assert float(held_out.logs["acc"]) > 0.6
