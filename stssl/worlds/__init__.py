"""Procedural worlds with exact ground truth (poses, depth, semantics, boxes) and the on-disk scene format.

``WORLDS`` maps a world name to its renderer ``(frames, height, width, seed, **knobs) -> Scene``.

Example:
    >>> sorted(WORLDS)
    ['driving', 'endoscopy']
"""

from __future__ import annotations

from collections.abc import Callable

from stssl.worlds.driving import DRIVING_CLASSES, render_driving
from stssl.worlds.endoscopy import ENDOSCOPY_CLASSES, render_endoscopy
from stssl.worlds.scene_io import Scene, SceneFormatError, ensure_world, read_scene, write_scene

__all__ = [
    "Scene",
    "SceneFormatError",
    "WORLDS",
    "DRIVING_CLASSES",
    "ENDOSCOPY_CLASSES",
    "render_driving",
    "render_endoscopy",
    "write_scene",
    "read_scene",
    "ensure_world",
]

WORLDS: dict[str, Callable[..., Scene]] = {"driving": render_driving, "endoscopy": render_endoscopy}
