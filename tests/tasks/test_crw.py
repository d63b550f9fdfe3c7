from __future__ import annotations

import math

import pytest
import torch

from stssl.encoders import FrameEncoder2D, build_encoder
from stssl.tasks.crw import (
    CRWTask,
    palindrome_walk_loss,
    stochastic_matrix,
    transition_matrices,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------- transition matrices


@pytest.mark.parametrize("edge_dropout", [0.0, 0.3])
def test_transition_matrices_are_row_stochastic(edge_dropout: float) -> None:
    feats = torch.randn(3, 5, 7, 16, generator=_gen(0))
    fwd, bwd = transition_matrices(feats, 0.07, edge_dropout, _gen(1))
    assert fwd.shape == bwd.shape == (3, 4, 7, 7)
    for A in (fwd, bwd):
        assert (A >= 0).all()
        torch.testing.assert_close(A.sum(dim=-1), torch.ones(3, 4, 7))


def test_transitions_are_softmaxes_of_cosines_both_ways() -> None:
    feats = torch.randn(2, 3, 4, 8, generator=_gen(2), dtype=torch.float64)
    fwd, bwd = transition_matrices(feats, temperature=0.5)
    x = feats / feats.norm(dim=-1, keepdim=True)
    for b in range(2):
        for t in range(2):
            S = x[b, t] @ x[b, t + 1].T  # cosines frame t -> t+1
            torch.testing.assert_close(fwd[b, t], torch.softmax(S / 0.5, dim=1))
            torch.testing.assert_close(bwd[b, t], torch.softmax(S.T / 0.5, dim=1))


def test_edge_dropout_drops_the_requested_fraction_and_is_seeded() -> None:
    A = stochastic_matrix(torch.zeros(200, 100), temperature=1.0, edge_dropout=0.3, generator=_gen(0))
    dropped = float((A == 0).float().mean())
    assert abs(dropped - 0.3) < 0.02
    torch.testing.assert_close(A.sum(dim=1), torch.ones(200))
    again = stochastic_matrix(torch.zeros(200, 100), temperature=1.0, edge_dropout=0.3, generator=_gen(0))
    other = stochastic_matrix(torch.zeros(200, 100), temperature=1.0, edge_dropout=0.3, generator=_gen(1))
    assert torch.equal(A, again) and not torch.equal(A, other)
    # a row with every edge dropped is uniform, not NaN
    full = stochastic_matrix(torch.randn(2, 3), edge_dropout=0.999999, generator=_gen(0))
    torch.testing.assert_close(full, torch.full((2, 3), 1 / 3))


def test_bad_transition_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="temperature must be > 0"):
        stochastic_matrix(torch.zeros(2, 2), temperature=0.0)
    with pytest.raises(ValueError, match=r"edge_dropout must be in \[0, 1\)"):
        stochastic_matrix(torch.zeros(2, 2), edge_dropout=1.0)
    with pytest.raises(ValueError, match="T=1 frames, need >= 2"):
        transition_matrices(torch.zeros(2, 1, 3, 4))
    with pytest.raises(ValueError, match="features: expected shape"):
        transition_matrices(torch.zeros(2, 3, 4))


# ------------------------------------------------------------------------------------------- palindrome loss


def _naive_walk(feats: torch.Tensor, temperature: float, k: int) -> torch.Tensor:
    """P_k for one clip, node by node: 0 -> 1 -> ... -> k -> ... -> 0."""
    x = feats / feats.norm(dim=-1, keepdim=True)
    n = x.shape[1]
    walk = torch.eye(n, dtype=x.dtype)
    for t in range(k):  # forward
        step = torch.stack([torch.softmax(x[t + 1] @ x[t][i] / temperature, dim=0) for i in range(n)])
        walk = walk @ step
    for t in range(k, 0, -1):  # back
        step = torch.stack([torch.softmax(x[t - 1] @ x[t][i] / temperature, dim=0) for i in range(n)])
        walk = walk @ step
    return walk


