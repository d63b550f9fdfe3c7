"""Helpers for the per-architecture encoder tests.

The generic contract (stage shapes at ``8x32x32``, ``dense`` is the last stage, ``pooled`` its mean, a finite
gradient for every parameter) runs over every registered encoder in ``test_encoders.py``. The architecture files
check their own sizes, weight loading and quirks; :func:`check_pyramid` serves their odd-size checks.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from stssl.encoders.base import Encoder
from stssl.types import EncoderOutput

PyramidCheck = Callable[[Encoder, tuple[int, int, int]], EncoderOutput]


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


@pytest.fixture
def check_pyramid() -> PyramidCheck:
    """``check(encoder, (t, h, w))`` runs a seeded ``(2, C_in, t, h, w)`` clip and asserts that every pyramid stage
    ``i`` is ``(2, C_i, ceil(t / st_i), ceil(h / sh_i), ceil(w / sw_i))`` (strided layers pad) and finite, that
    ``dense`` is the last stage and ``pooled`` its mean. Returns the output."""

    def check(encoder: Encoder, size: tuple[int, int, int]) -> EncoderOutput:
        t, h, w = size
        video = torch.rand(2, encoder.spec.in_channels, t, h, w, generator=torch.Generator().manual_seed(0))
        out = encoder(video)
        assert len(out.pyramid) == len(encoder.spec.channels)
        for feat, ch, (st, sh, sw) in zip(out.pyramid, encoder.spec.channels, encoder.spec.strides, strict=True):
            assert tuple(feat.shape) == (2, ch, _ceil(t, st), _ceil(h, sh), _ceil(w, sw)), (size, (st, sh, sw))
            assert torch.isfinite(feat).all()
        assert out.dense is out.pyramid[-1]
        torch.testing.assert_close(out.pooled, out.dense.mean(dim=(2, 3, 4)))
        return out

    return check
