from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stssl.encoders.resnet3d import r3d_tiny
from stssl.losses.contrastive import cpc_loss
from stssl.tasks.cpc import CPCTask, cpc_step_accuracy, make_cpc_batch


def _task(**kwargs) -> tuple[torch.nn.Module, CPCTask]:
    torch.manual_seed(0)
    enc = r3d_tiny(width=4)
    task = CPCTask(**{"block_len": 2, "num_blocks": 4, "pred_steps": 2, "dim": 8, "hidden": 16, **kwargs})
    task.build(enc.spec)
    return enc, task


def translating_textures(n: int, frames: int, *, generator: torch.Generator) -> torch.Tensor:
    """``(n, 3, frames, 32, 32)``: a smooth random texture per clip sliding 1-3 px per frame (its own speed)."""
    base = F.interpolate(torch.rand(n, 3, 16, 16, generator=generator), size=(64, 96), mode="bilinear")
    speed = torch.randint(1, 4, (n,), generator=generator)
    clips = [torch.stack([base[i, :, :32, t * int(speed[i]) : t * int(speed[i]) + 32] for t in range(frames)], 1)
             for i in range(n)]
    return torch.stack(clips).clamp(0, 1)


# -- generator -----------------------------------------------------------------------------------------------------


def test_blocks_are_consecutive_frames_of_one_window() -> None:
    T = 11
    video = torch.arange(float(T)).view(1, 1, T, 1, 1).expand(6, 2, T, 3, 5).contiguous()
    cb = make_cpc_batch(video, 3, 3, generator=torch.Generator().manual_seed(1))
    assert cb.blocks.shape == (6, 3, 2, 3, 3, 5)
    assert ((cb.start >= 0) & (cb.start <= T - 9)).all()
    for b in range(6):
        s = int(cb.start[b])
        expected = torch.arange(s, s + 9.0).view(3, 3)
        assert torch.equal(cb.blocks[b, :, 0, :, 0, 0], expected)


def test_generator_is_seeded(tiny_video) -> None:
    a = make_cpc_batch(tiny_video, 4, 2, generator=torch.Generator().manual_seed(5))
    b = make_cpc_batch(tiny_video, 4, 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.blocks, b.blocks) and torch.equal(a.start, b.start)
    starts = {tuple(make_cpc_batch(tiny_video, 4, 2, generator=torch.Generator().manual_seed(s)).start.tolist())
              for s in range(10)}
    assert len(starts) > 1


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"T=7 frames, needs num_blocks \* block_len = 8"):
        make_cpc_batch(torch.rand(1, 3, 7, 8, 8), 4, 2)
    with pytest.raises(ValueError, match="pred_steps < num_blocks"):
        CPCTask(num_blocks=3, pred_steps=3)
    with pytest.raises(ValueError, match="temperature"):
        CPCTask(temperature=0.0)
    with pytest.raises(RuntimeError, match="build"):
        CPCTask()({"video": torch.rand(2, 3, 16, 8, 8)}, r3d_tiny(width=4))
    assert CPCTask(block_len=3, num_blocks=5, pred_steps=2).requires.min_frames == 15


# -- accuracy and loss --------------------------------------------------------------------------------------------


def test_step_accuracy_matches_a_naive_loop() -> None:
    g = torch.Generator().manual_seed(0)
    pred, z = torch.randn(3, 5, 2, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    pred[:, :3, 0] = z[:, 1:4] * 3  # most k=1 predictions are right
    accs = cpc_step_accuracy(pred, z)
    zn, pn = F.normalize(z, dim=-1).view(15, 4), F.normalize(pred, dim=-1)
    for k in (1, 2):
        right = [int((zn @ pn[b, t, k - 1]).argmax()) == b * 5 + t + k for b in range(3) for t in range(5 - k)]
        assert accs[k - 1].item() == pytest.approx(sum(right) / len(right))
    assert accs[0] > 0.5


def test_logs_loss_gradients_and_determinism(tiny_video) -> None:
    enc, task = _task()
    out = task({"video": tiny_video}, enc, generator=torch.Generator().manual_seed(0))
    assert set(out.logs) == {"loss", "acc", "acc_k1", "acc_k2", "z_std"}
    assert out.loss.dim() == 0 and all(torch.isfinite(v) and not v.requires_grad for v in out.logs.values())
    out.loss.backward()
    for name, p in list(enc.named_parameters()) + list(task.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    again = task({"video": tiny_video}, enc, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.loss, out.loss)


def test_loss_is_cpc_loss_of_the_task_latents(tiny_video) -> None:
    enc, task = _task(pool_grid=(2, 2), normalize=False, temperature=0.5)
    out = task({"video": tiny_video}, enc, generator=torch.Generator().manual_seed(3))
    cb = make_cpc_batch(tiny_video, 4, 2, generator=torch.Generator().manual_seed(3))
    z = task.embed_blocks(cb.blocks, enc)
    assert z.shape == (2, 4, 8)
    torch.testing.assert_close(out.loss, cpc_loss(task.predict(z), z, 0.5))


def test_validation_call_works_and_changes_nothing(tiny_video) -> None:
    enc, task = _task()
    before = {k: v.clone() for k, v in task.state_dict().items()}
    task.eval()
    enc.eval()
    with torch.no_grad():
        out = task({"video": tiny_video}, enc, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    assert all(torch.equal(before[k], v) for k, v in task.state_dict().items())



def test_cpc_learns_to_predict_the_future_of_moving_textures() -> None:
    """16 textures sliding at their own speed: after 40 Adam steps the per-step accuracy is far above chance
    (1 / (B n) = 1/32) and the latents have not collapsed."""
    torch.manual_seed(0)
    enc = r3d_tiny(width=8)
    task = CPCTask(block_len=2, num_blocks=4, pred_steps=2, dim=16, hidden=32)
    task.build(enc.spec)
    g = torch.Generator().manual_seed(0)
    video = translating_textures(16, 8, generator=g)
    opt = torch.optim.Adam([*enc.parameters(), *task.parameters()], lr=3e-3)
    history = []
    for step in range(40):
        idx = torch.randperm(16, generator=g)[:8]
        out = task({"video": video[idx]}, enc, torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append({k: float(v) for k, v in out.logs.items()})
    first = sum(h["loss"] for h in history[:5]) / 5
    last = {k: sum(h[k] for h in history[-5:]) / 5 for k in history[0]}
    assert last["loss"] < 0.6 * first, (first, last)
    assert last["acc_k1"] > 0.3 and last["acc_k2"] > 0.3, last
    assert last["z_std"] > 0.05, last


@pytest.mark.parametrize("encoder_name", ["resnet18_2d_tiny", "vit_micro"])
def test_other_encoders(encoder_name: str, tiny_video) -> None:
    from stssl.encoders import build_encoder

    torch.manual_seed(0)
    enc = build_encoder(encoder_name)
    task = CPCTask(block_len=2, num_blocks=4, dim=8, hidden=16)
    task.build(enc.spec)
    out = task({"video": tiny_video}, enc, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(p.grad is not None for p in task.parameters())
