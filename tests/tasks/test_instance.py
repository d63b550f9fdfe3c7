from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from stssl.encoders.resnet3d import r3d_tiny
from stssl.losses.contrastive import info_nce, nt_xent
from stssl.tasks.common import embedding_std, projection_mlp
from stssl.tasks.instance import MoCoTask, SimCLRTask, retrieval_accuracy, view_pairs
from stssl.tasks.views import TemporalViews


def textured_clips(n: int, frames: int, size: int = 24, *, generator: torch.Generator) -> torch.Tensor:
    """``(n, 3, frames, size, size)``: a smooth random colour texture per clip, panning one pixel per frame."""
    base = F.interpolate(torch.rand(n, 3, 6, 12, generator=generator), size=(size, size + frames), mode="bilinear")
    return torch.stack([base[..., t : t + size] for t in range(frames)], dim=2)


def _views(**kwargs) -> TemporalViews:
    return TemporalViews(**{"num_views": 2, "view_len": 2, "max_gap": 4, "size": 16, **kwargs})


def _simclr(**kwargs) -> tuple[torch.nn.Module, SimCLRTask]:
    torch.manual_seed(0)
    enc = r3d_tiny(width=4)
    task = SimCLRTask(**{"views": _views(), "proj_hidden": 16, "proj_dim": 8, **kwargs})
    task.build(enc.spec)
    return enc, task


def _moco(**kwargs) -> tuple[torch.nn.Module, MoCoTask]:
    torch.manual_seed(0)
    enc = r3d_tiny(width=4)
    task = MoCoTask(**{"views": _views(), "proj_hidden": 16, "proj_dim": 8, "queue_size": 32, "ema": 0.9, **kwargs})
    task.build(enc.spec)
    return enc, task


def _video(B: int = 4, T: int = 8, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, 3, T, size, size, generator=torch.Generator().manual_seed(seed))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# -- helpers ------------------------------------------------------------------------------------------------------


def test_projection_mlp_layout() -> None:
    head = projection_mlp(8, 16, 4, num_layers=3, last_batch_norm=True)
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    norms = [m for m in head if isinstance(m, torch.nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 16), (16, 4)]
    assert all(m.bias is None for m in linears)  # every linear is followed by a batch norm
    assert len(norms) == 3 and not norms[-1].affine
    plain = projection_mlp(8, 16, 4, batch_norm=False)
    assert [type(m).__name__ for m in plain] == ["Linear", "ReLU", "Linear"] and plain[0].bias is not None
    with pytest.raises(ValueError, match="must be >= 1"):
        projection_mlp(8, 0, 4)


def test_embedding_std_reads_spread_and_collapse() -> None:
    z = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))
    assert float(embedding_std(z)) == pytest.approx(16**-0.5, rel=0.05)  # uniform on the sphere: 1/sqrt(D)
    assert float(embedding_std(z[:1].expand(10, 16))) == 0.0
    views = torch.stack([z[:50], z[:1].expand(50, 16)])
    assert float(embedding_std(views)) == pytest.approx(float(embedding_std(z[:50])) / 2)
    with pytest.raises(ValueError, match="at least 2 samples"):
        embedding_std(z[:1])


def test_retrieval_accuracy_against_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(12, 5, generator=g), torch.randn(12, 5, generator=g)
    expected = sum(
        int(max(range(12), key=lambda j: float(F.cosine_similarity(q[i], k[j], dim=0))) == i) for i in range(12)
    ) / 12
    assert float(retrieval_accuracy(q, k)) == pytest.approx(expected)
    assert float(retrieval_accuracy(q, 3 * q)) == 1.0


def test_view_pairs() -> None:
    assert view_pairs(2) == [(0, 1), (1, 0)]
    assert view_pairs(3, symmetric=False) == [(0, 1)]


# -- SimCLR -------------------------------------------------------------------------------------------------------


