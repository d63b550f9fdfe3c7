"""One way to derive seeds: every seeded draw in stssl (dataset items, task labels) comes from :func:`mix_seed`."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["mix_seed", "seeded_generator"]


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (``numpy.random.SeedSequence``): stable across processes and runs.

    Example:
        >>> mix_seed(0, 1) == mix_seed(0, 1) != mix_seed(1, 0)
        True
    """
    state = np.random.SeedSequence([v & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seeded_generator(*values: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``mix_seed(*values)``."""
    return torch.Generator().manual_seed(mix_seed(*values))
