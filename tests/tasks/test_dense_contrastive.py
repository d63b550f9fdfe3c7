from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange

from stssl.encoders import build_encoder
from stssl.tasks.dense_contrastive import (
    DenseContrastTask,
    cell_centres,
    cell_correspondence,
    dense_info_nce,
)
from stssl.transforms.gpu import GPUAugment


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------- geometry


def test_cell_centres_by_hand() -> None:
    # 2 x 2 cells over a 4 x 4 image: cells are 2 x 2 pixel blocks centred between pixels 0/1 and 2/3
    assert cell_centres((2, 2), (4, 4)).tolist() == [[0.5, 0.5], [2.5, 0.5], [0.5, 2.5], [2.5, 2.5]]
    # one cell per pixel: the pixel centres themselves, row-major
    assert cell_centres((2, 3), (2, 3)).tolist() == [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]]


def _hand_views() -> tuple[torch.Tensor, torch.Tensor]:
    """An 8 x 8 image and two 4 x 4 views.

    View 1: crop x in [2, 6), y in [0, 4), no resize: x' = x - 2, y' = y.
    View 2: the whole image at half size, then flipped: half-pixel resize x' = (x + 0.5) / 2 - 0.5, flip
    x'' = 3 - x', so x'' = 3.25 - x / 2 and y' = y / 2 - 0.25.
    """
    m1 = torch.tensor([[1.0, 0.0, -2.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    m2 = torch.tensor([[-0.5, 0.0, 3.25], [0.0, 0.5, -0.25], [0.0, 0.0, 1.0]])
    return m1[None], m2[None]


def test_correspondence_on_a_known_crop_and_flip() -> None:
    m1, m2 = _hand_views()
    match = cell_correspondence(m1, m2, (4, 4), (2, 2), max_distance=1.5)
    # view-1 cells (centres 0.5 / 2.5 in view pixels) sit at x = 2.5, 4.5 and y = 0.5, 2.5 in the image
    assert match.centres_1[0].tolist() == [[2.5, 0.5], [4.5, 0.5], [2.5, 2.5], [4.5, 2.5]]
    # view-2 cells: x = 6.5 - 2 x'', y = 2 y' + 0.5, so the flip puts view-2 cell 0 on the image's right
    assert match.centres_2[0].tolist() == [[5.5, 1.5], [1.5, 1.5], [5.5, 5.5], [1.5, 5.5]]
    r2, r10 = math.sqrt(2), math.sqrt(10)
    expected = torch.tensor([
        [r10, r2, math.sqrt(34), math.sqrt(26)],
        [r2, r10, math.sqrt(26), math.sqrt(34)],
        [r10, r2, math.sqrt(18), r10],
        [r2, r10, r10, math.sqrt(18)],
    ])
    torch.testing.assert_close(match.distance[0], expected)
    assert match.positive[0].nonzero().tolist() == [[0, 1], [1, 0], [2, 1], [3, 0]]
    # a view-1 cell is 2 image pixels wide, a view-2 cell 4: the unit of "cells" is 4 pixels
    assert match.cell_size.tolist() == [4.0]
    cells = cell_correspondence(m1, m2, (4, 4), (2, 2), max_distance=0.4, unit="cells")  # 1.6 px
    assert torch.equal(cells.positive, match.positive)
    assert not cell_correspondence(m1, m2, (4, 4), (2, 2), 0.3, unit="cells").positive.any()  # 1.2 px


def test_correspondence_is_symmetric_and_identity_matches_the_diagonal() -> None:
    m1, m2 = _hand_views()
    a = cell_correspondence(m1, m2, (4, 4), (2, 2), 3.5)
    b = cell_correspondence(m2, m1, (4, 4), (2, 2), 3.5)
    assert torch.equal(a.positive, b.positive.transpose(1, 2))
    torch.testing.assert_close(a.distance, b.distance.transpose(1, 2))
    eye = torch.eye(3)[None]
    same = cell_correspondence(eye, eye, (8, 12), (2, 3), 0.7, unit="cells")
    assert torch.equal(same.positive[0], torch.eye(6, dtype=torch.bool))


def test_correspondence_agrees_with_what_gpu_augment_renders() -> None:
    """A video whose pixels hold their own coordinates: after GPUAugment, every view pixel holds the image point
    that :func:`cell_correspondence` (one cell per pixel) says it shows."""
    H, W = 24, 32
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    image = torch.stack([xs / (W - 1), ys / (H - 1), torch.zeros_like(xs)])  # (3, H, W) in [0, 1]
    video = image[None, :, None].expand(6, 3, 2, H, W).contiguous()
    aug = GPUAugment((12, 16), scale=(0.2, 1.0), hflip=0.5)
    out, _ = aug(video, generator=_gen(3))
    M = aug.last_params["transform"]
    flipped = aug.last_params["flipped"]
    assert flipped.any() and not flipped.all()  # both cases are exercised
    match = cell_correspondence(M, M, (12, 16), (12, 16), 0.0)
    seen = rearrange(out[:, :2, 0], "B c h w -> B (h w) c") * torch.tensor([W - 1.0, H - 1.0])
    # The resize clamps sample points beyond the crop's outer pixel centres (half a pixel from its edge): skip them.
    # The crop's edges are the images of the view's edges (-0.5 and W' - 0.5) under M^{-1}.
    corners = torch.tensor([[-0.5, -0.5, 1.0], [15.5, 11.5, 1.0]])
    edges = torch.einsum("bij,nj->bni", torch.linalg.inv(M), corners)[..., :2]  # (B, 2, 2)
    low, high = edges.amin(dim=1, keepdim=True) + 0.5, edges.amax(dim=1, keepdim=True) - 0.5
    inside = ((match.centres_1 >= low - 1e-4) & (match.centres_1 <= high + 1e-4)).all(dim=2)
    assert inside.float().mean() > 0.8
    torch.testing.assert_close(seen[inside], match.centres_1[inside], atol=1e-3, rtol=0)
    # and two views' cells are positives exactly when they show nearby image points
    views, _ = aug(video[:2].repeat(2, 1, 1, 1, 1), generator=_gen(4))
    M = aug.last_params["transform"]
    m = cell_correspondence(M[:2], M[2:], (12, 16), (3, 4), 2.0)
    c1, c2 = m.centres_1, m.centres_2
    torch.testing.assert_close(m.distance, torch.cdist(c1, c2))
    assert m.positive.any()


def test_bad_correspondence_arguments() -> None:
    eye = torch.eye(3)[None]
    with pytest.raises(ValueError, match="unknown unit 'km'"):
        cell_correspondence(eye, eye, (4, 4), (2, 2), 1.0, unit="km")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="transform_2: expected shape"):
        cell_correspondence(eye, eye.expand(2, 3, 3), (4, 4), (2, 2), 1.0)
    with pytest.raises(ValueError, match="max_distance must be >= 0"):
        cell_correspondence(eye, eye, (4, 4), (2, 2), -1.0)


# ------------------------------------------------------------------------------------------- loss


def test_dense_info_nce_matches_a_naive_loop() -> None:
    q = torch.randn(7, 5, generator=_gen(0), dtype=torch.float64)
    k = torch.randn(9, 5, generator=_gen(1), dtype=torch.float64)
    pos = torch.rand(7, 9, generator=_gen(2)) < 0.25
    pos[3] = False  # an anchor without positives is left out
    out = dense_info_nce(q, k, pos, temperature=0.3)
    losses, hits = [], []
    for i in range(7):
        if not pos[i].any():
            continue
        s = torch.tensor([float(q[i] @ k[j] / (q[i].norm() * k[j].norm())) for j in range(9)], dtype=torch.float64)
        e = torch.exp(s / 0.3)
        losses.append(-torch.log(e[pos[i]].sum() / e.sum()))
        hits.append(float(pos[i, int(s.argmax())]))
    torch.testing.assert_close(out.loss, torch.stack(losses).mean())
    assert out.anchors.tolist() == pos.any(dim=1).tolist()
    assert float(out.acc) == pytest.approx(sum(hits) / len(hits))


def test_dense_info_nce_without_positives_is_zero_and_differentiable() -> None:
    q = torch.randn(3, 4, requires_grad=True)
    out = dense_info_nce(q, torch.randn(5, 4), torch.zeros(3, 5, dtype=torch.bool))
    assert float(out.loss.detach()) == 0.0 and not out.anchors.any()
    out.loss.backward()
    assert q.grad is not None and float(q.grad.abs().sum()) == 0.0
    with pytest.raises(TypeError, match="bool mask"):
        dense_info_nce(q, q, torch.eye(3))


# ------------------------------------------------------------------------------------------- the task


def _enc():
    torch.manual_seed(0)
    return build_encoder("r3d_tiny", width=4)


def test_identical_views_match_cell_for_cell() -> None:
    enc = _enc()
    task = DenseContrastTask(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, color_jitter=0.0, grayscale=0.0,
                             feature_stage=-2, hidden=16, proj_dim=8, max_distance=0.1)
    task.build(enc.spec)
    out = task({"video": torch.rand(2, 3, 4, 32, 32, generator=_gen(0))}, enc, _gen(1))
    assert float(out.logs["cells"]) == 16  # /8 of 32 x 32
    assert float(out.logs["matches"]) == 16 and float(out.logs["anchor_frac"]) == 1.0


def test_task_logs_and_gradients_reach_every_parameter() -> None:
    enc = _enc()
    task = DenseContrastTask(hidden=16, proj_dim=8)
    task.build(enc.spec)
    out = task({"video": torch.rand(2, 3, 4, 64, 64, generator=_gen(0))}, enc, _gen(1))
    assert set(out.logs) == {"loss", "acc", "matches", "anchor_frac", "cells", "emb_std"}
    assert all(not v.requires_grad and v.dim() == 0 for v in out.logs.values())
    assert float(out.logs["matches"]) > 0
    out.loss.backward()
    for name, p in [*enc.named_parameters(), *task.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_task_is_deterministic_per_generator_and_works_in_validation() -> None:
    enc = _enc()
    task = DenseContrastTask(feature_stage=-2, hidden=16, proj_dim=8, view_len=2, pool_time=False)
    task.build(enc.spec)
    video = torch.rand(2, 3, 5, 32, 32, generator=_gen(0))
    a = task({"video": video}, enc, _gen(5)).loss
    b = task({"video": video}, enc, _gen(5)).loss
    c = task({"video": video}, enc, _gen(6)).loss
    assert torch.equal(a, b) and not torch.equal(a, c)
    enc.eval()
    task.eval()
    before = {k: v.clone() for k, v in task.state_dict().items()}
    with torch.no_grad():
        v1 = task({"video": video}, enc, _gen(5))
        v2 = task({"video": video}, enc, _gen(5))
    assert torch.isfinite(v1.loss) and torch.equal(v1.loss, v2.loss)
    assert all(torch.equal(before[k], v) for k, v in task.state_dict().items())


def test_views_follow_size_and_view_len() -> None:
    enc = _enc()
    task = DenseContrastTask(size=(48, 64), view_len=3, hidden=16, proj_dim=8)
    task.build(enc.spec)
    assert task.requires.min_frames == 3
    out = task({"video": torch.rand(2, 3, 6, 32, 32, generator=_gen(0))}, enc, _gen(1))
    assert float(out.logs["cells"]) == 12  # 48 x 64 at /16
    with pytest.raises(ValueError, match="DenseContrastTask: video has T=2 frames, needs view_len=3"):
        task({"video": torch.rand(2, 3, 2, 32, 32)}, enc, _gen(1))


def test_task_options_are_checked() -> None:
    with pytest.raises(ValueError, match="DenseContrastTask: unknown distance_unit 'm'"):
        DenseContrastTask(distance_unit="m")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="DenseContrastTask: view_len must be >= 1"):
        DenseContrastTask(view_len=0)
    with pytest.raises(ValueError, match="hflip: expected a probability"):
        DenseContrastTask(hflip=2.0)
    with pytest.raises(ValueError, match="feature_stage=-5 is out of range for an encoder with 4"):
        DenseContrastTask(feature_stage=-5).build(_enc().spec)
    with pytest.raises(RuntimeError, match="call build"):
        DenseContrastTask()({"video": torch.rand(1, 3, 4, 32, 32)}, _enc())


def _probe(task: DenseContrastTask, enc, video: torch.Tensor) -> tuple[float, float]:
    """Mean loss and accuracy over four fixed augmentation draws."""
    with torch.no_grad():
        outs = [task({"video": video}, enc, _gen(1000 + i)) for i in range(4)]
    return sum(float(o.loss) for o in outs) / 4, sum(float(o.logs["acc"]) for o in outs) / 4


@pytest.mark.slow
def test_a_tiny_training_loop_lowers_the_loss() -> None:
    """Smooth random textures, fresh crops and flips every step: on four fixed held-out draws the cell-level
    InfoNCE falls and the retrieval accuracy (the nearest cell of the other view is a positive) rises."""
    torch.manual_seed(0)
    enc = build_encoder("r3d_tiny", width=8)
    task = DenseContrastTask(feature_stage=-2, hidden=32, proj_dim=16, color_jitter=0.0, grayscale=0.0,
                             scale=(0.5, 1.0))
    task.build(enc.spec)
    opt = torch.optim.Adam([*enc.parameters(), *task.parameters()], lr=3e-3)
    coarse = torch.rand(4, 3, 8, 8, generator=_gen(0))
    image = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    video = image[:, :, None].expand(-1, -1, 2, -1, -1).contiguous()
    loss_0, acc_0 = _probe(task, enc, video)
    for step in range(40):
        out = task({"video": video}, enc, _gen(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    loss_1, acc_1 = _probe(task, enc, video)
    assert loss_1 < 0.7 * loss_0, (loss_0, loss_1)
    assert acc_1 > acc_0 + 0.25, (acc_0, acc_1)
