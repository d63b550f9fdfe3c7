from __future__ import annotations

import pytest
import torch
from torch import nn

from stssl.encoders.slowfast import SlowFast, pool_fast_to_slow, slowfast_r50, slowfast_r101, slowfast_tiny

# fvcore (imported by pytorchvideo) calls the deprecated torch.jit.script at import
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:FutureWarning")

# pytorchvideo's create_slowfast R50 has 34,566,488 parameters; its classifier (2304 * 400 + 400) 922,000.
SLOWFAST_R50_BACKBONE_PARAMS = 33_644_488
SLOWFAST_R101_BACKBONE_PARAMS = (
    61_991_240  # pytorchvideo's slowfast_r101 (model_depth=101) minus its classifier
)


def _create_slowfast(**kwargs):
    from pytorchvideo.models.slowfast import create_slowfast

    return create_slowfast(**kwargs)


def _head_free(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(("blocks.5.", "blocks.6."))}


@pytest.mark.parametrize("size", [(10, 33, 47), (4, 17, 20)])
def test_odd_sizes_round_up(size: tuple[int, int, int], check_pyramid) -> None:
    """Both pathways pad every stride, so the fused stages are ceil(size / stride), also when T is not a multiple of
    alpha. (The 8x32x32 contract and gradients run for every encoder in test_encoders.py.)"""
    torch.manual_seed(0)
    assert len(check_pyramid(slowfast_tiny(), size).pyramid) == 4


def test_spec_of_tiny() -> None:
    enc = slowfast_tiny()
    # slow 32/64/128/256 channels + fast (beta_inv=4) 8/16/32/64
    assert enc.spec.channels == (40, 80, 160, 320)
    assert enc.spec.strides == ((4, 4, 4), (4, 8, 8), (4, 16, 16), (4, 32, 32))
    assert enc.spec.min_frames == 4
    assert slowfast_tiny(alpha=8).spec.min_frames == 8
    assert slowfast_tiny(alpha=8)(torch.rand(2, 3, 8, 32, 32)).dense.shape == (2, 320, 1, 1, 1)


