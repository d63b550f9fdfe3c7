"""stssl: spatio-temporal self-supervised learning for video."""

from __future__ import annotations

__version__ = "0.1.0.dev0"
