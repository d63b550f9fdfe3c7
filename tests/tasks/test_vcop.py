from __future__ import annotations

import math

import pytest
import torch

from stssl.encoders import build_encoder
from stssl.tasks import VCOPTask, make_vcop_batch, order_permutations


def test_order_permutations_are_all_distinct_orders() -> None:
    for n in (2, 3, 4):
        perms = order_permutations(n)
        assert perms.shape == (math.factorial(n), n)
        assert len({tuple(p) for p in perms.tolist()}) == math.factorial(n)
        assert all(sorted(p) == list(range(n)) for p in perms.tolist())


def test_labels_in_range_and_inverse_recovers_input(tiny_video) -> None:
    gen = torch.Generator().manual_seed(3)
    out = make_vcop_batch(tiny_video, num_clips=3, clip_len=3, gap=1, generator=gen)
    assert out.clips.shape == (2, 3, 3, 3, 32, 32)
    assert ((out.label >= 0) & (out.label < 6)).all()
    perms = order_permutations(3)
    assert torch.equal(perms[out.label], out.permutation)
    for b in range(2):
        inv = torch.argsort(out.permutation[b])
        ordered = out.clips[b, inv]  # undo the shuffle with the returned label
        s = int(out.start[b])
        expected = torch.stack([tiny_video[b, :, s + k * 4 : s + k * 4 + 3] for k in range(3)])
        torch.testing.assert_close(ordered, expected, rtol=0, atol=0)


def test_seeded_generator_gives_identical_output(tiny_video) -> None:
    a = make_vcop_batch(tiny_video, generator=torch.Generator().manual_seed(7))
    b = make_vcop_batch(tiny_video, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.clips, b.clips) and torch.equal(a.label, b.label)
    labels = {tuple(make_vcop_batch(tiny_video, generator=torch.Generator().manual_seed(s)).label.tolist())
              for s in range(20)}
    assert len(labels) > 1


def test_too_short_video_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="T=8 frames, needs"):
        make_vcop_batch(torch.rand(1, 3, 8, 8, 8), num_clips=3, clip_len=4)


@pytest.mark.parametrize("pool_grid", [(1, 1), (2, 2), (3, 1)])
def test_task_matches_a_step_by_step_reference(pool_grid: tuple[int, int]) -> None:
    """The task's loss and gradients equal, bit for bit, the pipeline spelled out: clips -> encoder -> time-averaged
    ``pool_grid`` cells (the pooled vector for (1, 1)) -> per-pair layer on ``[f_i, f_j]`` -> classifier. The
    learning test lives with the other ordering tasks' in ``test_ordering.py``."""
    torch.manual_seed(0)
    enc = build_encoder("r3d_tiny", width=4)
    task = VCOPTask(num_clips=3, clip_len=3, hidden=8, pool_grid=pool_grid)
    task.build(enc.spec)
    assert task.pair_head is not None and task.classifier is not None
    video = torch.rand(3, 3, 10, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(1)  # dropout
    out = task({"video": video}, enc, torch.Generator().manual_seed(2))
    out.loss.backward()
    grads = [p.grad.clone() for p in task.parameters()]
    task.zero_grad()

    vb = make_vcop_batch(video, 3, 3, generator=torch.Generator().manual_seed(2))
    enc_out = enc(vb.clips.flatten(0, 1))
    if pool_grid == (1, 1):
        feats = enc_out.pooled
    else:
        feats = torch.nn.functional.adaptive_avg_pool3d(enc_out.dense, (1, *pool_grid)).flatten(1)
    feats = feats.view(3, 3, -1)
    relations = [task.pair_head(torch.cat([feats[:, i], feats[:, j]], dim=1)) for i, j in [(0, 1), (0, 2), (1, 2)]]
    torch.manual_seed(1)
    logits = task.classifier(torch.cat(relations, dim=1))
    loss = torch.nn.functional.cross_entropy(logits, vb.label)
    loss.backward()
    assert torch.equal(out.loss, loss)
    assert float(out.logs["acc"]) == float((logits.argmax(dim=1) == vb.label).float().mean())
    for ours, ref in zip(grads, (p.grad for p in task.parameters()), strict=True):
        assert ref is not None and torch.equal(ours, ref)


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="VCOPTask: pool_grid must be two positive ints"):
        VCOPTask(pool_grid=(0, 2))
    with pytest.raises(ValueError, match=r"num_clips must be in \[2, 6\]"):
        VCOPTask(num_clips=7)
    with pytest.raises(RuntimeError, match="call build"):
        VCOPTask()({"video": torch.rand(1, 3, 12, 32, 32)}, build_encoder("r3d_tiny", width=4))
