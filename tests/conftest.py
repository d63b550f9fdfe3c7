"""Shared tiny fixtures. Tests run on CPU with B=2, T<=12, 32x32 clips."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("STSSL_CHECKS", "1")
# Two threads on a dedicated 2-core machine (CI); OMP_NUM_THREADS=1 on a shared, busy one (tiny ops spin otherwise).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


@pytest.fixture
def tiny_video() -> torch.Tensor:
    """A seeded random clip batch ``(2, 3, 12, 32, 32)`` in [0, 1]."""
    return torch.rand(2, 3, 12, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def moving_video() -> torch.Tensor:
    """``(2, 3, 12, 32, 32)``: a textured pattern translating one pixel per frame (so order is observable)."""
    g = torch.Generator().manual_seed(1)
    base = torch.rand(2, 3, 32, 64, generator=g)
    frames = [base[..., t : t + 32] for t in range(12)]
    return torch.stack(frames, dim=2)


TINY_SCENE_SHAPE = (12, 48, 144)  # frames, height, width of the shared tiny driving scene


@pytest.fixture(scope="session")
def tiny_driving_scene(tmp_path_factory: pytest.TempPathFactory):
    """A 12-frame 48x144 driving scene folder (stssl scene format), rendered once per session (no antialiasing)."""
    from stssl.worlds import render_driving, write_scene

    frames, height, width = TINY_SCENE_SHAPE
    final = tmp_path_factory.mktemp("tiny_world") / f"driving_{frames}x{height}x{width}"
    write_scene(render_driving(frames=frames, height=height, width=width, seed=0, antialias=False), final)
    return final
