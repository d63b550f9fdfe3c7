from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stssl.encoders.resnet3d import r3d_tiny
from stssl.tasks.pirl import PIRLTask, make_pirl_batch


def _task(**kwargs) -> tuple[torch.nn.Module, PIRLTask]:
    torch.manual_seed(0)
    enc = r3d_tiny(width=4)
    task = PIRLTask(**{"memory_size": 16, "num_negatives": 6, "dim": 8, **kwargs})
    task.build(enc.spec)
    return enc, task


def _batch(video: torch.Tensor, index: list[int]) -> dict:
    return {"video": video, "index": torch.tensor(index)}


# -- generator -----------------------------------------------------------------------------------------------------


def test_tiles_are_the_shuffled_grid_of_the_image() -> None:
    video = torch.rand(3, 3, 4, 30, 40, generator=torch.Generator().manual_seed(0))
    pb = make_pirl_batch(video, grid=3, clip_len=2, generator=torch.Generator().manual_seed(1))
    assert pb.image.shape == (3, 3, 2, 30, 30) and pb.tiles.shape[:4] == (3, 9, 3, 2)
    h, w = pb.tiles.shape[-2:]
    for b in range(3):
        assert sorted(pb.permutation[b].tolist()) == list(range(9))
        for i in range(9):
            cell = int(pb.permutation[b, i])
            top, left = int(pb.top[b, cell, 0]), int(pb.left[b, cell, 0])
            assert torch.equal(pb.tiles[b, i], pb.image[b, :, :, top : top + h, left : left + w])


def test_image_is_a_square_window_of_the_clip() -> None:
    video = torch.rand(2, 3, 5, 24, 32, generator=torch.Generator().manual_seed(0))
    pb = make_pirl_batch(video, clip_len=3, crop="random", generator=torch.Generator().manual_seed(2))
    for b in range(2):
        s = int(pb.start[b])
        window = video[b, :, s : s + 3]
        found = any(torch.equal(pb.image[b], window[..., :, x : x + 24]) for x in range(32 - 24 + 1))
        assert found


def test_generator_is_seeded(tiny_video) -> None:
    a = make_pirl_batch(tiny_video, generator=torch.Generator().manual_seed(4))
    b = make_pirl_batch(tiny_video, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.tiles, b.tiles) and torch.equal(a.permutation, b.permutation)


def test_clear_errors(tiny_video) -> None:
    enc, task = _task()
    with pytest.raises(ValueError, match=r"PIRLTask: batch\['index'\] has values in \[3, 16\] but memory_size=16"):
        task(_batch(tiny_video, [3, 16]), enc)
    with pytest.raises(ValueError, match="no 'index'"):
        task({"video": tiny_video}, enc)
    with pytest.raises(ValueError, match="jigsaw_weight must be in"):
        PIRLTask(jigsaw_weight=1.5)
    with pytest.raises(ValueError, match="memory_size >= 2"):
        PIRLTask(memory_size=1)
    with pytest.raises(RuntimeError, match="build"):
        PIRLTask()(_batch(tiny_video, [0, 1]), enc)


# -- memory bank ---------------------------------------------------------------------------------------------------


def test_negatives_never_include_the_query_row() -> None:
    _, task = _task(memory_size=5, num_negatives=200)
    index = torch.tensor([0, 2, 4])
    rows = task.draw_negatives(3, index, torch.Generator().manual_seed(0))
    assert rows.shape == (3, 200) and int(rows.min()) >= 0 and int(rows.max()) < 5
    assert not (rows == index[:, None]).any()
    for b in range(3):  # every other row is drawn
        assert set(rows[b].tolist()) == set(range(5)) - {int(index[b])}


