from __future__ import annotations

import pytest
import torch
import torchvision

from stssl.encoders import CPU_PRESETS, ENCODERS, ResNet3D, build_encoder
from stssl.types import EncoderOutput

# Every registered encoder: the CPU presets always, the standard sizes (tens of millions of parameters) as slow.
ALL = [n if n in CPU_PRESETS else pytest.param(n, marks=pytest.mark.slow) for n in sorted(ENCODERS)]


def test_cpu_presets_are_registered() -> None:
    assert set(CPU_PRESETS) <= set(ENCODERS)


@pytest.mark.parametrize("name", ALL)
def test_registry_contract_shapes_grads(name: str) -> None:
    torch.manual_seed(0)
    enc = build_encoder(name)
    video = torch.rand(2, 3, 8, 32, 32)
    out = enc(video)
    assert isinstance(out, EncoderOutput)
    assert len(out.pyramid) == len(enc.spec.channels)
    for feat, ch, (st, sh, sw) in zip(out.pyramid, enc.spec.channels, enc.spec.strides, strict=True):
        assert feat.shape[:2] == (2, ch)
        # each stage's size is the input size over its stride (ceil: convs pad)
        assert tuple(feat.shape[2:]) == (-(-8 // st), -(-32 // sh), -(-32 // sw)), (name, feat.shape, (st, sh, sw))
    assert out.dense is out.pyramid[-1]
    assert out.pooled.shape == (2, enc.spec.dim)
    torch.testing.assert_close(out.pooled, out.dense.mean(dim=(2, 3, 4)))
    loss = sum(f.square().mean() for f in out.pyramid)
    loss.backward()
    for pname, p in enc.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"


@pytest.mark.parametrize(
    ("name", "tv_builder", "expected"),
    [
        ("r3d_18", torchvision.models.video.r3d_18, 33_166_272),
        ("mc3_18", torchvision.models.video.mc3_18, 11_490_240),
        ("r2plus1d_18", torchvision.models.video.r2plus1d_18, 31_300_125),
    ],
)
def test_standard_sizes_match_torchvision(name, tv_builder, expected) -> None:
    enc = build_encoder(name)
    tv = tv_builder()
    n_params = sum(p.numel() for p in enc.parameters())
    assert n_params == expected
    tv_state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    assert sum(v.numel() for k, v in tv.named_parameters() if not k.startswith("fc.")) == expected
    enc.load_state_dict(tv_state, strict=True)  # same module names: torchvision weights load as is


def test_pretrained_features_equal_torchvision_backbone() -> None:
    torch.manual_seed(0)
    tv = torchvision.models.video.r3d_18().eval()
    enc = build_encoder("r3d_18").eval()
    enc.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    x = torch.rand(1, 3, 4, 32, 32)
    with torch.no_grad():
        ref = tv.avgpool(tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.stem(x)))))).flatten(1)
        torch.testing.assert_close(enc(x).pooled, ref)


def test_mc3_keeps_time() -> None:
    enc = build_encoder("mc3_tiny")
    assert all(s[0] == 1 for s in enc.spec.strides)
    assert enc(torch.rand(1, 3, 4, 32, 32)).dense.shape[2] == 4


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown encoder 'nope'; choose from"):
        build_encoder("nope")
    with pytest.raises(ValueError, match="unknown arch"):
        ResNet3D("r4d")  # type: ignore[arg-type]
    enc = build_encoder("r3d_tiny")
    with pytest.raises(ValueError, match=r"ResNet3D input: expected shape \(B 3 T H W\)"):
        enc(torch.rand(2, 8, 32, 32))
    with pytest.raises(ValueError, match=r"expected shape \(B 3 T H W\)"):
        enc(torch.rand(2, 1, 4, 32, 32))
