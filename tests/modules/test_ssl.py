from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision
from torch.utils.data import DataLoader

from stssl.encoders import build_encoder
from stssl.modules import SSLModule, check_batch
from stssl.modules.callbacks import MetricsJSON
from stssl.seeding import seeded_generator
from stssl.tasks import TaskRequirements, VCOPTask
from stssl.tasks.base import PretextTask
from stssl.tasks.future import FutureFeatureTask
from stssl.types import TaskOutput


def _loader(frames: int = 12, n: int = 4) -> DataLoader:
    data = [{"video": torch.rand(3, frames, 32, 32), "index": i} for i in range(n)]
    return DataLoader(data, batch_size=2)


def _module(**task_kwargs) -> SSLModule:
    return SSLModule(build_encoder("r3d_tiny", width=8), [VCOPTask(hidden=16, **task_kwargs)])


def test_check_batch_names_what_is_missing() -> None:
    video = torch.rand(2, 3, 4, 8, 8)
    with pytest.raises(ValueError, match="missing key 'video'"):
        check_batch({"x": video}, TaskRequirements())
    with pytest.raises(ValueError, match=r"need at least 12 frames per clip, got shape \(2, 3, 4, 8, 8\); raise"):
        check_batch({"video": video}, TaskRequirements(min_frames=12))
    with pytest.raises(ValueError, match="need intrinsics 'K'"):
        check_batch({"video": video}, TaskRequirements(intrinsics=True))
    check_batch({"video": video, "K": torch.eye(3).expand(2, 3, 3)}, TaskRequirements(min_frames=4, intrinsics=True))
    with pytest.raises(ValueError, match="need 'index'"):
        check_batch({"video": video}, TaskRequirements(index=True))
    check_batch({"video": video, "index": torch.arange(2)}, TaskRequirements(index=True))


def test_task_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="task names must be unique"):
        SSLModule(build_encoder("r3d_tiny", width=8), [VCOPTask(), VCOPTask()])
    with pytest.raises(ValueError, match="tasks is empty"):
        SSLModule(build_encoder("r3d_tiny", width=8), [])


def test_short_clips_fail_on_the_first_batch(tmp_path) -> None:
    trainer = L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="need at least 12 frames"):
        trainer.fit(_module(), _loader(frames=8))


def test_fit_logs_per_task_metrics_and_writes_metrics_json(tmp_path) -> None:
    model = _module()
    weights_before = [p.detach().clone() for p in model.encoder.parameters()]
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, callbacks=[MetricsJSON()], enable_model_summary=False)
    trainer.fit(model, _loader(), _loader())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("train/loss_epoch", "train/vcop/loss_epoch", "train/vcop/acc_epoch", "val/vcop/loss", "val/vcop/acc"):
        assert key in metrics, sorted(metrics)
    assert 0.0 <= metrics["val/vcop/acc"] <= 1.0
    changed = any(not torch.equal(a, b) for a, b in zip(weights_before, model.encoder.parameters(), strict=True))
    assert changed, "training did not update the encoder"


def test_validation_labels_are_fixed_across_epochs(tmp_path) -> None:
    model = _module(dropout=0.0)
    loader = _loader()
    trainer = L.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path, enable_model_summary=False)
    first = trainer.validate(model, loader, verbose=False)[0]
    second = trainer.validate(model, loader, verbose=False)[0]
    assert first == second


# -- label seeds and the once-per-optimizer-step hook ---------------------------------------------------------------


class _RecordingTask(PretextTask):
    """Records its first label draw per call and the on_optimizer_step calls; a small loss on the pooled features."""

    default_name = "recording"

    def __init__(self) -> None:
        super().__init__()
        self.draws: list[int] = []
        self.steps = 0

    def forward(self, batch: dict, encoder, generator: torch.Generator | None = None) -> TaskOutput:
        self.draws.append(int(torch.randint(2**62, (1,), generator=generator)))
        loss = encoder(batch["video"]).pooled.pow(2).mean()
        return TaskOutput(loss=loss, logs={"loss": loss.detach()})

    def on_optimizer_step(self, encoder) -> None:
        if self.training:
            self.steps += 1


