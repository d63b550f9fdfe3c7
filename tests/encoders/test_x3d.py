from __future__ import annotations

import pytest
import torch

from stssl.encoders import ENCODERS
from stssl.encoders.x3d import X3D, x3d_l, x3d_tiny, x3d_xs

# fvcore (imported by pytorchvideo) calls the deprecated torch.jit.script at import
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:FutureWarning")

# pytorchvideo's create_x3d: 3,794,274 parameters for XS/S/M and 6,153,384 for L with a 400-class head
# (paper: 3.76M and 6.1M); the head (conv5, lin5 and classifier) has 1,788,144 of them.
X3D_XS_BACKBONE_PARAMS = 2_006_130
X3D_L_BACKBONE_PARAMS = 4_365_240


def _head_free(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("blocks.5.")}


def _create_x3d(**kwargs):
    from pytorchvideo.models.x3d import create_x3d

    return create_x3d(**kwargs)


@pytest.mark.parametrize("size", [(3, 33, 47), (1, 17, 20)])
def test_odd_sizes_round_up(size: tuple[int, int, int], check_pyramid) -> None:
    """Every strided conv pads: each stage is ceil(size / stride), down to a single frame (X3D keeps time).
    (The 8x32x32 contract and gradients run for every encoder in test_encoders.py.)"""
    torch.manual_seed(0)
    assert len(check_pyramid(x3d_tiny(), size).pyramid) == 5


def test_spec_of_tiny_and_knobs() -> None:
    enc = x3d_tiny()
    assert enc.spec.channels == (8, 8, 16, 24, 48)
    assert enc.spec.strides == ((1, 2, 2), (1, 4, 4), (1, 8, 8), (1, 16, 16), (1, 32, 32))
    assert enc.spec.min_frames == 1
    assert [len(stage.res_blocks) for stage in enc.blocks[1:]] == [1, 1, 3, 2]  # ceil((1, 2, 5, 3) * 0.5)
    assert X3D(width_factor=1.0, depth_factor=0.5).spec.channels == (16, 16, 24, 48, 96)


@pytest.mark.parametrize(
    ("builder", "depth_factor", "expected"),
    [(x3d_xs, 2.2, X3D_XS_BACKBONE_PARAMS), (x3d_l, 5.0, X3D_L_BACKBONE_PARAMS)],
)
def test_standard_sizes_match_pytorchvideo_without_head(builder, depth_factor: float, expected: int) -> None:
    enc = builder()
    assert enc.spec.channels == (24, 24, 48, 96, 192)
    assert sum(p.numel() for p in enc.parameters()) == expected
    net = _create_x3d(depth_factor=depth_factor)
    assert sum(p.numel() for n, p in net.named_parameters() if not n.startswith("blocks.5.")) == expected
    # same module names as pytorchvideo: its state dict (head dropped) loads as is
    enc.load_state_dict(_head_free(net.state_dict()), strict=True)


def test_xs_s_m_are_one_network_under_three_names() -> None:
    """X3D-S and -M differ from XS only in their training clips: the registry maps all three to one builder."""
    assert ENCODERS["x3d_xs"] is ENCODERS["x3d_s"] is ENCODERS["x3d_m"] is x3d_xs
    assert ENCODERS["x3d_l"] is x3d_l and ENCODERS["x3d_tiny"] is x3d_tiny


def test_features_equal_pytorchvideo_blocks() -> None:
    torch.manual_seed(0)
    net = _create_x3d(width_factor=0.5, depth_factor=0.5).eval()
    enc = x3d_tiny().eval()
    enc.load_state_dict(_head_free(net.state_dict()), strict=True)
    x = torch.rand(1, 3, 4, 32, 32)
    with torch.no_grad():
        ref = x
        for block in list(net.blocks)[:5]:
            ref = block(ref)
        torch.testing.assert_close(enc(x).dense, ref)


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="X3D: width_factor must be > 0, got 0"):
        X3D(width_factor=0)
    with pytest.raises(ValueError, match="X3D: bottleneck_factor must be > 0"):
        X3D(bottleneck_factor=-1.0)
    enc = x3d_tiny()
    with pytest.raises(ValueError, match=r"X3D input: expected shape \(B 3 T H W\)"):
        enc(torch.rand(2, 8, 32, 32))
    with pytest.raises(ValueError, match=r"X3D input: expected shape \(B 3 T H W\)"):
        enc(torch.rand(2, 1, 4, 32, 32))
