"""Shared tiny fixtures. Tests run on CPU with B=2, T<=12, 32x32 clips."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

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


REPO = Path(__file__).resolve().parents[1]


def _load_tool(name: str) -> ModuleType:
    path = REPO / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"no tool at {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_tool() -> Callable[[str], ModuleType]:
    """``load_tool("eval_table")`` imports ``tools/eval_table.py`` (the tools are scripts, not a package)."""
    return _load_tool


TINY_SCENE_SHAPE = (12, 48, 144)  # frames, height, width of the shared tiny driving scene


@pytest.fixture(scope="session")
def tiny_driving_scene(tmp_path_factory: pytest.TempPathFactory):
    """A 12-frame 48x144 driving scene folder (stssl scene format), rendered once per session (no antialiasing)."""
    from stssl.worlds import render_driving, write_scene

    frames, height, width = TINY_SCENE_SHAPE
    final = tmp_path_factory.mktemp("tiny_world") / f"driving_{frames}x{height}x{width}"
    write_scene(render_driving(frames=frames, height=height, width=width, seed=0, antialias=False), final)
    return final


class EvalTrees:
    """Builders of tiny evaluation-set trees (Cityscapes-style, DAVIS-2017) in a folder; see the ``eval_trees``
    fixture."""

    @staticmethod
    def save_png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)

    @staticmethod
    def make_cityscapes(root: Path, with_sequence: bool = True, splits: tuple[str, ...] = ("val",)) -> np.ndarray:
        """A Cityscapes-style tree: two annotated 4x8 images per split (and their sequence frames 17-20)."""
        rng = np.random.default_rng(0)
        label = np.array([[7, 8, 26, 0], [33, 24, 1, 23]], dtype=np.uint8).repeat(2, 0).repeat(2, 1)  # (4, 8)
        for split in splits:
            for city, seq in (("aachen", 0), ("bochum", 3)):
                stem = f"{city}_{seq:06d}_000019"
                EvalTrees.save_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                         rng.integers(0, 255, (4, 8, 3), dtype=np.uint8))
                EvalTrees.save_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
                if with_sequence:
                    for frame in range(17, 21):
                        name = f"{city}_{seq:06d}_{frame:06d}_leftImg8bit.png"
                        EvalTrees.save_png(root / "leftImg8bit_sequence" / split / city / name,
                                 rng.integers(0, 255, (4, 8, 3), dtype=np.uint8))
        return label

    PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [200, 200, 200] * 252

    @staticmethod
    def save_palette_png(path: Path, ids: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(ids.astype(np.uint8), mode="P")
        im.putpalette(EvalTrees.PALETTE)
        im.save(path)

    @staticmethod
    def make_davis(root: Path, T: int = 4, H: int = 12, W: int = 16) -> np.ndarray:
        """A DAVIS-2017 tree with sequences bear and dog: two objects (one moving right), a void pixel."""
        masks = np.zeros((T, H, W), dtype=np.uint8)
        for t in range(T):
            masks[t, 2:6, 1 + t : 5 + t] = 1
            masks[t, 7:11, 9:14] = 2
        masks[1, 0, 0] = 255  # void
        rng = np.random.default_rng(0)
        for seq in ("bear", "dog"):
            for t in range(T):
                frame = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
                (root / "JPEGImages" / "480p" / seq).mkdir(parents=True, exist_ok=True)
                Image.fromarray(frame).save(root / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg", quality=95)
                EvalTrees.save_palette_png(root / "Annotations" / "480p" / seq / f"{t:05d}.png", masks[t])
        (root / "ImageSets" / "2017").mkdir(parents=True)
        (root / "ImageSets" / "2017" / "val.txt").write_text("dog\nbear\n")
        return masks


@pytest.fixture
def eval_trees() -> type[EvalTrees]:
    """:class:`EvalTrees`: ``eval_trees.make_davis(root)``, ``eval_trees.make_cityscapes(root)``, ..."""
    return EvalTrees
