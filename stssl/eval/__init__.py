"""stssl.eval: evaluation metrics."""

from __future__ import annotations

from stssl.eval.metrics import depth_metrics, snippet_ate

__all__ = ["depth_metrics", "snippet_ate"]
