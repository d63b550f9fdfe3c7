"""Relative patch position: the label is the neighbour's direction, patches come from where they say, errors,
gradients, and learning above chance."""

from __future__ import annotations

import pytest
import torch

from stssl.encoders.frame2d import resnet18_2d_tiny
from stssl.encoders.resnet3d import r3d_tiny
from stssl.tasks.relative_position import (
    NEIGHBOR_CELLS,
    NEIGHBOR_OFFSETS,
    RelativePositionTask,
    make_relative_position_batch,
)


def test_neighbour_table() -> None:
    assert NEIGHBOR_OFFSETS.tolist() == [[-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 1], [1, -1], [1, 0], [1, 1]]
    assert 4 not in NEIGHBOR_CELLS.tolist()


@pytest.mark.parametrize("crop", ["random", "none"])
def test_patches_come_from_the_centre_and_the_labelled_neighbour(crop: str) -> None:
    video = torch.rand(32, 3, 4, 30, 36, generator=torch.Generator().manual_seed(0))
    out = make_relative_position_batch(video, clip_len=2, crop=crop, patch_frac=0.6, jitter=1.0, channel_jitter=1,
                                       generator=torch.Generator().manual_seed(1))
    ph, pw = out.patches.shape[-2:]
    cell_h, cell_w = 10, (10 if crop == "random" else 12)
    assert (ph, pw) == (6, round(0.6 * cell_w))
    assert len(set(out.label.tolist())) > 4 and ((out.label >= 0) & (out.label < 8)).all()
    side_w = 30 if crop == "random" else 36
    for b in range(32):
        s, (ct, cl) = int(out.start[b]), out.corner[b].tolist()
        window = video[b, :, s : s + 2, ct : ct + 30, cl : cl + side_w]
        for p in range(2):
            for c in range(3):
                t, lf = int(out.top[b, p, c]), int(out.left[b, p, c])
                assert torch.equal(out.patches[b, p, c], window[c, :, t : t + ph, lf : lf + pw])
        # a patch's corner lies 0-5 px (+-1 of channel jitter) into its cell: the cell is the nearest one
        def cell_of(p: int) -> tuple[int, int]:
            t, lf = float(out.top[b, p].float().mean()), float(out.left[b, p].float().mean())  # noqa: B023
            return round((t - 2) / cell_h), round((lf - 2) / cell_w)

        centre, other = cell_of(0), cell_of(1)
        assert centre == (1, 1)
        assert [other[0] - 1, other[1] - 1] == NEIGHBOR_OFFSETS[out.label[b]].tolist()


def test_patches_never_touch() -> None:
    """Gaps: with ``jitter < 1`` a patch and its neighbour are separated by at least a few pixels."""
    video = torch.rand(64, 3, 1, 60, 60, generator=torch.Generator().manual_seed(0))
    out = make_relative_position_batch(video, patch_frac=0.6, jitter=0.5, generator=torch.Generator().manual_seed(0))
    dy = (out.top[:, 1, 0] - out.top[:, 0, 0]).abs()
    dx = (out.left[:, 1, 0] - out.left[:, 0, 0]).abs()
    size = out.patches.shape[-1]
    gap = torch.maximum(dy, dx) - size  # the larger axis offset crosses one gap
    assert (gap >= 4).all()  # cells of 20 px, patches of 12: gap 8 +- 4 of jitter


