"""Registry-wide contract: every task gives a finite loss and gradients on a tiny encoder."""

from __future__ import annotations

import pytest
import torch

from stssl.encoders import build_encoder
from stssl.tasks import TASKS

# Tasks that need a particular kind of encoder; the rest get a tiny 3D CNN.
ENCODER_FOR = {"depth_motion": "resnet18_2d_tiny", "mae": "vit_micro"}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_gives_finite_loss_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    enc = build_encoder(ENCODER_FOR.get(name, "r3d_tiny"), **({} if name == "mae" else {"width": 8}))
    task = TASKS[name]()
    task.build(enc.spec)
    req = task.requires
    B, H, W = 2, 32, 96
    T = max(req.min_frames, 2)
    batch: dict = {"video": torch.rand(B, 3, T, H, W, generator=torch.Generator().manual_seed(1))}
    if req.intrinsics:
        K = torch.tensor([[0.58 * W, 0.0, W / 2 - 0.5], [0.0, 1.92 * H, H / 2 - 0.5], [0.0, 0.0, 1.0]])
        batch["K"] = K.expand(B, 3, 3).clone()
    if req.labels:
        batch["label"] = torch.zeros(B, dtype=torch.long)
    if req.index:
        batch["index"] = torch.arange(B)
    out = task(batch, enc, generator=torch.Generator().manual_seed(0))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert all(torch.isfinite(v).all() for v in out.logs.values())
    out.loss.backward()
    for pname, p in list(enc.named_parameters()) + list(task.named_parameters()):
        if not p.requires_grad:  # e.g. an EMA target encoder
            assert p.grad is None, f"{name}: frozen {pname} got a gradient"
            continue
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
