from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stssl.encoders.frame2d import FrameEncoder2D, resnet18_2d_tiny, resnet50_2d_tiny
from stssl.encoders.resnet3d import r3d_tiny
from stssl.heads.dense import TINY_DEC_CHANNELS, DisparityDecoder, disp_to_depth, frames_from_pyramid


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _reference_decoder(dec: DisparityDecoder, feats: list[torch.Tensor]) -> dict[int, torch.Tensor]:
    """monodepth2's DepthDecoder written out with the decoder's weights (inputs with sizes divisible by 32)."""

    def conv(seq: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        c = seq[1]
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), c.weight, c.bias)

    out = {}
    x = feats[-1]
    for i in range(4, -1, -1):
        x = F.elu(conv(dec.upconvs_in[i], x))
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        if i > 0:
            x = torch.cat([x, feats[i - 1]], 1)
        x = F.elu(conv(dec.upconvs_out[i], x))
        if i in dec.scales:
            out[i] = torch.sigmoid(conv(dec.dispconvs[str(i)], x))
    return out


def test_disp_to_depth_against_formula() -> None:
    disp = torch.rand(2, 1, 8, 8)
    scaled, depth = disp_to_depth(disp, 0.1, 100.0)
    ref_scaled = 0.01 + (10.0 - 0.01) * disp
    torch.testing.assert_close(scaled, ref_scaled)
    torch.testing.assert_close(depth, 1.0 / ref_scaled)
    assert depth.min() >= 0.1 - 1e-6 and depth.max() <= 100.0 + 1e-3
    # monotone: larger disparity = nearer
    _, d = disp_to_depth(torch.linspace(0, 1, 11), 0.5, 20.0)
    assert (d[1:] < d[:-1]).all() and d[0] == pytest.approx(20.0) and d[-1] == pytest.approx(0.5)


def test_disp_to_depth_bad_range() -> None:
    with pytest.raises(ValueError, match="min_depth=10.0, max_depth=1.0"):
        disp_to_depth(torch.rand(3), 10.0, 1.0)
    with pytest.raises(ValueError, match="min_depth=0.0"):
        disp_to_depth(torch.rand(3), 0.0, 1.0)
    with pytest.raises(TypeError, match="disp must be a torch.Tensor"):
        disp_to_depth([0.5], 0.1, 1.0)  # type: ignore[arg-type]


def test_matches_monodepth2_reference() -> None:
    torch.manual_seed(0)
    enc = resnet18_2d_tiny()
    dec = DisparityDecoder(enc.spec.channels, num_ch_dec=TINY_DEC_CHANNELS)
    feats = list(enc.forward_frames(torch.rand(2, 3, 64, 96)))
    got = dec(feats)
    ref = _reference_decoder(dec, feats)
    assert sorted(got) == sorted(ref) == [0, 1, 2, 3]
    for s in ref:
        torch.testing.assert_close(got[s], ref[s])


