from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange

from stssl.encoders.resnet3d import r3d_tiny
from stssl.encoders.vit import vit_micro, vit_micro_divided
from stssl.tasks.masked import (
    MaskedVideoTask,
    _sincos_table,
    make_tube_mask,
    normalize_patches,
    patchify,
    sincos_pos_embed_3d,
    unpatchify,
)


@pytest.mark.parametrize(("grid", "ratio", "n_mask_s"), [((4, 4, 4), 0.9, 14), ((2, 3, 5), 0.5, 8), ((1, 2, 2), 0.75, 3)])
def test_tube_mask_structure_and_counts(grid, ratio, n_mask_s) -> None:
    t, h, w = grid
    m = make_tube_mask(3, grid, ratio, generator=torch.Generator().manual_seed(0))
    assert m.masked.shape == (3, n_mask_s * t) and m.keep.shape == (3, (h * w - n_mask_s) * t)
    assert m.masked.dtype == m.keep.dtype == torch.long
    for b in range(3):
        both = torch.cat([m.keep[b], m.masked[b]])
        assert torch.equal(both.sort().values, torch.arange(t * h * w))  # disjoint and complete
    # tubes: the masked spatial positions are the same in every temporal slot
    hidden = rearrange(m.as_bool(), "B (t s) -> B t s", t=t)
    assert torch.equal(hidden, hidden[:, :1].expand_as(hidden))
    assert (hidden[:, 0].sum(dim=1) == n_mask_s).all()
    # rows are ascending
    assert (m.keep.diff(dim=1) > 0).all() and (m.masked.diff(dim=1) > 0).all()


def test_tube_mask_is_seeded() -> None:
    a = make_tube_mask(4, (2, 4, 4), 0.75, generator=torch.Generator().manual_seed(5))
    b = make_tube_mask(4, (2, 4, 4), 0.75, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.keep, b.keep) and torch.equal(a.masked, b.masked)
    masks = {tuple(make_tube_mask(1, (2, 4, 4), 0.75, generator=torch.Generator().manual_seed(s)).keep[0].tolist())
             for s in range(20)}
    assert len(masks) > 10
    per_sample = make_tube_mask(8, (1, 4, 4), 0.5, generator=torch.Generator().manual_seed(0)).keep
    assert len({tuple(r) for r in per_sample.tolist()}) > 1  # each sample draws its own mask


def test_tube_mask_rejects_degenerate_ratios() -> None:
    with pytest.raises(ValueError, match="hides 4 of 4 spatial positions"):
        make_tube_mask(1, (2, 2, 2), 0.95)
    with pytest.raises(ValueError, match="hides 0 of 4"):
        make_tube_mask(1, (2, 2, 2), 0.1)


def test_patchify_round_trip_and_layout() -> None:
    video = torch.rand(2, 3, 4, 16, 24, generator=torch.Generator().manual_seed(0))
    patches = patchify(video, 2, 8)
    assert patches.shape == (2, 2 * 2 * 3, 2 * 8 * 8 * 3)
    assert torch.equal(unpatchify(patches, (2, 2, 3), 2, 8), video)
    # token (t=1, h=0, w=2) holds frames 2-3, rows 0-7, columns 16-23, flattened (pt ph pw C)
    token = 1 * 6 + 0 * 3 + 2
    expected = rearrange(video[:, :, 2:4, 0:8, 16:24], "B C pt ph pw -> B (pt ph pw C)")
    assert torch.equal(patches[:, token], expected)
    with pytest.raises(ValueError, match="not a multiple of the tubelet 2x8x8"):
        patchify(torch.rand(1, 3, 4, 12, 16), 2, 8)


def test_normalize_patches_per_channel() -> None:
    patches = patchify(torch.rand(2, 3, 2, 8, 8) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1, 1), 2, 4)
    norm, mean, std = normalize_patches(patches, 3)
    x = rearrange(norm, "B N (p C) -> B N p C", C=3)
    torch.testing.assert_close(x.mean(dim=2), torch.zeros(2, 4, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=2), torch.ones(2, 4, 3), atol=1e-4, rtol=0)
    assert mean.shape == std.shape == (2, 4, 1, 3)


def test_sincos_positions_are_distinct() -> None:
    pos = sincos_pos_embed_3d((2, 3, 4), 64)
    assert pos.shape == (24, 64)
    assert torch.cdist(pos, pos).add(torch.eye(24) * 10).min() > 0.1
    with pytest.raises(ValueError, match="even and >= 6"):
        sincos_pos_embed_3d((2, 2, 2), 7)


