from __future__ import annotations

import math

import pytest
import torch

from stssl.encoders import build_encoder
from stssl.tasks import VCOPTask, make_vcop_batch, order_permutations


def test_order_permutations_are_all_distinct_orders() -> None:
    for n in (2, 3, 4):
        perms = order_permutations(n)
        assert perms.shape == (math.factorial(n), n)
        assert len({tuple(p) for p in perms.tolist()}) == math.factorial(n)
        assert all(sorted(p) == list(range(n)) for p in perms.tolist())


def test_labels_in_range_and_inverse_recovers_input(tiny_video) -> None:
    gen = torch.Generator().manual_seed(3)
    out = make_vcop_batch(tiny_video, num_clips=3, clip_len=3, gap=1, generator=gen)
    assert out.clips.shape == (2, 3, 3, 3, 32, 32)
    assert ((out.label >= 0) & (out.label < 6)).all()
    perms = order_permutations(3)
    assert torch.equal(perms[out.label], out.permutation)
    for b in range(2):
        inv = torch.argsort(out.permutation[b])
        ordered = out.clips[b, inv]  # undo the shuffle with the returned label
        s = int(out.start[b])
        expected = torch.stack([tiny_video[b, :, s + k * 4 : s + k * 4 + 3] for k in range(3)])
        torch.testing.assert_close(ordered, expected, rtol=0, atol=0)


def test_seeded_generator_gives_identical_output(tiny_video) -> None:
    a = make_vcop_batch(tiny_video, generator=torch.Generator().manual_seed(7))
    b = make_vcop_batch(tiny_video, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.clips, b.clips) and torch.equal(a.label, b.label)
    labels = {tuple(make_vcop_batch(tiny_video, generator=torch.Generator().manual_seed(s)).label.tolist())
              for s in range(20)}
    assert len(labels) > 1


def test_too_short_video_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="T=8 frames, needs"):
        make_vcop_batch(torch.rand(1, 3, 8, 8, 8), num_clips=3, clip_len=4)


@pytest.mark.slow
def test_vcop_learns_order_of_a_fading_clip() -> None:
    """Clips of a random texture that brightens over time: the order is observable, so training must beat chance
    (1/6) clearly. A label/clip mismatch in make_vcop_batch would keep accuracy at chance."""
    torch.manual_seed(0)
    enc = build_encoder("r3d_tiny", width=8)
    task = VCOPTask(num_clips=3, clip_len=4, hidden=64, dropout=0.0)
    task.build(enc.spec)
    opt = torch.optim.Adam(list(enc.parameters()) + list(task.parameters()), lr=3e-3)
    g = torch.Generator().manual_seed(5)

    def batch() -> dict:
        texture = torch.rand(8, 3, 1, 32, 32, generator=g)
        ramp = 0.2 + 0.06 * torch.arange(12.0).view(1, 1, 12, 1, 1)
        return {"video": texture * ramp}

    for _ in range(80):
        out = task(batch(), enc)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    enc.eval()
    task.eval()
    with torch.no_grad():
        accs = [task(batch(), enc, generator=torch.Generator().manual_seed(100 + i)).logs["acc"] for i in range(8)]
    acc = float(torch.stack(accs).mean())
    assert acc > 0.5, f"order accuracy {acc:.2f} not clearly above chance 0.17"