@pytest.mark.parametrize(("alpha", "kernel"), [(4, 7), (4, 5), (2, 3), (8, 7), (4, 1), (1, 1)])
def test_pool_fast_to_slow_centres_window_j_on_frame_alpha_j(alpha: int, kernel: int) -> None:
    """On a ramp (fast frame t holds t) a symmetric window averages to its centre: slow frame j reads alpha * j."""
    T = 4 * alpha + 3
    ramp = torch.arange(float(T)).view(1, 1, T, 1, 1).expand(2, 3, T, 2, 2)
    pooled = pool_fast_to_slow(ramp, alpha, kernel)
    assert pooled.shape == (2, 3, -(-T // alpha), 2, 2)
    half = kernel // 2
    for j in range(pooled.shape[2]):
        lo, hi = max(0, alpha * j - half), min(T - 1, alpha * j + half)  # the window, cut at the clip's ends
        assert torch.all(pooled[:, :, j] == (lo + hi) / 2), (j, pooled[0, 0, j, 0, 0])
        if alpha * j - half >= 0 and alpha * j + half < T:
            assert torch.all(pooled[:, :, j] == alpha * j)  # an uncut window is centred on the slow frame
    # padding is not counted: a constant stays constant up to the ends
    for frames in (1, 2, alpha, T):  # also clips shorter than the window
        ones = pool_fast_to_slow(torch.ones(1, 2, frames, 1, 1), alpha, kernel)
        torch.testing.assert_close(ones, torch.ones(1, 2, -(-frames // alpha), 1, 1))
    with pytest.raises(ValueError, match="odd kernel"):
        pool_fast_to_slow(ramp, 4, 4)


def test_pathways_and_fused_stage_layout() -> None:
    torch.manual_seed(0)
    enc = slowfast_tiny().eval()  # alpha 4, fusion kernel 7
    video = torch.rand(2, 3, 10, 32, 32)
    slow, fast = enc.pathways(video)
    torch.testing.assert_close(slow, video[:, :, [0, 4, 8]])
    assert fast is video
    # the stage-1 feature is [slow res2 output, fast res2 output averaged over the 7-frame windows centred on the
    # slow frames 0, 4, 8, cut at the clip's ends: frames 0-3, 1-7, 5-9]
    with torch.no_grad():
        xs = [block(x) for block, x in zip(enc.blocks[0].multipathway_blocks, (slow, fast), strict=True)]
        xs = enc.blocks[0].multipathway_fusion(xs)
        slow1, fast1 = (block(x) for block, x in zip(enc.blocks[1].multipathway_blocks, xs, strict=True))
        feat = enc(video).pyramid[0]
    torch.testing.assert_close(feat[:, : slow1.shape[1]], slow1)
    fast_pooled = torch.stack([fast1[:, :, a:b].mean(2) for a, b in ((0, 4), (1, 8), (5, 10))], dim=2)
    torch.testing.assert_close(feat[:, slow1.shape[1] :], fast_pooled)


def test_last_stage_is_pytorchvideo_head_feature() -> None:
    """Weights load into pytorchvideo's network and the last stage is its two pathway features: slow as is, fast
    pooled onto the slow frames; the slow half of ``pooled`` is exactly what pytorchvideo's head pools."""
    torch.manual_seed(0)
    enc = slowfast_tiny().eval()
    net = _create_slowfast(
        model_depth=18,
        stem_dim_outs=(8, 2),
        slowfast_channel_reduction_ratio=(4,),
        slowfast_fusion_conv_kernel_size=(7, 1, 1),
        slowfast_fusion_conv_stride=(4, 1, 1),
    ).eval()
    result = net.load_state_dict(_head_free(enc.state_dict()), strict=False)
    assert not result.unexpected_keys and all(k.startswith("blocks.6.") for k in result.missing_keys)
    net.blocks[5].pool = nn.ModuleList([nn.AdaptiveAvgPool3d(1), nn.AdaptiveAvgPool3d(1)])
    video = torch.rand(2, 3, 8, 32, 32)
    with torch.no_grad():
        xs = [video[:, :, ::4], video]
        for block in list(net.blocks)[:5]:
            xs = block(xs)
        head_feature = net.blocks[5](list(xs)).flatten(1)  # (it pools the list in place) pytorchvideo's pooled 2-pathway feature (its classifier's input)
        out = enc(video)
    slow, fast = xs
    torch.testing.assert_close(out.dense, torch.cat([slow, pool_fast_to_slow(fast, 4, 7)], dim=1))
    torch.testing.assert_close(out.pooled[:, : slow.shape[1]], head_feature[:, : slow.shape[1]])


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize(
    ("builder", "depth", "expected"),
    [(slowfast_r50, 50, SLOWFAST_R50_BACKBONE_PARAMS), (slowfast_r101, 101, SLOWFAST_R101_BACKBONE_PARAMS)],
)
def test_standard_sizes_match_pytorchvideo_without_head(builder, depth: int, expected: int) -> None:
    with torch.device("meta"):  # sizes only: no memory, no initialisation cost
        enc = builder()
        net = _create_slowfast(model_depth=depth)
    assert enc.spec.channels == (288, 576, 1152, 2304)
    assert enc.spec.strides[-1] == (4, 32, 32) and enc.spec.min_frames == 4
    assert sum(p.numel() for p in enc.parameters()) == expected
    n_net = sum(p.numel() for n, p in net.named_parameters() if not n.startswith(("blocks.5.", "blocks.6.")))
    assert n_net == expected
    # same module names and shapes as pytorchvideo's slowfast_r50/r101: their state dicts (head dropped) load as is
    assert _shapes(enc.state_dict()) == _shapes(_head_free(net.state_dict()))


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"SlowFast: unknown depth 34; choose from \[18, 50, 101, 152\]"):
        SlowFast(depth=34)
    with pytest.raises(ValueError, match="SlowFast: width 12 must be a positive multiple of beta_inv=8"):
        SlowFast(width=12)
    with pytest.raises(ValueError, match="SlowFast: fusion_kernel must be odd"):
        SlowFast(fusion_kernel=4)
    enc = slowfast_tiny()
    with pytest.raises(ValueError, match="SlowFast input: expected at least 4 frames"):
        enc(torch.rand(2, 3, 3, 32, 32))
    with pytest.raises(ValueError, match=r"SlowFast input: expected shape \(B 3 T H W\)"):
        enc(torch.rand(2, 1, 8, 32, 32))