def test_seeded_generator_and_colour_dropping() -> None:
    video = torch.rand(8, 3, 2, 32, 40, generator=torch.Generator().manual_seed(0))
    kw = dict(clip_len=2, channel_drop_p=1.0)
    a = make_relative_position_batch(video, generator=torch.Generator().manual_seed(7), **kw)
    b = make_relative_position_batch(video, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(a.patches, b.patches) and torch.equal(a.label, b.label)
    assert ((a.color_mode >= 2) & (a.color_mode <= 4)).all()
    flat, modes = a.patches.flatten(0, 1), a.color_mode.flatten()
    for i in range(len(modes)):
        for c in set(range(3)) - {int(modes[i]) - 2}:
            assert (flat[i, c] - 0.5).abs().max() < 0.05


def test_errors_name_the_input() -> None:
    with pytest.raises(ValueError, match="make_relative_position_batch: a 2x30 frame is too small for a 3x3 grid"):
        make_relative_position_batch(torch.rand(1, 3, 1, 2, 30), crop="none")
    with pytest.raises(ValueError, match=r"RelativePositionTask: patch_frac must be in \(0.0, 1.0\]"):
        RelativePositionTask(patch_frac=0.0)
    with pytest.raises(ValueError, match="RelativePositionTask: video has T=1 frames, needs clip_len = 2"):
        enc = r3d_tiny(width=4)
        task = RelativePositionTask(clip_len=2)
        task.build(enc.spec)
        task({"video": torch.rand(1, 3, 1, 32, 32)}, enc)


@pytest.mark.parametrize("make_encoder", [lambda: r3d_tiny(width=8), resnet18_2d_tiny], ids=["r3d", "frame2d"])
@pytest.mark.parametrize("clip_len", [1, 2])
def test_gradients_reach_every_parameter(make_encoder, clip_len: int) -> None:
    torch.manual_seed(0)
    enc = make_encoder()
    task = RelativePositionTask(clip_len=clip_len, hidden=16, gray_p=0.3, channel_drop_p=0.3,
                                normalize_patches=clip_len == 2)
    task.build(enc.spec)
    out = task({"video": torch.rand(2, 3, 3, 32, 48)}, enc, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in list(task.named_parameters()) + list(enc.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def _gradient_images(n: int, generator: torch.Generator) -> torch.Tensor:
    """Noise over a smooth ramp from top-left (dark) to bottom-right (bright): a patch's brightness tells where
    it is, so the direction between two patches is learnable."""
    ramp = (torch.arange(48.0).view(48, 1) + torch.arange(48.0).view(1, 48)) / 94.0
    return (0.8 * ramp + 0.2 * torch.rand(n, 3, 1, 48, 48, generator=generator)).clamp(0, 1)


def test_learns_direction_above_chance() -> None:
    torch.manual_seed(0)
    enc = r3d_tiny(width=4)
    task = RelativePositionTask(hidden=32, dropout=0.0, crop="center")
    task.build(enc.spec)
    opt = torch.optim.Adam(list(enc.parameters()) + list(task.parameters()), lr=3e-3)
    data = torch.Generator().manual_seed(0)
    for step in range(40):
        out = task({"video": _gradient_images(16, data)}, enc, torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    enc.eval()
    task.eval()
    with torch.no_grad():
        held_out = task({"video": _gradient_images(128, torch.Generator().manual_seed(99))}, enc,
                        torch.Generator().manual_seed(1000))
    assert float(held_out.logs["acc"]) > 0.3  # chance 1/8; measured 0.58


def test_resize_to_fits_patches_to_a_vit() -> None:
    """6x6 patches cannot be cut into a ViT's 8x8 tubelets; ``resize_to=16`` makes them fit."""
    from stssl.encoders import build_encoder

    torch.manual_seed(0)
    enc = build_encoder("vit_micro")
    video = torch.rand(2, 3, 2, 32, 48)
    plain = RelativePositionTask(hidden=8)
    plain.build(enc.spec)
    with pytest.raises(ValueError, match="not a positive multiple of the tubelet"):
        plain({"video": video}, enc, torch.Generator().manual_seed(0))
    task = RelativePositionTask(hidden=8, resize_to=16)
    task.build(enc.spec)
    out = task({"video": video}, enc, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert all(p.grad is not None for p in task.parameters())
    with pytest.raises(ValueError, match="resize_to must be a positive size"):
        RelativePositionTask(resize_to=0)