def test_bank_is_an_ema_updated_only_in_training(tiny_video) -> None:
    enc, task = _task(memory_momentum=0.5)
    start = task.bank.clone()
    task.eval()
    with torch.no_grad():
        out = task({"video": tiny_video}, enc, generator=torch.Generator().manual_seed(0))  # no index needed
    assert torch.isfinite(out.loss)
    assert torch.equal(task.bank, start) and not task.seen.any()
    task.train()
    task(_batch(tiny_video, [3, 9]), enc, generator=torch.Generator().manual_seed(0))
    first = task.bank.clone()
    assert task.seen.nonzero().flatten().tolist() == [3, 9]
    untouched = torch.ones(16, dtype=torch.bool)
    untouched[[3, 9]] = False
    assert torch.equal(first[untouched], start[untouched])
    # the second write averages with momentum 0.5: recompute f(I) of the same draw
    gen = torch.Generator().manual_seed(1)
    task(_batch(tiny_video, [3, 9]), enc, generator=gen)
    pb = make_pirl_batch(tiny_video, generator=torch.Generator().manual_seed(1))
    from stssl.tasks.image_common import encode_pooled

    assert task.image_head is not None
    f = F.normalize(task.image_head(encode_pooled(enc, pb.image)), dim=1).detach()
    expected = F.normalize(0.5 * first[[3, 9]] + 0.5 * f, dim=1)
    torch.testing.assert_close(task.bank[[3, 9]], expected)


def test_gradients_reach_every_parameter_and_seed_determinism(tiny_video) -> None:
    enc, task = _task(pool_grid=(2, 2))
    out = task(_batch(tiny_video, [0, 1]), enc, generator=torch.Generator().manual_seed(0))
    assert {"loss", "loss_jigsaw", "loss_image", "acc", "z_std", "bank_filled"} == set(out.logs)
    expected = task.jigsaw_weight * out.logs["loss_jigsaw"] + (1 - task.jigsaw_weight) * out.logs["loss_image"]
    torch.testing.assert_close(out.logs["loss"], expected)
    out.loss.backward()
    for name, p in list(enc.named_parameters()) + list(task.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    enc1, task1 = _task(pool_grid=(2, 2))
    enc2, task2 = _task(pool_grid=(2, 2))
    a = task1(_batch(tiny_video, [0, 1]), enc1, generator=torch.Generator().manual_seed(7))
    b = task2(_batch(tiny_video, [0, 1]), enc2, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(task1.bank, task2.bank)
    c = task2(_batch(tiny_video, [0, 1]), enc2, generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(b.loss, c.loss)


@pytest.mark.slow
def test_pirl_training_lowers_the_loss_without_collapse() -> None:
    """12 random-texture frames, each its own item: 40 Adam steps lower the jigsaw term (the image term is easy) and
    keep the embeddings spread."""
    torch.manual_seed(0)
    enc = r3d_tiny(width=8)
    task = PIRLTask(memory_size=12, num_negatives=8, dim=16)
    task.build(enc.spec)
    g = torch.Generator().manual_seed(0)
    video = F.interpolate(torch.rand(12, 3, 8, 8, generator=g), size=(32, 32), mode="bilinear")[:, :, None]
    opt = torch.optim.Adam([*enc.parameters(), *task.parameters()], lr=3e-3)
    history = []
    for step in range(60):
        idx = torch.randperm(12, generator=g)[:6]
        out = task(_batch(video[idx], idx.tolist()), enc, torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append({k: float(v) for k, v in out.logs.items()})
    early = sum(h["loss_jigsaw"] for h in history[2:12]) / 10  # after the bank holds every item once
    late = {k: sum(h[k] for h in history[-10:]) / 10 for k in history[0]}
    assert late["loss_jigsaw"] < 0.8 * early, (early, late)
    assert late["acc"] > 0.3 and late["z_std"] > 0.1 and late["bank_filled"] == 1.0, late  # acc chance: 1/6


def test_a_video_transformer_encoder(tiny_video) -> None:
    from stssl.encoders import build_encoder

    torch.manual_seed(0)
    enc = build_encoder("vit_micro")
    task = PIRLTask(memory_size=4, num_negatives=3, dim=8, clip_len=2)
    task.build(enc.spec)
    out = task(_batch(tiny_video, [0, 3]), enc, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(p.grad is not None for p in task.parameters())