@pytest.mark.parametrize(("height", "width"), [(64, 192), (32, 96), (32, 32)])
def test_scales_shapes_range(height: int, width: int) -> None:
    torch.manual_seed(0)
    enc = resnet18_2d_tiny()
    dec = DisparityDecoder.from_spec(enc.spec, num_ch_dec=TINY_DEC_CHANNELS)
    with torch.no_grad():
        disps = dec(enc.forward_frames(torch.rand(2, 3, height, width)))
    assert sorted(disps) == [0, 1, 2, 3]
    for s, d in disps.items():
        assert tuple(d.shape) == (2, 1, height // 2**s, width // 2**s)
        assert torch.isfinite(d).all() and (d > 0).all() and (d < 1).all()


@pytest.mark.parametrize(("height", "width"), [(32, 96), (32, 32)])
def test_every_parameter_gets_a_gradient(height: int, width: int) -> None:
    torch.manual_seed(0)
    enc = resnet18_2d_tiny()
    dec = DisparityDecoder.from_spec(enc.spec, num_ch_dec=TINY_DEC_CHANNELS)
    images = torch.rand(2, 3, height, width, requires_grad=True)
    disps = dec(enc.forward_frames(images))
    sum(d.mean() for d in disps.values()).backward()
    for module in (enc, dec):
        for name, p in module.named_parameters():
            assert p.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # scale 0 sees every pixel of its input (the decoder is not blind to any region)
    images.grad = None
    d0 = dec(enc.forward_frames(images))[0]
    d0[..., height // 2, width // 2].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_odd_sizes_follow_the_pyramid() -> None:
    enc = resnet18_2d_tiny()
    dec = DisparityDecoder.from_spec(enc.spec, num_ch_dec=TINY_DEC_CHANNELS)
    feats = enc.forward_frames(torch.rand(1, 3, 37, 50))
    disps = dec(feats, image_size=(37, 50))
    assert tuple(disps[0].shape[-2:]) == (37, 50)
    for s in (1, 2, 3):
        assert tuple(disps[s].shape[-2:]) == (_ceil(37, 2**s), _ceil(50, 2**s))
    assert tuple(dec(feats)[0].shape[-2:]) == (38, 50)  # default: twice stage 0


@pytest.mark.parametrize(
    "enc",
    [resnet18_2d_tiny(), resnet50_2d_tiny(), FrameEncoder2D(width=8, layers=(1, 2, 1, 1))],
    ids=["r18tiny", "r50tiny", "w8"],
)
def test_decoder_on_encoders_of_several_widths(enc: FrameEncoder2D) -> None:
    dec = DisparityDecoder.from_spec(enc.spec, num_ch_dec=(4, 8, 8, 16, 16), scales=(0, 3))
    disps = dec.forward_video(enc(torch.rand(2, 3, 2, 32, 64)).pyramid)
    assert sorted(disps) == [0, 3]
    assert tuple(disps[0].shape) == (2, 1, 2, 32, 64) and tuple(disps[3].shape) == (2, 1, 2, 4, 8)


def test_forward_video_keeps_frame_order() -> None:
    torch.manual_seed(0)
    enc = resnet18_2d_tiny().eval()
    dec = DisparityDecoder.from_spec(enc.spec, num_ch_dec=TINY_DEC_CHANNELS)
    video = torch.rand(2, 3, 3, 32, 32)
    with torch.no_grad():
        disps = dec.forward_video(enc(video).pyramid)
        for t in range(3):
            ref = dec(enc.forward_frames(video[:, :, t]))
            for s in ref:
                torch.testing.assert_close(disps[s][:, :, t], ref[s])


def test_frames_from_pyramid_round_trip() -> None:
    pyramid = [torch.randn(2, 4, 3, 8, 8), torch.randn(2, 5, 3, 4, 4)]
    stages, t = frames_from_pyramid(pyramid)
    assert t == 3
    torch.testing.assert_close(stages[1][1 * 3 + 2], pyramid[1][1, :, 2])  # sample 1, frame 2


def test_bad_inputs_name_the_problem() -> None:
    enc = resnet18_2d_tiny()
    dec = DisparityDecoder.from_spec(enc.spec, num_ch_dec=TINY_DEC_CHANNELS)
    feats = list(enc.forward_frames(torch.rand(2, 3, 32, 32)))
    with pytest.raises(
        ValueError, match=r"expected 5 feature stages with channels \(16, 16, 32, 64, 128\), got 4"
    ):
        dec(feats[:4])
    bad = feats[:2] + [torch.rand(2, 7, 4, 4)] + feats[3:]
    with pytest.raises(ValueError, match=r"features\[2\]: expected shape \(N 32 \* \*\).*got \(2, 7, 4, 4\)"):
        dec(bad)
    with pytest.raises(
        ValueError, match=r"features\[4\]: expected shape \(N 128 \* \*\) with N=2, got \(3, 128"
    ):
        dec(feats[:4] + [torch.rand(3, 128, 1, 1)])
    with pytest.raises(
        ValueError, match=r"features\[0\]: expected shape \(N 16 \* \*\), got \(2, 16, 1, 16, 16\)"
    ):
        dec([f[:, :, None] for f in feats])  # 5-D pyramid: use forward_video
    with pytest.raises(ValueError, match="image_size must be"):
        dec(feats, image_size=(0, 32))
    with pytest.raises(ValueError, match=r"scales must be .* within \[0, 4\], got \(0, 5\)"):
        DisparityDecoder(enc.spec.channels, scales=(0, 5))
    with pytest.raises(ValueError, match="num_ch_dec must give 5 positive channel counts"):
        DisparityDecoder(enc.spec.channels, num_ch_dec=(8, 16))
    with pytest.raises(ValueError, match="from_spec: needs a per-frame pyramid with strides"):
        DisparityDecoder.from_spec(r3d_tiny().spec)
    r3d_pyramid = r3d_tiny()(torch.rand(1, 3, 4, 32, 32)).pyramid
    with pytest.raises(ValueError, match=r"pyramid\[1\]: expected shape \(B \* T \* \*\).*per-frame pyramid"):
        frames_from_pyramid(r3d_pyramid)


def test_default_size_is_monodepth2_resnet18_decoder() -> None:
    # monodepth2's DepthDecoder on ResNet-18 channels, counted by hand: ten conv3x3 blocks + four heads.
    enc_ch, dec_ch = (64, 64, 128, 256, 512), (16, 32, 64, 128, 256)
    expected = 0
    for i in range(5):
        c_in = enc_ch[-1] if i == 4 else dec_ch[i + 1]
        expected += c_in * dec_ch[i] * 9 + dec_ch[i]
        c_in = dec_ch[i] + (enc_ch[i - 1] if i > 0 else 0)
        expected += c_in * dec_ch[i] * 9 + dec_ch[i]
    expected += sum(dec_ch[s] * 9 + 1 for s in range(4))
    assert expected == 3_152_724
    assert sum(p.numel() for p in DisparityDecoder().parameters()) == expected
