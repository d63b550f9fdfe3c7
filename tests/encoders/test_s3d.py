from __future__ import annotations

import pytest
import torch
import torchvision

from stssl.encoders.s3d import S3D, s3d, s3d_tiny

S3D_FEATURES_PARAMS = 7_910_048  # torchvision s3d (8,320,048) minus its classifier (1024 * 400 + 400)


@pytest.mark.parametrize("size", [(5, 33, 47), (1, 17, 20)])
def test_odd_sizes_round_up(size: tuple[int, int, int], check_pyramid) -> None:
    """Strided convs/pools pad and the last, pad-free pool uses ceil mode: every stage is ceil(size / stride).
    (The 8x32x32 contract and gradients run for every encoder in test_encoders.py.)"""
    torch.manual_seed(0)
    assert len(check_pyramid(s3d_tiny(), size).pyramid) == 4


def test_every_branch_gets_a_gradient() -> None:
    """Each inception branch, the max-pool branch included, reaches the features: no parameter's gradient is 0."""
    torch.manual_seed(0)
    enc = s3d_tiny()
    sum(f.square().mean() for f in enc(torch.rand(2, 3, 5, 33, 47)).pyramid).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} has no or an all-zero gradient"


def test_spec_strides_and_width_scaling() -> None:
    assert s3d_tiny().spec.strides == ((2, 4, 4), (2, 8, 8), (4, 16, 16), (8, 32, 32))
    assert S3D(width=32).spec.channels == (96, 240, 416, 512)  # exactly half of the standard widths
    assert s3d_tiny(in_channels=1)(torch.rand(2, 1, 4, 32, 32)).pooled.shape == (2, 128)


def test_standard_size_matches_torchvision() -> None:
    enc = s3d()
    tv = torchvision.models.video.s3d()
    assert enc.spec.channels == (192, 480, 832, 1024)
    assert sum(p.numel() for p in enc.parameters()) == S3D_FEATURES_PARAMS
    tv_state = {k: v for k, v in tv.state_dict().items() if not k.startswith("classifier.")}
    assert (
        sum(p.numel() for n, p in tv.named_parameters() if not n.startswith("classifier."))
        == S3D_FEATURES_PARAMS
    )
    enc.load_state_dict(tv_state, strict=True)  # same module names and shapes as torchvision's features
    # features equal torchvision's on a clip whose /16 map is even (where ceil and floor pooling agree)
    tv.eval()
    enc.eval()
    x = torch.rand(1, 3, 8, 64, 64)
    with torch.no_grad():
        ref = tv.features(x)
        ours = enc(x)
    torch.testing.assert_close(ours.dense, ref)
    torch.testing.assert_close(ours.pyramid[1], tv.features[:7](x))


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="S3D: width must be >= 1, got 0"):
        S3D(width=0)
    enc = s3d_tiny()
    with pytest.raises(ValueError, match=r"S3D input: expected shape \(B 3 T H W\)"):
        enc(torch.rand(2, 8, 32, 32))
    with pytest.raises(ValueError, match=r"S3D input: expected shape \(B 3 T H W\)"):
        enc(torch.rand(2, 1, 4, 32, 32))