def test_palindrome_loss_matches_a_naive_walk() -> None:
    feats = torch.randn(2, 5, 6, 8, generator=_gen(3), dtype=torch.float64)
    out = palindrome_walk_loss(feats, temperature=0.3, walk_lengths=[1, 2, 4])
    assert sorted(out.loss_per_length) == [1, 2, 4]
    expected_losses = []
    for k in (1, 2, 4):
        walks = torch.stack([_naive_walk(feats[b], 0.3, k) for b in range(2)])
        torch.testing.assert_close(out.walks[k], walks)
        ce = -torch.log(torch.diagonal(walks, dim1=1, dim2=2)).mean()
        torch.testing.assert_close(out.loss_per_length[k], ce)
        acc = (walks.argmax(dim=2) == torch.arange(6)).float().mean()
        assert float(out.acc_per_length[k]) == float(acc)
        expected_losses.append(ce)
    torch.testing.assert_close(out.loss, torch.stack(expected_losses).mean())


def test_identical_frames_return_home_and_random_frames_do_not() -> None:
    nodes = torch.randn(2, 1, 16, 64, generator=_gen(4))
    same = palindrome_walk_loss(nodes.expand(2, 6, 16, 64), temperature=0.01)
    assert float(same.loss) < 1e-3
    assert all(float(a) == 1.0 for a in same.acc_per_length.values())
    rand = palindrome_walk_loss(torch.randn(2, 6, 16, 64, generator=_gen(5)), temperature=0.07)
    assert float(rand.loss) > 0.75 * math.log(16)  # chance is log N = 2.77
    uniform = palindrome_walk_loss(torch.randn(2, 6, 16, 64, generator=_gen(5)), temperature=100.0)
    assert abs(float(uniform.loss) - math.log(16)) < 1e-2


def test_palindrome_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError, match=r"walk_lengths must be in \[1, T-1\] = \[1, 3\]"):
        palindrome_walk_loss(torch.randn(1, 4, 3, 2), walk_lengths=[4])
    with pytest.raises(ValueError, match="need >= 2 for a walk"):
        palindrome_walk_loss(torch.randn(1, 1, 3, 2))



# ------------------------------------------------------------------------------------------- the task


def _tiny_2d() -> FrameEncoder2D:
    torch.manual_seed(0)
    return FrameEncoder2D(width=4, layers=(1, 1, 1, 1))


