from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from stssl.encoders.resnet3d import r3d_tiny
from stssl.losses.contrastive import byol_loss, dino_loss, update_center
from stssl.tasks.common import embedding_std
from stssl.tasks.distill import BYOLTask, DINOHead, DINOTask
from stssl.tasks.views import TemporalViews


def textured_clips(n: int, frames: int, size: int = 24, *, generator: torch.Generator) -> torch.Tensor:
    """``(n, 3, frames, size, size)``: a smooth random colour texture per clip, panning one pixel per frame."""
    base = F.interpolate(torch.rand(n, 3, 6, 12, generator=generator), size=(size, size + frames), mode="bilinear")
    return torch.stack([base[..., t : t + size] for t in range(frames)], dim=2)


def _views(**kwargs) -> TemporalViews:
    return TemporalViews(**{"num_views": 2, "view_len": 2, "max_gap": 4, "size": 16, **kwargs})


def _byol(**kwargs) -> tuple[torch.nn.Module, BYOLTask]:
    torch.manual_seed(0)
    enc = r3d_tiny(width=4)
    task = BYOLTask(**{"views": _views(), "proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16, "ema": 0.9, **kwargs})
    task.build(enc.spec)
    return enc, task


def _dino(**kwargs) -> tuple[torch.nn.Module, DINOTask]:
    torch.manual_seed(0)
    enc = r3d_tiny(width=4)
    task = DINOTask(**{"views": _views(), "head_hidden": 16, "bottleneck": 8, "num_prototypes": 32, **kwargs})
    task.build(enc.spec)
    return enc, task


def _video(B: int = 4, T: int = 8, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, 3, T, size, size, generator=torch.Generator().manual_seed(seed))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _perturb_(params: list[torch.nn.Parameter], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def _assert_online_only_gradients(enc: torch.nn.Module, task: BYOLTask | DINOTask) -> None:
    target_ids = {id(p) for p in task.ema.parameters()}
    assert target_ids and task.target_encoder is not None
    online = [*enc.named_parameters(), *((n, p) for n, p in task.named_parameters() if id(p) not in target_ids)]
    for name, p in online:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    for name, p in task.ema.named_parameters():
        assert not p.requires_grad and p.grad is None, f"target {name} got a gradient"


# -- BYOL ---------------------------------------------------------------------------------------------------------


def test_byol_first_forward_matches_the_reference() -> None:
    """The target starts as an exact copy, so its projections equal the online ones: the loss is the mean of
    2 - 2 cos(p_i, z_j) over the ordered pairs of different views."""
    enc, task = _byol(views=_views(num_views=3, min_gap=1, max_gap=2))
    assert task.projector is not None and task.predictor is not None
    video = _video()
    out = task({"video": video}, enc, torch.Generator().manual_seed(2))
    vb = task.views(video, generator=torch.Generator().manual_seed(2))
    z = task.projector(enc(rearrange(vb.views, "B V C L H W -> (V B) C L H W")).pooled)
    p = task.predictor(z).view(3, 4, -1)
    z = z.view(3, 4, -1)
    ref = sum(byol_loss(p[i], z[j]) for i in range(3) for j in range(3) if i != j) / 6
    torch.testing.assert_close(out.loss, ref, rtol=0, atol=1e-6)
    assert float(out.logs["target_std"]) == pytest.approx(float(embedding_std(z)), abs=1e-6)


def test_byol_gradients_reach_the_online_side_only() -> None:
    enc, task = _byol()
    task({"video": _video()}, enc, torch.Generator().manual_seed(0)).loss.backward()
    _assert_online_only_gradients(enc, task)


def test_byol_target_moves_only_in_on_optimizer_step() -> None:
    enc, task = _byol(ema=0.8)
    batch = {"video": _video()}
    task(batch, enc, torch.Generator().manual_seed(0))
    target0 = {k: v.clone() for k, v in task.ema.module.named_parameters()}  # type: ignore[union-attr]
    _perturb_([*enc.parameters(), *task.online_head().parameters()], 1)
    for seed in range(3):
        task(batch, enc, torch.Generator().manual_seed(seed))
    assert all(torch.equal(p, target0[k]) for k, p in task.ema.module.named_parameters())  # type: ignore[union-attr]
    online = {k: v.detach().clone() for k, v in task._branch(enc).named_parameters()}
    task.on_optimizer_step(enc)
    assert int(task.ema_updates) == 1
    for k, p in task.ema.module.named_parameters():  # type: ignore[union-attr]
        torch.testing.assert_close(p, 0.8 * target0[k] + 0.2 * online[k], rtol=0, atol=1e-6)
    assert not any(k.startswith("predictor") for k in online)  # the predictor has no target copy


def test_byol_eval_mode_changes_nothing_and_validation_call_works() -> None:
    enc, task = _byol()
    task.eval()
    enc.eval()
    with torch.inference_mode():
        out = task({"video": _video()}, enc, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.logs.values())
    before = _snapshot(task)
    task.on_optimizer_step(enc)
    assert all(torch.equal(v, before[k]) for k, v in _snapshot(task).items())
    assert int(task.ema_updates) == 0


def test_byol_is_deterministic_per_seed() -> None:
    enc, task = _byol()
    video = _video()

    def loss(seed: int) -> float:
        return float(task({"video": video}, enc, torch.Generator().manual_seed(seed)).logs["loss"])

    assert loss(3) == loss(3)
    assert len({loss(s) for s in range(4)}) > 1


@pytest.mark.slow
def test_byol_learns_without_collapse() -> None:
    """40 steps: the loss falls while the online and target projections keep their spread (healthy ~0.14 for 32
    dims; the trivial solution of this loss, a constant embedding, reads 0)."""
    torch.manual_seed(0)
    enc = r3d_tiny(width=8)
    views = TemporalViews(2, 4, min_gap=0, max_gap=4, scale=(0.5, 1.0), color_jitter=0.0, grayscale=0.0)
    task = BYOLTask(views, proj_hidden=64, proj_dim=32, pred_hidden=64, ema=0.9)
    task.build(enc.spec)
    opt = torch.optim.Adam([*enc.parameters(), *task.parameters()], lr=2e-3)
    g = torch.Generator().manual_seed(1)
    losses, stds, target_stds = [], [], []
    for step in range(40):
        out = task({"video": textured_clips(8, 8, generator=g)}, enc, torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        task.on_optimizer_step(enc)
        losses.append(float(out.logs["loss"]))
        stds.append(float(out.logs["std"]))
        target_stds.append(float(out.logs["target_std"]))
    first, last = sum(losses[1:6]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert min(stds[-5:]) > 0.05 and min(target_stds[-5:]) > 0.05, (stds[-5:], target_stds[-5:])


# -- DINO ---------------------------------------------------------------------------------------------------------


def test_dino_head_scores_are_cosines_to_the_prototypes() -> None:
    torch.manual_seed(0)
    head = DINOHead(8, 16, 4, 10, num_layers=2, batch_norm=True)
    x = torch.randn(5, 8)
    head.eval()
    emb = F.normalize(head.mlp(x), dim=1)
    torch.testing.assert_close(head(x), emb @ F.normalize(head.prototypes, dim=1).T)
    torch.testing.assert_close(head.embed(x).norm(dim=1), torch.ones(5))
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "BatchNorm1d", "GELU", "Linear"]
    with pytest.raises(ValueError, match="must be >= 1"):
        DINOHead(8, 16, 4, 0)


def test_dino_first_forward_matches_the_reference_with_local_views() -> None:
    """Teacher = exact copy at the first forward, so teacher logits are the student's on the global views; the
    loss is dino_loss over the student's global + local views with the zero centre."""
    local = TemporalViews(num_views=2, view_len=2, size=8, scale=(0.2, 0.5))
    enc, task = _dino(local_views=local, student_temp=0.2, teacher_temp=0.05)
    assert task.head is not None
    assert task.requires.min_frames == 2
    video = _video()
    out = task({"video": video}, enc, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    vb = task.views(video, generator=gen)
    lv = local(video, generator=gen)
    assert lv.views.shape == (4, 2, 3, 2, 8, 8)
    glob = task.head(enc(rearrange(vb.views, "B V C L H W -> (V B) C L H W")).pooled).view(2, 4, -1)
    loc = task.head(enc(rearrange(lv.views, "B V C L H W -> (V B) C L H W")).pooled).view(2, 4, -1)
    ref = dino_loss(torch.cat([glob, loc]), glob, torch.zeros(32), 0.2, 0.05)
    torch.testing.assert_close(out.loss, ref, rtol=0, atol=1e-6)
    assert 1 <= float(out.logs["prototypes_used"]) <= 8


def test_dino_gradients_reach_the_student_only() -> None:
    enc, task = _dino(local_views=TemporalViews(2, 1, size=8))
    task({"video": _video()}, enc, torch.Generator().manual_seed(0)).loss.backward()
    _assert_online_only_gradients(enc, task)
    assert not task.center.requires_grad


def test_dino_centre_and_teacher_move_only_in_on_optimizer_step() -> None:
    """Two micro-batches then one step: the centre takes one EMA step towards the mean of both batches' teacher
    logits; the teacher one EMA step towards the student."""
    enc, task = _dino(center_momentum=0.7, ema=0.5)
    teacher_logits = []
    for seed in (0, 1):
        video = _video(seed=seed)
        task({"video": video}, enc, torch.Generator().manual_seed(seed))
        vb = task.views(video, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            teacher_logits.append(task.target(enc)(vb.views)[1])
    assert torch.equal(task.center, torch.zeros(32))
    expected = update_center(torch.zeros(32), torch.stack([t.mean(dim=(0, 1)) for t in teacher_logits])[None], 0.7)
    target0 = {k: v.clone() for k, v in task.ema.module.named_parameters()}  # type: ignore[union-attr]
    _perturb_([*enc.parameters(), *task.online_head().parameters()], 2)
    online = {k: v.detach().clone() for k, v in task._branch(enc).named_parameters()}
    task.on_optimizer_step(enc)
    torch.testing.assert_close(task.center, expected)
    for k, p in task.ema.module.named_parameters():  # type: ignore[union-attr]
        torch.testing.assert_close(p, 0.5 * target0[k] + 0.5 * online[k], rtol=0, atol=1e-6)
    center1 = task.center.clone()
    task.on_optimizer_step(enc)  # no forward since: the centre stays
    assert torch.equal(task.center, center1) and int(task.ema_updates) == 2


def test_dino_eval_mode_changes_nothing_and_validation_call_works() -> None:
    enc, task = _dino(local_views=TemporalViews(2, 1, size=8))
    task({"video": _video()}, enc, torch.Generator().manual_seed(0))
    task.on_optimizer_step(enc)
    task.eval()
    enc.eval()
    before = _snapshot(task)
    with torch.inference_mode():
        out = task({"video": _video(B=1)}, enc, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.logs.values())
    task.on_optimizer_step(enc)
    assert all(torch.equal(v, before[k]) for k, v in _snapshot(task).items())


def test_dino_teacher_temperature_warms_up_per_step() -> None:
    enc, task = _dino(warmup_teacher_temp=0.02, teacher_temp=0.06, teacher_temp_warmup_steps=2)
    temps = []
    for step in range(4):
        temps.append(float(task({"video": _video()}, enc, torch.Generator().manual_seed(step)).logs["teacher_temp"]))
        task.on_optimizer_step(enc)
    assert temps == pytest.approx([0.02, 0.04, 0.06, 0.06])


def test_identical_clips_read_as_collapse() -> None:
    """What the monitors read on collapse: identical clips (hence identical embeddings) give std 0 and one
    prototype in use."""
    enc, task = _dino(views=_views(min_gap=0, max_gap=0), head_batch_norm=False)
    enc.eval()
    task.eval()
    task.views.augment = False
    video = _video(B=1, T=2).expand(4, -1, -1, -1, -1)  # T = view_len: every view starts at frame 0
    with torch.no_grad():
        logs = task({"video": video}, enc, torch.Generator().manual_seed(0)).logs
    assert float(logs["std"]) < 1e-5 and float(logs["feat_std"]) < 1e-5 and float(logs["prototypes_used"]) == 1


def test_defaults_work_on_the_registry_contract_batch() -> None:
    for task_cls in (BYOLTask, DINOTask):
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
    with pytest.raises(ValueError, match="teacher_temp must be > 0"):
        DINOTask(teacher_temp=0.0)
    with pytest.raises(ValueError, match="center_momentum"):
        DINOTask(center_momentum=1.5)
    with pytest.raises(ValueError, match="ema and ema_end must be in"):
        BYOLTask(ema=2.0)
    with pytest.raises(RuntimeError, match="call build"):
        BYOLTask()({"video": _video()}, r3d_tiny(width=4))
    from stssl.encoders import build_encoder

    vit = build_encoder("vit_micro")
    with pytest.raises(ValueError, match=r"view_len=1 is shorter than the encoder's min_frames=2"):
        DINOTask(_views(), local_views=TemporalViews(2, 1)).build(vit.spec)


@pytest.mark.slow
def test_dino_learns_without_collapse() -> None:
    """60 steps: the loss falls while the student's embeddings keep their spread and the teacher uses many
    prototypes (healthy: 10-14 of the 16 views' top prototypes distinct; collapse reads 1)."""
    torch.manual_seed(0)
    enc = r3d_tiny(width=8)
    views = TemporalViews(2, 4, min_gap=0, max_gap=4, scale=(0.5, 1.0), color_jitter=0.0, grayscale=0.0)
    task = DINOTask(views, head_hidden=64, bottleneck=16, num_prototypes=64, ema=0.99)
    task.build(enc.spec)
    opt = torch.optim.Adam([*enc.parameters(), *task.parameters()], lr=2e-3)
    g = torch.Generator().manual_seed(1)
    losses, stds, used = [], [], []
    for step in range(60):
        out = task({"video": textured_clips(8, 8, generator=g)}, enc, torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        task.on_optimizer_step(enc)
        losses.append(float(out.logs["loss"]))
        stds.append(float(out.logs["std"]))
        used.append(float(out.logs["prototypes_used"]))
    first, last = sum(losses[1:6]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    assert min(stds[-5:]) > 0.05, stds[-5:]
    assert min(used[-5:]) >= 4, used[-5:]
    assert task.center.abs().sum() > 0
