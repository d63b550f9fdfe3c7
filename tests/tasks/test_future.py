from __future__ import annotations

import pytest
import torch

from stssl.encoders.resnet3d import r3d_tiny
from stssl.tasks.future import (
    BlockPredictor,
    FutureFeatureTask,
    FuturePixelTask,
    ema_momentum,
    ema_update_,
    make_future_batch,
    psnr,
)
from stssl.types import EncoderOutput


def moving_squares(n: int, frames: int, size: int = 32, *, generator: torch.Generator, square: int = 8,
                   speed: int = 2) -> torch.Tensor:
    """``(n, 3, frames, size, size)``: one square per clip with a random colour, background, start and integer
    velocity in ``[-speed, speed]`` (never zero), bouncing off the borders."""
    colour = 0.3 + 0.7 * torch.rand(n, 3, generator=generator)
    background = 0.1 + 0.2 * torch.rand(n, 3, generator=generator)
    span = size - square
    p0 = torch.randint(0, span + 1, (n, 2), generator=generator).float()
    velocity = torch.randint(-speed, speed + 1, (n, 2), generator=generator).float()
    velocity[(velocity == 0).all(dim=1)] = 1.0
    pos = p0[:, None] + velocity[:, None] * torch.arange(frames).float()[None, :, None]  # (n, T, 2)
    pos = span - (pos % (2 * span) - span).abs()  # bounce
    yy = torch.arange(size).view(1, 1, size, 1)
    xx = torch.arange(size).view(1, 1, 1, size)
    py, px = pos[..., 0, None, None], pos[..., 1, None, None]
    mask = ((yy >= py) & (yy < py + square) & (xx >= px) & (xx < px + square)).float()  # (n, T, H, W)
    bg = background[:, :, None, None, None]
    return bg + mask[:, None] * (colour[:, :, None, None, None] - bg)


def _feature_task(**kwargs) -> tuple[torch.nn.Module, FutureFeatureTask]:
    torch.manual_seed(0)
    enc = r3d_tiny(width=4)
    task = FutureFeatureTask(**{"block_len": 2, "num_blocks": 3, "context_blocks": 2, "hidden": 16, **kwargs})
    task.build(enc.spec)
    return enc, task


# -- generator ----------------------------------------------------------------------------------------------------


def test_past_and_future_are_the_right_frames() -> None:
    T = 12
    video = torch.arange(float(T)).view(1, 1, T, 1, 1).expand(5, 3, T, 4, 6).contiguous()
    fb = make_future_batch(video, 4, 3, generator=torch.Generator().manual_seed(2))
    assert fb.past.shape == (5, 3, 4, 4, 6) and fb.future.shape == (5, 3, 3, 4, 6)
    assert ((fb.start >= 0) & (fb.start <= T - 7)).all()
    for b in range(5):
        s = int(fb.start[b])
        assert torch.equal(fb.past[b], video[b, :, s : s + 4])
        assert torch.equal(fb.future[b, :, :, 0, 0], torch.arange(s + 4.0, s + 7.0).expand(3, 3))


def test_generator_is_seeded_and_varies_with_the_seed(tiny_video) -> None:
    a = make_future_batch(tiny_video, 4, 2, generator=torch.Generator().manual_seed(7))
    b = make_future_batch(tiny_video, 4, 2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.past, b.past) and torch.equal(a.future, b.future) and torch.equal(a.start, b.start)
    starts = {tuple(make_future_batch(tiny_video, 4, 2, generator=torch.Generator().manual_seed(s)).start.tolist())
              for s in range(20)}
    assert len(starts) > 1


def test_too_short_video_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="T=5 frames, needs context \\+ horizon = 6"):
        make_future_batch(torch.rand(1, 3, 5, 8, 8), 4, 2)
    with pytest.raises(ValueError, match="context_blocks"):
        FutureFeatureTask(num_blocks=2, context_blocks=2)
    with pytest.raises(ValueError, match="total_steps"):
        FutureFeatureTask(ema_end=1.0)
    with pytest.raises(ValueError, match="predictor must be one of"):
        FutureFeatureTask(predictor="gru")
    with pytest.raises(ValueError, match=r"FutureFeatureTask: pool_grid must be two positive ints.*\(2,\)"):
        FutureFeatureTask(pool_grid=(2,))  # type: ignore[arg-type]


def test_requirements_cover_the_window() -> None:
    assert FuturePixelTask(context=5, horizon=3).requires.min_frames == 8
    assert FutureFeatureTask(block_len=4, num_blocks=5).requires.min_frames == 20


def test_psnr_of_a_known_error() -> None:
    x = torch.zeros(2, 3, 2, 4, 4)
    assert psnr(x + 0.01, x).item() == pytest.approx(40.0, abs=1e-4)