def test_task_logs_and_gradients_reach_every_parameter() -> None:
    enc = _tiny_2d()
    task = CRWTask(num_frames=4, feature_stage=-1, proj_dim=8)
    task.build(enc.spec)
    video = torch.rand(2, 3, 6, 64, 64, generator=_gen(0))
    out = task({"video": video}, enc, _gen(1))
    assert set(out.logs) == {"loss", "acc", "acc_len1", "acc_len2", "acc_len3", "nodes", "emb_std"}
    assert float(out.logs["nodes"]) == 4  # 64 / 32 = 2 x 2 cells
    assert all(not v.requires_grad and v.dim() == 0 for v in out.logs.values())
    out.loss.backward()
    for name, p in [*enc.named_parameters(), *task.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_task_is_deterministic_per_generator_and_uses_it() -> None:
    enc = _tiny_2d()
    task = CRWTask(num_frames=3, feature_stage=2, proj_dim=8, edge_dropout=0.2)
    task.build(enc.spec)
    video = torch.rand(2, 3, 6, 32, 32, generator=_gen(0))
    a = task({"video": video}, enc, _gen(7)).loss
    b = task({"video": video}, enc, _gen(7)).loss
    c = task({"video": video}, enc, _gen(8)).loss
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_validation_call_has_no_edge_dropout_and_no_state() -> None:
    enc = _tiny_2d()
    task = CRWTask(num_frames=None, feature_stage=2, proj_dim=8, edge_dropout=0.5)
    task.build(enc.spec)
    video = torch.rand(2, 3, 4, 32, 32, generator=_gen(0))
    before = {k: v.clone() for k, v in task.state_dict().items()}
    enc.eval()
    task.eval()
    with torch.no_grad():
        a = task({"video": video}, enc, _gen(1))
        b = task({"video": video}, enc, _gen(2))  # whole clip, no dropout: nothing random is left
    assert torch.equal(a.loss, b.loss) and torch.isfinite(a.loss)
    assert all(torch.equal(before[k], v) for k, v in task.state_dict().items())
    task.train()
    assert not torch.equal(task({"video": video}, enc, _gen(1)).loss, task({"video": video}, enc, _gen(2)).loss)


def test_clip_mode_equals_frames_mode_on_a_per_frame_encoder() -> None:
    enc = _tiny_2d()
    frames = CRWTask(num_frames=None, feature_stage=2, proj_dim=8, edge_dropout=0.0)
    frames.build(enc.spec)
    clip = CRWTask(num_frames=None, feature_stage=2, proj_dim=8, edge_dropout=0.0, frame_mode="clip")
    clip.build(enc.spec)
    clip.head.load_state_dict(frames.head.state_dict())  # type: ignore[union-attr]
    video = torch.rand(2, 3, 4, 32, 32, generator=_gen(0))
    torch.testing.assert_close(
        frames({"video": video}, enc, _gen(0)).loss, clip({"video": video}, enc, _gen(0)).loss
    )


def test_clip_mode_with_video_encoders() -> None:
    x3d = build_encoder("x3d_tiny")  # no temporal stride: T' = T at every stage
    task = CRWTask(num_frames=4, feature_stage=2, proj_dim=8, frame_mode="clip")
    task.build(x3d.spec)
    out = task({"video": torch.rand(2, 3, 4, 32, 32, generator=_gen(0))}, x3d, _gen(0))
    assert torch.isfinite(out.loss)
    r3d = build_encoder("r3d_tiny", width=4)  # temporal stride 2 at stage 1
    task = CRWTask(num_frames=4, feature_stage=1, proj_dim=8, frame_mode="clip")
    task.build(r3d.spec)
    with pytest.raises(ValueError, match=r"frame_mode='clip' needs pyramid stage 1 to keep every frame"):
        task({"video": torch.rand(2, 3, 4, 32, 32)}, r3d, _gen(0))
    frames = CRWTask(num_frames=4, feature_stage=1, proj_dim=8)  # per-frame stills through a 3D CNN work
    frames.build(r3d.spec)
    assert torch.isfinite(frames({"video": torch.rand(2, 3, 4, 32, 32)}, r3d, _gen(0)).loss)


def test_task_options_and_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="CRWTask: num_frames must be >= 2"):
        CRWTask(num_frames=1)
    with pytest.raises(ValueError, match=r"walk_lengths \[5\] exceed num_frames - 1 = 3"):
        CRWTask(num_frames=4, walk_lengths=[5])
    with pytest.raises(ValueError, match="unknown frame_mode 'x'"):
        CRWTask(frame_mode="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="feature_stage=7 is out of range for an encoder with 5"):
        CRWTask(feature_stage=7).build(_tiny_2d().spec)
    assert CRWTask(num_frames=10).requires.min_frames == 10
    assert CRWTask(num_frames=None, walk_lengths=[5]).requires.min_frames == 6
    task = CRWTask(num_frames=8)
    with pytest.raises(RuntimeError, match="call build"):
        task({"video": torch.rand(1, 3, 8, 32, 32)}, _tiny_2d())
    task.build(_tiny_2d().spec)
    with pytest.raises(ValueError, match="CRWTask: video has T=5 frames, needs 8"):
        task({"video": torch.rand(1, 3, 5, 32, 32)}, _tiny_2d())


def test_node_grid_pools_the_nodes() -> None:
    enc = _tiny_2d()
    task = CRWTask(num_frames=3, feature_stage=1, node_grid=(2, 3), proj_dim=8)
    task.build(enc.spec)
    out = task({"video": torch.rand(2, 3, 3, 32, 32)}, enc, _gen(0))
    assert float(out.logs["nodes"]) == 6


@pytest.mark.slow
def test_a_tiny_training_loop_learns_to_walk_back(moving_video: torch.Tensor) -> None:
    """A textured pattern translating by a pixel per frame: the walk's loss falls and the cycle accuracy rises far
    above chance (1/16). Whole clips without edge dropout, so each step is a full-batch gradient step."""
    torch.manual_seed(0)
    enc = FrameEncoder2D(width=8, layers=(1, 1, 1, 1))
    task = CRWTask(num_frames=None, feature_stage=2, proj_dim=16, edge_dropout=0.0)  # /8: 4 x 4 nodes
    task.build(enc.spec)
    opt = torch.optim.Adam([*enc.parameters(), *task.parameters()], lr=1e-2)
    video = moving_video[:, :, :5]
    losses, accs = [], []
    for step in range(30):
        out = task({"video": video}, enc, _gen(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
        accs.append(float(out.logs["acc"]))
    assert losses[-1] < 0.35 * losses[0], losses
    assert accs[-1] > 0.6 > accs[0], accs
