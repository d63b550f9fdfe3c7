from __future__ import annotations

import pytest
import torch
import torchvision

from stssl.encoders.frame2d import (
    FrameEncoder2D,
    resnet18_2d,
    resnet18_2d_tiny,
    resnet34_2d,
    resnet50_2d,
    resnet50_2d_tiny,
)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


@pytest.mark.parametrize(
    ("builder", "tv_builder", "expected"),
    [
        (resnet18_2d, torchvision.models.resnet18, 11_176_512),
        (resnet34_2d, torchvision.models.resnet34, 21_284_672),
        (resnet50_2d, torchvision.models.resnet50, 23_508_032),
    ],
)
def test_standard_sizes_match_torchvision(builder, tv_builder, expected) -> None:
    enc = builder()
    tv = tv_builder()
    assert sum(p.numel() for p in enc.parameters()) == expected
    assert sum(p.numel() for n, p in tv.named_parameters() if not n.startswith("fc.")) == expected
    tv_state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    enc.load_state_dict(tv_state, strict=True)  # same module names as torchvision
    expansion = 4 if builder is resnet50_2d else 1
    assert enc.spec.channels == (64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion)


def test_features_equal_torchvision_resnet18() -> None:
    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    enc = resnet18_2d().eval()
    enc.load_torchvision_state_dict(tv.state_dict())
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        stem = tv.relu(tv.bn1(tv.conv1(x)))
        l1 = tv.layer1(tv.maxpool(stem))
        l4 = tv.layer4(tv.layer3(tv.layer2(l1)))
        feats = enc.forward_frames(x)
    torch.testing.assert_close(feats[0], stem)
    torch.testing.assert_close(feats[1], l1)
    torch.testing.assert_close(feats[4], l4)


@pytest.mark.parametrize("builder", [resnet18_2d_tiny, resnet50_2d_tiny])
@pytest.mark.parametrize(("height", "width"), [(64, 192), (32, 96), (37, 50)])
def test_pyramid_shapes_strides_grads(builder, height: int, width: int) -> None:
    torch.manual_seed(0)
    enc = builder()
    video = torch.rand(2, 3, 3, height, width)
    out = enc(video)
    assert len(out.pyramid) == 5 == len(enc.spec.channels)
    for i, (feat, ch, stride) in enumerate(
        zip(out.pyramid, enc.spec.channels, enc.spec.strides, strict=True)
    ):
        s = 2 ** (i + 1)
        assert stride == (1, s, s)
        assert tuple(feat.shape) == (2, ch, 3, _ceil(height, s), _ceil(width, s)), (i, feat.shape)
        assert torch.isfinite(feat).all()
    assert out.dense is out.pyramid[-1]
    torch.testing.assert_close(out.pooled, out.dense.mean(dim=(2, 3, 4)))
    sum(f.square().mean() for f in out.pyramid).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_frames_are_encoded_independently_and_unfolded_in_order() -> None:
    torch.manual_seed(0)
    enc = resnet18_2d_tiny().eval()  # eval: BatchNorm uses running stats, so frames cannot interact
    video = torch.rand(2, 3, 4, 32, 48)
    with torch.no_grad():
        pyramid = enc(video).pyramid
        for t in range(4):
            ref = enc.forward_frames(video[:, :, t])
            for feat, r in zip(pyramid, ref, strict=True):
                torch.testing.assert_close(feat[:, :, t], r)


def test_six_channel_encoder_tiles_pretrained_stem() -> None:
    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    enc3 = resnet18_2d().eval()
    enc3.load_torchvision_state_dict(tv.state_dict())
    enc6 = resnet18_2d(in_channels=6).eval()
    enc6.load_torchvision_state_dict(tv.state_dict())
    assert enc6.conv1.weight.shape == (64, 6, 7, 7)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        # two identical stacked frames give the pretrained 3-channel response
        torch.testing.assert_close(enc6.forward_frames(torch.cat([x, x], 1))[-1], enc3.forward_frames(x)[-1])


def test_output_size_matches_forward() -> None:
    enc = resnet18_2d_tiny()
    sizes = enc.output_size(2, 40, 72)
    assert sizes == [(2, _ceil(40, 2**k), _ceil(72, 2**k)) for k in range(1, 6)]


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown block 'wide'; choose from"):
        FrameEncoder2D(block="wide")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layers must be 4 positive"):
        FrameEncoder2D(layers=(1, 1, 1))
    with pytest.raises(ValueError, match="width must be >= 1"):
        FrameEncoder2D(width=0)
    enc = resnet18_2d_tiny()
    with pytest.raises(
        ValueError, match=r"FrameEncoder2D input: expected shape \(B 3 T H W\).*\(2, 6, 1, 32, 32\)"
    ):
        enc(torch.rand(2, 6, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expected shape \(B 3 T H W\)"):
        enc(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"forward_frames images: expected shape \(N 3 H W\)"):
        enc.forward_frames(torch.rand(2, 3, 1, 32, 32))
    enc4 = resnet18_2d_tiny(in_channels=4)
    with pytest.raises(ValueError, match=r"conv1.weight'\] has shape \(16, 3, 7, 7\).*in_channels=4"):
        enc4.load_torchvision_state_dict(resnet18_2d_tiny().state_dict())
