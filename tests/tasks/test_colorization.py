"""Colorization: the Lab split inverts, bins, seeded draws, errors, gradients, and learning beyond the grey
baseline."""

from __future__ import annotations

import kornia
import pytest
import torch
from einops import rearrange

from stssl.encoders.frame2d import resnet18_2d_tiny
from stssl.encoders.resnet3d import r3d_tiny
from stssl.tasks.colorization import ColorizationTask, ab_bin_centers, ab_to_bins, make_colorization_batch


def test_lightness_and_ab_give_the_window_back() -> None:
    video = torch.rand(2, 3, 5, 16, 24, generator=torch.Generator().manual_seed(0))
    out = make_colorization_batch(video, clip_len=3, generator=torch.Generator().manual_seed(1))
    assert out.gray.shape == (2, 3, 3, 16, 24) and out.ab.shape == (2, 2, 3, 16, 24)
    assert torch.equal(out.gray[:, 0], out.gray[:, 2]) and 0 <= float(out.gray.min()) <= float(out.gray.max()) <= 1
    lab = rearrange(torch.cat([out.lightness, out.ab], dim=1), "B C L H W -> (B L) C H W")
    rgb = rearrange(kornia.color.lab_to_rgb(lab), "(B L) C H W -> B C L H W", L=3)
    for b in range(2):
        s = int(out.start[b])
        torch.testing.assert_close(rgb[b], video[b, :, s : s + 3], atol=1e-4, rtol=0)
    # a grey video has no colour
    grey = make_colorization_batch(video.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1, -1), 1)
    assert float(grey.ab.abs().max()) < 1e-2


def test_seeded_window_draw() -> None:
    video = torch.rand(4, 3, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    a = make_colorization_batch(video, 2, generator=torch.Generator().manual_seed(3))
    b = make_colorization_batch(video, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.ab, b.ab) and torch.equal(a.start, b.start)


def test_bins_round_trip_and_cover_the_gamut() -> None:
    centers = ab_bin_centers(8)
    assert ab_to_bins(centers.T[None], 8).flatten().tolist() == list(range(64))
    ab = torch.tensor([[[-200.0], [200.0]], [[-0.1], [0.1]]])  # (B=2, 2, 1): out of range clamps to the corners
    assert ab_to_bins(ab, 8).flatten().tolist() == [7, 3 * 8 + 4]


def test_errors_name_the_input() -> None:
    with pytest.raises(ValueError, match=r"make_colorization_batch video \(RGB\): expected shape \(B 3 T H W\)"):
        make_colorization_batch(torch.rand(1, 1, 2, 8, 8))
    with pytest.raises(ValueError, match="ColorizationTask: unknown loss 'huber'"):
        ColorizationTask(loss="huber")
    with pytest.raises(ValueError, match="ColorizationTask: video has T=1 frames, needs clip_len = 2"):
        enc = r3d_tiny(width=4)
        task = ColorizationTask(clip_len=2)
        task.build(enc.spec)
        task({"video": torch.rand(1, 3, 1, 16, 16)}, enc)


@pytest.mark.parametrize("make_encoder", [lambda: r3d_tiny(width=8), resnet18_2d_tiny], ids=["r3d", "frame2d"])
@pytest.mark.parametrize("loss", ["l1", "l2", "classify"])
def test_gradients_reach_every_parameter(make_encoder, loss: str) -> None:
    torch.manual_seed(0)
    enc = make_encoder()
    task = ColorizationTask(clip_len=2, loss=loss, num_bins=6, out_stride=2 if loss == "classify" else 1)
    task.build(enc.spec)
    out = task({"video": torch.rand(2, 3, 3, 32, 48)}, enc, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.logs.values())
    assert ("acc" in out.logs) == (loss == "classify")
    out.loss.backward()
    for name, p in list(task.named_parameters()) + list(enc.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def _tinted(n: int, generator: torch.Generator) -> torch.Tensor:
    """Textures whose colour follows their brightness (bright = orange, dark = blue): colour is predictable."""
    lum = torch.rand(n, 1, 1, 32, 32, generator=generator)
    lum = torch.nn.functional.avg_pool2d(lum.flatten(0, 1), 3, 1, 1).view(n, 1, 1, 32, 32)
    orange, blue = torch.tensor([1.0, 0.6, 0.2]), torch.tensor([0.2, 0.4, 1.0])
    return (lum * orange.view(1, 3, 1, 1, 1) + (1 - lum) * blue.view(1, 3, 1, 1, 1)).clamp(0, 1)


def test_learns_colour_beyond_the_grey_baseline() -> None:
    """Where colour follows brightness, 30 steps bring the ab error well below predicting grey (chroma 0)."""
    torch.manual_seed(0)
    enc = r3d_tiny(width=4)
    task = ColorizationTask()
    task.build(enc.spec)
    opt = torch.optim.Adam(list(enc.parameters()) + list(task.parameters()), lr=1e-2)
    data = torch.Generator().manual_seed(0)
    for step in range(30):
        out = task({"video": _tinted(8, data)}, enc, torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        held_out = task({"video": _tinted(8, torch.Generator().manual_seed(99))}, enc, torch.Generator())
    assert float(held_out.logs["ab_l1"]) < 0.6 * float(held_out.logs["gray_ab_l1"])  # measured: 0.46