def test_sincos_positions_match_the_formula_and_are_cached_copies() -> None:
    pos = sincos_pos_embed_3d((2, 3, 4), 12, dtype=torch.float64)  # 4 temporal + 4 + 4 spatial channels
    t, h, w = 1, 0, 2
    row = pos[t * 12 + h * 4 + w]  # (t h w) token order; frequencies 10000^(-i/2): 1, 0.01

    def enc(p: int) -> list[float]:
        return [math.sin(p), math.sin(p * 0.01), math.cos(p), math.cos(p * 0.01)]

    torch.testing.assert_close(row, torch.tensor(enc(t) + enc(h) + enc(w), dtype=torch.float64))
    # computed once per (grid, dim): later calls hit the cache and get independent copies
    before = _sincos_table.cache_info().hits
    a = sincos_pos_embed_3d((2, 3, 4), 12, dtype=torch.float64)
    assert _sincos_table.cache_info().hits == before + 1
    a.zero_()
    torch.testing.assert_close(sincos_pos_embed_3d((2, 3, 4), 12, dtype=torch.float64), pos)
    half = sincos_pos_embed_3d((2, 3, 4), 12, dtype=torch.bfloat16, device="meta")
    assert half.dtype == torch.bfloat16 and half.device.type == "meta"
    torch.testing.assert_close(sincos_pos_embed_3d((2, 3, 4), 12), pos.float())  # float32 by default
    with pytest.raises(ValueError, match="grid must be three positive ints"):
        sincos_pos_embed_3d((0, 2, 2), 12)


def _task(**kwargs) -> MaskedVideoTask:
    return MaskedVideoTask(**{"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, **kwargs})


def test_gradients_reach_every_encoder_and_decoder_parameter() -> None:
    torch.manual_seed(0)
    enc = vit_micro()
    task = _task(decoder_depth=2)
    task.build(enc.spec)
    assert task.requires.min_frames == 2
    video = torch.rand(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    out = task({"video": video}, enc, generator=torch.Generator().manual_seed(0))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert set(out.logs) == {"loss", "psnr"} and torch.isfinite(out.logs["psnr"])
    out.loss.backward()
    for pname, p in list(enc.named_parameters()) + list(task.named_parameters()):
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{pname}: bad gradient"


def test_same_generator_gives_same_loss_and_raw_target_variant() -> None:
    torch.manual_seed(0)
    enc = vit_micro()
    task = _task(norm_target=False)
    task.build(enc.spec)
    video = torch.rand(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    a = task({"video": video}, enc, generator=torch.Generator().manual_seed(3)).loss
    b = task({"video": video}, enc, generator=torch.Generator().manual_seed(3)).loss
    c = task({"video": video}, enc, generator=torch.Generator().manual_seed(4)).loss
    assert a == b and a != c


def test_non_token_encoders_are_a_clear_error() -> None:
    enc = r3d_tiny(width=4)
    task = _task()
    task.build(enc.spec)
    with pytest.raises(TypeError, match="encoder ResNet3D has no forward_tokens"):
        task({"video": torch.rand(1, 3, 4, 32, 32)}, enc)
    enc_div = vit_micro_divided()
    task.build(enc_div.spec)
    with pytest.raises(ValueError, match="token masking \\(keep\\) needs attention='joint'"):
        task({"video": torch.rand(1, 3, 4, 32, 32)}, enc_div)
    with pytest.raises(RuntimeError, match="call build"):
        _task()({"video": torch.rand(1, 3, 4, 32, 32)}, vit_micro())


def _gratings(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Drifting gratings with an 8-pixel period, aligned to the 8x8 patches: within a temporal slot every tubelet
    shows the same pattern, so a masked tubelet is predictable from any visible one of the same clip."""
    k = torch.randint(0, 3, (2, batch), generator=generator).float()
    k[0] = torch.where((k[0] == 0) & (k[1] == 0), torch.ones_like(k[0]), k[0])  # no flat clips
    phase = torch.rand(batch, generator=generator) * 2 * math.pi
    speed = torch.rand(batch, generator=generator) * 2 - 1
    t = torch.arange(4.0).view(1, 4, 1, 1)
    y = torch.arange(32.0).view(1, 1, 32, 1)
    x = torch.arange(32.0).view(1, 1, 1, 32)
    kx, ky, ph, sp = (v.view(-1, 1, 1, 1) for v in (k[0], k[1], phase, speed))
    wave = torch.sin(2 * math.pi * (kx * x + ky * y) / 8 + ph + sp * t)
    amplitude = torch.rand(batch, 3, 1, 1, 1, generator=generator) * 0.4 + 0.1
    return (0.5 + amplitude * wave[:, None]).clamp(0, 1)


@pytest.mark.slow
def test_overfits_one_batch() -> None:
    """50 Adam steps on one fixed batch (a fresh tube mask each step) must take the normalised-pixel loss far
    below 1.0, the loss of predicting every normalised patch as its mean (zero); also on a mask never trained on.
    A decoder that put tokens or targets in the wrong places could not get there."""
    torch.manual_seed(0)
    enc = vit_micro()
    task = _task(decoder_dim=64, decoder_heads=4, mask_ratio=0.75)
    task.build(enc.spec)
    batch = {"video": _gratings(4, torch.Generator().manual_seed(0))}
    opt = torch.optim.Adam(list(enc.parameters()) + list(task.parameters()), lr=1e-3)
    losses = []
    for step in range(50):
        out = task(batch, enc, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert first > 1.0 and last < 0.45, f"loss {first:.3f} -> {last:.3f}"
    with torch.no_grad():
        held_out = task(batch, enc, generator=torch.Generator().manual_seed(12345)).loss.item()
    assert held_out < 0.5, f"loss on an unseen mask {held_out:.3f}"