class _SideOptimizer(L.Callback):
    """Another optimizer in the process (an online probe, say) that steps on every micro-batch."""

    def __init__(self) -> None:
        self.layer = torch.nn.Linear(2, 1)
        self.opt = torch.optim.SGD(self.layer.parameters(), lr=0.1)

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.layer(torch.ones(1, 2)).sum().backward()
        self.opt.step()
        self.opt.zero_grad()


def _future_module() -> SSLModule:
    torch.manual_seed(0)
    tasks = [FutureFeatureTask(block_len=2, num_blocks=2, context_blocks=1, hidden=8, ema=0.9), _RecordingTask()]
    return SSLModule(build_encoder("r3d_tiny", width=4), tasks)  # type: ignore[list-item]


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=tmp_path, limit_val_batches=0, **kwargs)


def test_one_ema_update_and_one_hook_call_per_accumulated_step(tmp_path) -> None:
    """6 micro-batches, accumulate 2: 3 optimizer steps give 3 EMA updates, although another optimizer steps
    on every micro-batch; and each micro-batch draws its own labels, seeded by (seed, step, batch_idx, rank, task)."""
    model = _future_module()
    trainer = _trainer(tmp_path, max_epochs=1, accumulate_grad_batches=2, callbacks=[_SideOptimizer()])
    trainer.fit(model, _loader(frames=4, n=12))
    future, recording = model.tasks
    assert trainer.global_step == 3
    assert int(future.ema_updates) == 3 and recording.steps == 3
    expected = [int(torch.randint(2**62, (1,), generator=seeded_generator(0, j // 2, j, 0, 1))) for j in range(6)]
    assert recording.draws == expected and len(set(expected)) == 6
    target = dict(future.target_encoder.named_parameters())
    assert any(not torch.equal(p, target[n]) for n, p in model.encoder.named_parameters())  # a lagging copy


def test_ema_and_its_count_resume_from_a_checkpoint_as_if_never_stopped(tmp_path) -> None:
    """Two epochs of 2 steps straight, against one epoch, a checkpoint, and a resumed second epoch."""
    straight = _future_module()
    _trainer(tmp_path / "a", max_epochs=2, accumulate_grad_batches=2).fit(straight, _loader(frames=4, n=8))

    first = _future_module()
    trainer = _trainer(tmp_path / "b", max_epochs=1, accumulate_grad_batches=2)
    trainer.fit(first, _loader(frames=4, n=8))
    trainer.save_checkpoint(tmp_path / "b.ckpt")
    resumed = _future_module()
    _trainer(tmp_path / "c", max_epochs=2, accumulate_grad_batches=2).fit(
        resumed, _loader(frames=4, n=8), ckpt_path=tmp_path / "b.ckpt"
    )
    assert int(first.tasks[0].ema_updates) == 2
    assert int(resumed.tasks[0].ema_updates) == int(straight.tasks[0].ema_updates) == 4
    want, got = straight.state_dict(), resumed.state_dict()
    assert set(got) == set(want) and any(k.startswith("tasks.0.ema.module.") for k in got)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)


class _InfGradOnce(L.Callback):
    """Makes the gradient non-finite on the micro-batch ``at`` (GradScaler then skips that step)."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.seen == self.at:
            next(p for p in pl_module.encoder.parameters() if p.grad is not None).grad.fill_(float("inf"))
        self.seen += 1


@pytest.mark.parametrize("fused", [False, True])
def test_an_amp_step_skipped_for_inf_gradients_gives_no_update(tmp_path, fused: bool) -> None:
    """GradScaler skips step() (plain optimizers) or calls it with found_inf set (fused ones): no update either way."""
    model = _future_module()
    model.optimizer_factory = lambda params: torch.optim.AdamW(params, lr=1e-3, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)  # (the default 2**16 overflows fp16 on its own)
    trainer = _trainer(tmp_path, max_epochs=1, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
                       callbacks=[_InfGradOnce(at=1)])
    trainer.fit(model, _loader(frames=4, n=8))
    future, recording = model.tasks
    steps_taken = int(trainer.optimizers[0].state[next(model.encoder.parameters())]["step"])
    assert trainer.global_step == 4 and steps_taken == 3  # one of the 4 steps was skipped
    assert recording.steps == 3 and int(future.ema_updates) == 3
