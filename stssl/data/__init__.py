"""Video data: frame-exact readers, seeded samplers, sources, ClipDataset and ClipDataModule.

``READERS`` maps backend names to reader classes; :func:`open_video` picks one.
"""

from __future__ import annotations

from stssl.data.datamodule import ClipDataModule
from stssl.data.dataset import ClipDataset
from stssl.data.readers import READERS, VideoReader, VideoReadError, available_backends, open_video
from stssl.data.sources import SourceError, VideoRecord, load_sources, read_manifest

__all__ = [
    "READERS",
    "ClipDataModule",
    "ClipDataset",
    "SourceError",
    "VideoReadError",
    "VideoReader",
    "VideoRecord",
    "available_backends",
    "load_sources",
    "open_video",
    "read_manifest",
]