def test_simclr_matches_the_pipeline_spelled_out() -> None:
    """Loss, gradients and logs equal: views -> one encoder call over (V B) -> projector -> NT-Xent per pair."""
    enc, task = _simclr(views=_views(num_views=3, min_gap=1, max_gap=2), temperature=0.3)
    assert task.projector is not None
    video = _video()
    out = task({"video": video}, enc, torch.Generator().manual_seed(4))
    out.loss.backward()
    grads = [p.grad.clone() for p in task.parameters()]
    task.zero_grad()

    vb = task.views(video, generator=torch.Generator().manual_seed(4))
    assert vb.views.shape == (4, 3, 3, 2, 16, 16)
    pooled = enc(rearrange(vb.views, "B V C L H W -> (V B) C L H W")).pooled
    z = task.projector(pooled).view(3, 4, -1)
    loss = (nt_xent(z[0], z[1], 0.3) + nt_xent(z[0], z[2], 0.3) + nt_xent(z[1], z[2], 0.3)) / 3
    loss.backward()
    torch.testing.assert_close(out.loss, loss, rtol=0, atol=1e-6)
    for ours, ref in zip(grads, (p.grad for p in task.parameters()), strict=True):
        assert ref is not None
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    acc = sum(float(retrieval_accuracy(z[i], z[j])) for i, j in view_pairs(3)) / 6
    assert float(out.logs["acc"]) == pytest.approx(acc)
    assert float(out.logs["std"]) == pytest.approx(float(embedding_std(z)))
    assert float(out.logs["view_gap"]) == pytest.approx(float(vb.gaps.float().mean()))


def test_simclr_gradients_reach_every_parameter() -> None:
    enc, task = _simclr()
    task({"video": _video()}, enc, torch.Generator().manual_seed(0)).loss.backward()
    for name, p in [*enc.named_parameters(), *task.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


def test_simclr_is_deterministic_per_seed() -> None:
    enc, task = _simclr()
    video = _video()

    def loss(seed: int) -> float:
        return float(task({"video": video}, enc, torch.Generator().manual_seed(seed)).logs["loss"])

    assert loss(3) == loss(3)
    assert len({loss(s) for s in range(4)}) > 1


def test_simclr_validation_call_and_batch_of_one() -> None:
    enc, task = _simclr()
    task.eval()
    enc.eval()
    with torch.inference_mode():
        out = task({"video": _video()}, enc, torch.Generator().manual_seed(0))
        single = task({"video": _video(B=1)}, enc, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.logs.values())
    assert "std" in out.logs and "std" not in single.logs  # a spread needs two samples
    assert float(single.loss) == 0.0  # one clip, no negatives


def test_defaults_work_on_the_registry_contract_batch() -> None:
    """What the registry test does once the lead registers the task: defaults, B=2, 32x96, T=min_frames."""
    for task_cls in (SimCLRTask, MoCoTask):
        torch.manual_seed(0)
        enc = r3d_tiny(width=8)
        task = task_cls()
        task.build(enc.spec)
        video = torch.rand(2, 3, task.requires.min_frames, 32, 96, generator=torch.Generator().manual_seed(1))
        out = task({"video": video}, enc, torch.Generator().manual_seed(0))
        assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.logs.values())
        out.loss.backward()
        for name, p in [*enc.named_parameters(), *task.named_parameters()]:
            assert (p.grad is not None) == p.requires_grad, f"{task_cls.__name__}: {name}"


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="num_views >= 2"):
        SimCLRTask(TemporalViews(num_views=1))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SimCLRTask(temperature=0.0)
    with pytest.raises(ValueError, match="queue_size must be >= 0"):
        MoCoTask(queue_size=-1)
    with pytest.raises(RuntimeError, match="call build"):
        SimCLRTask()({"video": _video()}, r3d_tiny(width=4))
    with pytest.raises(ValueError, match="video has T=3 frames, needs"):
        enc, task = _simclr(views=_views(view_len=2, min_gap=2))
        task({"video": _video(T=3)}, enc)