# -- pixels --------------------------------------------------------------------------------------------------------


def test_pixel_task_gradients_and_copy_baseline(moving_video) -> None:
    torch.manual_seed(0)
    enc = r3d_tiny(width=4)
    task = FuturePixelTask(context=4, horizon=3)
    task.build(enc.spec)
    out = task({"video": moving_video}, enc, generator=torch.Generator().manual_seed(3))
    assert out.loss.dim() == 0 and all(torch.isfinite(v) for v in out.logs.values())
    out.loss.backward()
    for name, p in list(enc.named_parameters()) + list(task.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    fb = make_future_batch(moving_video, 4, 3, generator=torch.Generator().manual_seed(3))
    expected = (fb.future - fb.past[:, :, -1:]).abs().mean()
    torch.testing.assert_close(out.logs["copy_l1"], expected)


@pytest.mark.slow
def test_pixel_task_beats_copy_last_after_overfitting_a_moving_square() -> None:
    """One clip pair of squares moving 1-2 px per frame: after a short overfit, the predicted next frame must be
    closer to the truth than repeating the last frame (which misses the motion); an untrained decoder is far
    worse (its L1 is ~20x the baseline's)."""
    torch.manual_seed(0)
    enc = r3d_tiny(width=8)
    task = FuturePixelTask(context=2, horizon=1, decoder_channels=(8, 8, 16, 16))
    task.build(enc.spec)
    video = moving_squares(2, 3, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(list(enc.parameters()) + list(task.parameters()), lr=3e-3)
    first = None
    for _ in range(200):
        out = task({"video": video}, enc)
        first = first if first is not None else out.logs
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    logs = out.logs
    assert first is not None and first["l1"] > 5 * first["copy_l1"]
    assert logs["l1"] < 0.9 * logs["copy_l1"], logs
    assert logs["psnr"] > logs["copy_psnr"] + 3.0, logs


# -- features: gradients, EMA ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("predictor", ["mlp", "transformer"])
def test_gradients_reach_online_parameters_and_never_the_ema_copy(tiny_video, predictor: str) -> None:
    enc, task = _feature_task(predictor=predictor, pool_grid=(2, 2))
    out = task({"video": tiny_video}, enc, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert task.target_encoder is not None
    target_ids = {id(p) for p in task.target_encoder.parameters()}
    online = list(enc.named_parameters()) + [(n, p) for n, p in task.named_parameters() if id(p) not in target_ids]
    for name, p in online:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    for name, p in task.target_encoder.named_parameters():
        assert not p.requires_grad and p.grad is None, f"target {name} gets gradients"
    assert not any(p.data_ptr() == q.data_ptr() for p, q in zip(enc.parameters(), task.target_encoder.parameters(), strict=True))


def _perturb_(module: torch.nn.Module, seed: int) -> None:
    """An in-place change of every parameter, as an optimizer step makes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters only: BN statistics of the target also move in its own train-mode forward."""
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_one_ema_step_matches_the_formula_and_happens_only_when_asked(tiny_video) -> None:
    enc, task = _feature_task(ema=0.9)
    batch = {"video": tiny_video}
    task(batch, enc)  # creates the copy: equal to the online encoder, no update
    assert task.target_encoder is not None and int(task.ema_updates) == 0
    online = dict(enc.named_parameters())
    for name, p in task.target_encoder.named_parameters():  # (BN statistics moved on in the online forward)
        assert torch.equal(p, online[name])
    old_target = _snapshot(task.target_encoder)
    _perturb_(enc, 1)
    task(batch, enc)  # a forward never updates
    torch.testing.assert_close(_params(task.target_encoder), _params_of(old_target, enc), rtol=0, atol=0)
    task.on_optimizer_step(enc)
    assert int(task.ema_updates) == 1
    online = dict(enc.named_parameters())
    for name, p in task.target_encoder.named_parameters():
        torch.testing.assert_close(p, 0.9 * old_target[name] + 0.1 * online[name].detach(), rtol=0, atol=1e-6)
    after_one = _params(task.target_encoder)
    task(batch, enc)
    task(batch, enc)
    assert int(task.ema_updates) == 1
    torch.testing.assert_close(_params(task.target_encoder), after_one, rtol=0, atol=0)


def _params_of(state: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameter entries of a state dict snapshot."""
    return {name: state[name] for name, _ in module.named_parameters()}


def test_plain_loop_updates_once_per_step_whatever_else_steps(tiny_video) -> None:
    """The documented pure-PyTorch loop: one update per on_optimizer_step call, however many forwards (gradient
    accumulation) and whatever other optimizers step in between (fused ones included)."""
    enc, task = _feature_task()
    opt = torch.optim.AdamW(list(enc.parameters()) + list(task.parameters()), lr=1e-2, fused=True)
    side = torch.nn.Linear(2, 1)
    side_opt = torch.optim.SGD(side.parameters(), lr=0.1)
    batch = {"video": tiny_video}
    for _ in range(3):
        for _ in range(2):  # two micro-batches per step
            task(batch, enc).loss.backward()
            side(torch.ones(1, 2)).sum().backward()
            side_opt.step()
        opt.step()
        opt.zero_grad()
        task.on_optimizer_step(enc)
    assert int(task.ema_updates) == 3
    assert not torch.equal(enc.stem[0].weight, task.target_encoder.stem[0].weight)  # a lagging copy


def test_ema_update_averages_parameters_and_copies_buffers() -> None:
    torch.manual_seed(0)
    target, online = r3d_tiny(width=4), r3d_tiny(width=4)
    online(torch.rand(2, 3, 4, 16, 16))  # moves online's BN statistics
    before = _snapshot(target)
    ema_update_(target, online, 0.75)
    online_state = online.state_dict()
    for name, p in target.named_parameters():
        torch.testing.assert_close(p, 0.75 * before[name] + 0.25 * online_state[name], rtol=0, atol=1e-6)
    for name, buf in target.named_buffers():
        assert torch.equal(buf, online_state[name]), f"buffer {name} not copied"
    with pytest.raises(ValueError, match="differ"):
        ema_update_(target, r3d_tiny(width=4, layers=(1, 1, 1, 2)), 0.5)
    with pytest.raises(ValueError, match="momentum must be in"):
        ema_update_(target, online, 1.5)


def test_ema_is_not_updated_in_eval_mode(tiny_video) -> None:
    enc, task = _feature_task()
    batch = {"video": tiny_video}
    task(batch, enc)
    task.eval()
    enc.eval()
    before = _snapshot(task.target_encoder)
    _perturb_(enc, 2)
    with torch.no_grad():
        task(batch, enc)
    task.on_optimizer_step(enc)
    assert int(task.ema_updates) == 0
    torch.testing.assert_close(_snapshot(task.target_encoder), before, rtol=0, atol=0)
    task.train()
    enc.train()
    task.on_optimizer_step(enc)
    assert int(task.ema_updates) == 1


def test_momentum_ramp_is_followed_per_update(tiny_video) -> None:
    enc, task = _feature_task(ema=0.5, ema_end=1.0, total_steps=2)
    assert [ema_momentum(s, 0.5, 1.0, 2) for s in (0, 1, 2, 3)] == pytest.approx([0.5, 0.75, 1.0, 1.0])
    batch = {"video": tiny_video}
    task(batch, enc)
    logged = []
    for step in range(3):
        _perturb_(enc, 10 + step)
        before = _params(task.target_encoder)
        online = _params(enc)
        task.on_optimizer_step(enc)
        m = float(task(batch, enc).logs["ema_momentum"])
        logged.append(m)
        for name, p in task.target_encoder.named_parameters():
            torch.testing.assert_close(p, m * before[name] + (1 - m) * online[name], rtol=0, atol=1e-6)
    assert logged == pytest.approx([0.5, 0.75, 1.0])
    assert int(task.ema_updates) == 3


def test_copy_made_under_inference_mode_stays_updatable(tiny_video) -> None:
    """Lightning validates (sanity check) under inference mode before training: the copy made there must accept
    the in-place EMA update later."""
    enc, task = _feature_task()
    task.eval()
    with torch.inference_mode():
        task({"video": tiny_video}, enc)
    task.train()
    _perturb_(enc, 3)
    task({"video": tiny_video}, enc).loss.backward()
    task.on_optimizer_step(enc)
    assert int(task.ema_updates) == 1


def test_ema_copy_follows_the_mode_of_its_owner_even_when_made_in_eval() -> None:
    """Lightning restores the modes of the modules it saw before the sanity check, one by one (no recursion): a copy
    made during that check must not stay in eval mode when its owner trains."""
    from stssl.tasks.ema import EMATarget

    ema = EMATarget(momentum=0.9).eval()
    online = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert not ema.ensure(online).training
    ema.training = True  # what Lightning's mode restore does to the modules it captured
    assert ema.ensure(online).training and ema.ensure(online)[1].training


def test_checkpoint_loaded_before_the_first_forward_restores_the_ema_copy(tiny_video) -> None:
    enc, task = _feature_task()
    task({"video": tiny_video}, enc)
    _perturb_(enc, 4)
    task.on_optimizer_step(enc)
    saved = _snapshot(task)
    assert any(k.startswith("ema.module.") for k in saved) and int(saved["ema.ema_updates"]) == 1

    _, fresh = _feature_task()
    fresh.load_state_dict(saved)  # strict: the target's entries are kept aside, not rejected
    assert fresh.target_encoder is None
    assert set(fresh.state_dict()) == set(saved)  # and saved again if nobody ran a forward
    fresh.eval()
    with torch.no_grad():
        fresh({"video": tiny_video}, enc)
    assert fresh.target_encoder is not None
    torch.testing.assert_close(_snapshot(fresh), saved, rtol=0, atol=0)
    fresh.train()  # the count (the momentum ramp) continues
    fresh.on_optimizer_step(enc)
    assert int(fresh.ema_updates) == 2


def test_feature_task_is_deterministic_per_seed(tiny_video) -> None:
    def loss(seed: int) -> float:
        enc, task = _feature_task(predictor="transformer")
        return float(task({"video": tiny_video}, enc, generator=torch.Generator().manual_seed(seed)).logs["loss"])

    assert loss(5) == loss(5)
    assert len({loss(s) for s in range(3)}) > 1


def test_identical_clips_give_zero_std_as_a_collapsed_encoder_would() -> None:
    """What the monitors read on collapse: an encoder that maps every clip to the same embedding gives 0.
    Feeding identical clips produces exactly that situation."""
    enc, task = _feature_task()  # a 6-frame window: with 6-frame clips every sample starts at frame 0
    video = torch.rand(1, 3, 6, 32, 32, generator=torch.Generator().manual_seed(0)).expand(4, -1, -1, -1, -1)
    with torch.no_grad():
        logs = task({"video": video}, enc, generator=torch.Generator().manual_seed(0)).logs
    assert logs["target_std"] < 1e-5 and logs["pred_std"] < 1e-5, logs


def test_tokens_are_grid_cells_in_row_major_order() -> None:
    """Token g of a (2, 3) grid is cell (g // 3, g % 3), its vector the mean of that cell over time and space."""
    _, task = _feature_task(pool_grid=(2, 3))
    dense = torch.randn(2, 5, 2, 4, 6)  # (N, D, T', H', W'): cells of 2 x 2 pixels
    tokens = task._tokens(EncoderOutput(dense=dense, pooled=dense.mean(dim=(2, 3, 4)), pyramid=(dense,)))
    assert tokens.shape == (2, 6, 5)
    for g in range(6):
        i, j = divmod(g, 3)
        torch.testing.assert_close(tokens[:, g], dense[:, :, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(2, 3, 4)))


def test_block_predictor_uses_the_target_step() -> None:
    torch.manual_seed(0)
    for kind in ("mlp", "transformer"):
        pred = BlockPredictor(dim=8, context_blocks=2, target_blocks=3, cells=2, kind=kind, hidden=16)
        out = pred(torch.randn(4, 2, 2, 8))
        assert out.shape == (4, 3, 2, 8)
        assert not torch.allclose(out[:, 0], out[:, 1])  # different steps, different predictions


@pytest.mark.slow
@pytest.mark.parametrize("predictor", ["mlp", "transformer"])
def test_feature_task_learns_without_collapse_on_moving_squares(predictor: str) -> None:
    """100 steps on varied clips (squares of random colour, position and speed). A collapsed solution (the same
    embedding for every clip) reaches loss 0 with target_std = pred_std = 0; here the loss must fall while both
    stds stay far from 0 (healthy runs read ~0.9-1.0 for targets, ~0.85-0.95 for predictions)."""
    torch.manual_seed(0)
    enc = r3d_tiny(width=8)
    task = FutureFeatureTask(block_len=2, num_blocks=4, context_blocks=2, hidden=64, predictor=predictor, ema=0.99)
    task.build(enc.spec)
    opt = torch.optim.Adam(list(enc.parameters()) + list(task.parameters()), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    losses, target_std, pred_std = [], [], []
    for step in range(100):
        out = task({"video": moving_squares(8, 8, generator=g)}, enc, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        task.on_optimizer_step(enc)
        losses.append(float(out.logs["loss"]))
        target_std.append(float(out.logs["target_std"]))
        pred_std.append(float(out.logs["pred_std"]))
    assert int(task.ema_updates) == 100
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.85 * first, (first, last)
    assert min(target_std[-10:]) > 0.5, target_std[-10:]
    assert min(pred_std[-10:]) > 0.4, pred_std[-10:]


def test_ema_target_before_its_copy_exists_is_a_clear_error() -> None:
    from stssl.tasks.ema import EMATarget

    with pytest.raises(RuntimeError, match="MyTask: the EMA copy does not exist yet"):
        EMATarget(0.9, owner="MyTask")(torch.zeros(1))
    with pytest.raises(ValueError, match="MyTask: ema and ema_end must be in"):
        EMATarget(1.5, owner="MyTask")
