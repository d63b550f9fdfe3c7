from __future__ import annotations

import pytest
import torch

from stssl.encoders.frame2d import resnet18_2d_tiny
from stssl.encoders.resnet3d import ResNet3D
from stssl.geometry.pose import pose_vec_to_matrix
from stssl.heads.pose import PoseDecoder, PoseNet, posenet_18, posenet_tiny


def test_decoder_matches_reference_and_scale() -> None:
    torch.manual_seed(0)
    dec = PoseDecoder(in_channels=16, num_frames_to_predict=2, hidden=8)
    feats = torch.randn(3, 16, 2, 5)
    out = dec(feats)
    assert out.shape == (3, 2, 6)
    # written out: relu(squeeze) -> relu(3x3) -> relu(3x3) -> 1x1 -> spatial mean -> 0.01 * view(B, F, 6)
    x = torch.relu(dec.squeeze(feats))
    x = torch.relu(dec.pose1(torch.relu(dec.pose0(x))))
    ref = 0.01 * dec.pose2(x).mean(3).mean(2).view(3, 2, 6)
    torch.testing.assert_close(out, ref)
    unscaled = PoseDecoder(in_channels=16, num_frames_to_predict=2, hidden=8, output_scale=1.0)
    unscaled.load_state_dict(dec.state_dict())
    torch.testing.assert_close(unscaled(feats) * 0.01, out)


@pytest.mark.parametrize(("height", "width"), [(64, 192), (32, 96)])
def test_posenet_shapes_small_initial_pose_grads(height: int, width: int) -> None:
    torch.manual_seed(0)
    net = posenet_tiny()
    a, b = torch.rand(2, 3, height, width), torch.rand(2, 3, height, width)
    vec = net(a, b)
    assert vec.shape == (2, 6) and torch.isfinite(vec).all()
    assert vec[:, :3].abs().max() < 0.05, vec  # axis-angle (rad)
    assert vec[:, 3:].abs().max() < 0.05, vec  # translation
    assert vec.abs().max() > 0  # not a constant zero
    vec.square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_posenet_18_initial_pose_is_near_identity() -> None:
    torch.manual_seed(0)
    net = posenet_18()
    assert net.encoder.conv1.weight.shape[1] == 6
    with torch.no_grad():
        vec = net(torch.rand(2, 3, 64, 96), torch.rand(2, 3, 64, 96))
    assert vec.abs().max() < 0.05, vec
    M = pose_vec_to_matrix(vec)
    assert M.shape == (2, 4, 4)
    torch.testing.assert_close(M, torch.eye(4).expand(2, 4, 4), atol=0.1, rtol=0)
    R = M[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-5, rtol=0)


def test_frame_order_is_seen() -> None:
    torch.manual_seed(0)
    net = posenet_tiny().eval()
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ab, ba = net(a, b), net(b, a)
    assert not torch.allclose(ab, ba)


def test_posenet_accepts_any_single_frame_encoder() -> None:
    net = PoseNet(ResNet3D("mc3", width=8, layers=(1, 1, 1, 1), in_channels=6), hidden=8)
    assert net(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)).shape == (2, 6)


@pytest.mark.slow
def test_posenet_learns_horizontal_shift() -> None:
    """Regress a known image translation: the pose network must compare its two frames."""
    torch.manual_seed(0)
    net = posenet_tiny(width=8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        base = torch.rand(n, 3, 32, 48, generator=g)
        base = torch.nn.functional.avg_pool2d(base, 3, 1, 1)  # some spatial correlation
        shift = torch.randint(-4, 5, (n,), generator=g)
        a = base[..., 8:40]
        b = torch.stack([base[i, :, :, 8 + s : 40 + s] for i, s in enumerate(shift.tolist())])
        return a, b, shift.float() / 100.0  # target tx in the network's small output range

    # Evaluated with batch statistics (train mode, no grad): after 150 steps BatchNorm's running averages
    # still lag the moving weights, which says nothing about what the network learned.
    a_val, b_val, t_val = batch(32)
    with torch.no_grad():
        before = (net(a_val, b_val)[:, 3] - t_val).square().mean()
    for _ in range(150):
        a, b, t = batch()
        loss = (net(a, b)[:, 3] - t).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = (net(a_val, b_val)[:, 3] - t_val).square().mean()
    assert after < 0.25 * before, (before, after)
    assert after < 0.25 * t_val.var(), (after, t_val.var())  # beats predicting the mean


def test_bad_inputs_name_the_problem() -> None:
    net = posenet_tiny()
    with pytest.raises(
        ValueError, match=r"PoseNet frames_b: expected shape \(B 3 H W\) with B=2, H=32, W=32"
    ):
        net(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 48))
    with pytest.raises(
        ValueError, match=r"PoseNet frames_a: expected shape \(B 3 H W\) with B=2, got \(2, 6, 32, 32\)"
    ):
        net(torch.rand(2, 6, 32, 32), torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="encoder must take one 6-channel frame.*in_channels=3"):
        PoseNet(resnet18_2d_tiny())
    with pytest.raises(ValueError, match=r"PoseDecoder features: expected shape \(B 32 H W\)"):
        PoseDecoder(32)(torch.rand(2, 16, 2, 2))
    with pytest.raises(ValueError, match="num_frames_to_predict must be >= 1, got 0"):
        PoseDecoder(32, num_frames_to_predict=0)