@pytest.mark.slow
def test_simclr_learns_without_collapse() -> None:
    """40 steps on panning textures: the loss falls, positive views are retrieved well above chance (1/8) and the
    embedding spread stays far from the collapse value 0 (healthy: ~0.13-0.15 for 32 dims, 1/sqrt(32) = 0.18)."""
    torch.manual_seed(0)
    enc = r3d_tiny(width=8)
    views = TemporalViews(2, 4, min_gap=0, max_gap=4, scale=(0.5, 1.0), color_jitter=0.0, grayscale=0.0)
    task = SimCLRTask(views, proj_hidden=64, proj_dim=32, temperature=0.2)
    task.build(enc.spec)
    opt = torch.optim.Adam([*enc.parameters(), *task.parameters()], lr=2e-3)
    g = torch.Generator().manual_seed(1)
    losses, stds, accs = [], [], []
    for step in range(40):
        out = task({"video": textured_clips(8, 8, generator=g)}, enc, torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.logs["loss"]))
        stds.append(float(out.logs["std"]))
        accs.append(float(out.logs["acc"]))
    first, last = sum(losses[1:6]) / 5, sum(losses[-5:]) / 5
    assert last < 0.85 * first, (first, last)
    assert sum(accs[-5:]) / 5 > 0.4, accs[-5:]
    assert min(stds[-5:]) > 0.05, stds[-5:]


# -- MoCo ---------------------------------------------------------------------------------------------------------


