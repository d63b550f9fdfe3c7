"""Lightning modules."""

from __future__ import annotations

from stssl.modules.ssl import SSLModule, check_batch

__all__ = ["SSLModule", "check_batch"]