def test_moco_first_forward_matches_the_reference() -> None:
    """At the first forward the key encoder is an exact copy, so keys equal the online projections: the loss is
    InfoNCE of every ordered view pair against the (random) initial queue."""
    enc, task = _moco(temperature=0.5)
    assert task.queue is not None and task.projector is not None
    queue0 = task.queue.keys
    video = _video()
    out = task({"video": video}, enc, torch.Generator().manual_seed(1))
    vb = task.views(video, generator=torch.Generator().manual_seed(1))
    z = task.projector(enc(rearrange(vb.views, "B V C L H W -> (V B) C L H W")).pooled).view(2, 4, -1)
    ref = (info_nce(z[0], z[1].detach(), queue0, 0.5) + info_nce(z[1], z[0].detach(), queue0, 0.5)) / 2
    torch.testing.assert_close(out.loss, ref, rtol=0, atol=1e-6)
    enc2, asym = _moco(temperature=0.5, symmetric=False)  # the same initial weights
    out_asym = asym({"video": video}, enc2, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out_asym.loss, info_nce(z[0], z[1].detach(), queue0, 0.5), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs", [{}, {"predictor": True, "queue_size": 0, "pred_hidden": 8}])
def test_moco_gradients_reach_the_online_side_only(kwargs: dict) -> None:
    enc, task = _moco(**kwargs)
    task({"video": _video()}, enc, torch.Generator().manual_seed(0)).loss.backward()
    assert task.target_encoder is not None
    target_ids = {id(p) for p in task.ema.parameters()}
    assert target_ids
    online = [*enc.named_parameters(), *((n, p) for n, p in task.named_parameters() if id(p) not in target_ids)]
    for name, p in online:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    for name, p in task.ema.named_parameters():
        assert not p.requires_grad and p.grad is None, f"target {name} got a gradient"
    if kwargs:
        assert task.predictor is not None and task.queue is None


def test_moco_state_changes_only_in_on_optimizer_step() -> None:
    enc, task = _moco(ema=0.5)
    assert task.queue is not None
    batch = {"video": _video()}
    task(batch, enc, torch.Generator().manual_seed(0))
    queue0, target0 = task.queue.keys, {k: v.clone() for k, v in task.ema.named_parameters()}
    with torch.no_grad():  # a parameter change, as an optimizer step makes
        for p in [*enc.parameters(), *task.online_head().parameters()]:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    task(batch, enc, torch.Generator().manual_seed(1))  # forwards never write the queue or the target
    assert torch.equal(task.queue.keys, queue0) and int(task.queue.filled) == 0
    assert all(torch.equal(p, target0[k]) for k, p in task.ema.named_parameters())
    vb = task.views(batch["video"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, keys = task.target(enc)(vb.views)  # the keys that forward computed
    online = dict(task._branch(enc).named_parameters())
    task.on_optimizer_step(enc)
    assert int(task.ema_updates) == 1
    for k, p in task.ema.module.named_parameters():  # type: ignore[union-attr]
        torch.testing.assert_close(p, 0.5 * target0[f"module.{k}"] + 0.5 * online[k].detach(), rtol=0, atol=1e-6)
    # both forwards' keys (2 x V x B = 16), the second's last, were enqueued once
    assert int(task.queue.filled) == 16 and int(task.queue.ptr) == 16
    torch.testing.assert_close(task.queue.keys[8:16], F.normalize(torch.cat([keys[0], keys[1]]), dim=1))
    torch.testing.assert_close(task.queue.keys[16:], queue0[16:], rtol=0, atol=0)
    task.on_optimizer_step(enc)  # nothing pending: the queue stays
    assert int(task.queue.filled) == 16


def test_moco_eval_mode_changes_nothing() -> None:
    enc, task = _moco()
    assert task.queue is not None
    task.eval()
    enc.eval()
    with torch.inference_mode():
        out = task({"video": _video()}, enc, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    before = _snapshot(task)
    task.on_optimizer_step(enc)
    after = _snapshot(task)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert int(task.queue.filled) == 0 and int(task.ema_updates) == 0
    task.train()  # the copy made under inference mode stays updatable
    task.ema.module.eval()  # type: ignore[union-attr]  # as Lightning leaves a copy made in its sanity check
    task({"video": _video()}, enc, torch.Generator().manual_seed(0))
    assert all(m.training for m in task.ema.modules())  # the key encoder follows the task's mode
    task.on_optimizer_step(enc)
    assert int(task.ema_updates) == 1 and int(task.queue.filled) == 8


def test_moco_pending_keys_are_bounded_by_the_queue() -> None:
    enc, task = _moco(queue_size=12)
    for seed in range(5):  # forwards whose steps were never taken (skipped AMP steps)
        task({"video": _video()}, enc, torch.Generator().manual_seed(seed))
    assert sum(k.shape[0] for k in task._pending) <= 12 + 8
    task.on_optimizer_step(enc)
    assert int(task.queue.filled) == 12 and not task._pending


def test_moco_checkpoint_round_trip() -> None:
    enc, task = _moco()
    task({"video": _video()}, enc, torch.Generator().manual_seed(0))
    task.on_optimizer_step(enc)
    saved = _snapshot(task)
    assert {"queue.queue", "queue.ptr", "queue.filled", "ema.ema_updates"} <= set(saved)
    assert any(k.startswith("ema.module.encoder.") for k in saved) and any(k.startswith("ema.module.head.") for k in saved)
    _, fresh = _moco()
    fresh.load_state_dict(saved)
    fresh.eval()
    with torch.no_grad():
        fresh({"video": _video()}, enc, torch.Generator().manual_seed(0))  # makes the copy from the checkpoint
    restored = _snapshot(fresh)
    assert all(torch.equal(restored[k], saved[k]) for k in saved)


@pytest.mark.slow
def test_moco_learns_without_collapse() -> None:
    """60 steps with a queue of one step's keys (full from step 1 on): the loss falls and the queries keep their
    spread (healthy ~0.12 for 32 dims; a collapsed encoder reads 0)."""
    torch.manual_seed(0)
    enc = r3d_tiny(width=8)
    views = TemporalViews(2, 4, min_gap=0, max_gap=4, scale=(0.5, 1.0), color_jitter=0.0, grayscale=0.0)
    task = MoCoTask(views, proj_hidden=64, proj_dim=32, queue_size=16, ema=0.9)
    task.build(enc.spec)
    opt = torch.optim.Adam([*enc.parameters(), *task.parameters()], lr=2e-3)
    g = torch.Generator().manual_seed(1)
    losses, stds = [], []
    for step in range(60):
        out = task({"video": textured_clips(8, 8, generator=g)}, enc, torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        task.on_optimizer_step(enc)
        losses.append(float(out.logs["loss"]))
        stds.append(float(out.logs["std"]))
    assert int(task.ema_updates) == 60 and float(out.logs["queue_filled"]) == 1.0
    first, last = sum(losses[1:6]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    assert min(stds[-5:]) > 0.05, stds[-5:]
