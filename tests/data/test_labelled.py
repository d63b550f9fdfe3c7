"""Labelled clips for dense transfer: the label selection and SemanticClips on a rendered scene."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stssl.data.labelled import SemanticClips, select_labelled
from stssl.worlds.scene_io import read_semantic


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.33, 1.0])
def test_select_labelled_counts_and_spread(fraction: float) -> None:
    counts = [40, 0, 25, 35]
    picked = select_labelled(counts, fraction, seed=3)
    n = max(1, round(fraction * 100))
    assert len(picked) == len(set(picked)) == n
    assert all(0 <= i < counts[s] for s, i in picked)
    assert picked == sorted(picked)
    # evenly spread: consecutive picks over the concatenated candidates are 100 / n apart (+-1)
    flat = np.array([sum(counts[:s]) + i for s, i in picked])
    if n > 1:
        gaps = np.diff(flat)
        assert gaps.min() >= int(100 / n) and gaps.max() <= int(np.ceil(100 / n))


def test_select_labelled_seeds_and_errors() -> None:
    assert select_labelled([50], 0.1, seed=0) == select_labelled([50], 0.1, seed=0)
    assert select_labelled([50], 0.1, seed=0) != select_labelled([50], 0.1, seed=1)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            select_labelled([5], bad)
    with pytest.raises(ValueError, match="no candidate"):
        select_labelled([0, 0], 0.5)


def test_semantic_clips_items(tiny_driving_scene: Path) -> None:
    sem, classes = read_semantic(tiny_driving_scene)
    ds = SemanticClips([tiny_driving_scene], clip_len=3, frame_stride=2)
    assert ds.classes == classes and ds.num_classes == len(classes)
    assert [f for _, f in ds.items] == list(range(4, sem.shape[0]))  # frames with 4 frames of context
    item = ds[0]
    T, H, W = sem.shape
    assert item["video"].shape == (3, 3, H, W) and item["video"].dtype == torch.uint8
    assert torch.equal(item["mask"], torch.from_numpy(sem[item["frame"]].astype(np.int64)))
    # the clip ends at the labelled frame: its last frame is the scene's frame t
    assert torch.equal(item["video"][:, -1], ds.videos[0][item["frame"]])
    assert torch.equal(item["video"][:, 0], ds.videos[0][item["frame"] - 4])


def test_semantic_clips_resize_and_fraction(tiny_driving_scene: Path) -> None:
    ds = SemanticClips([tiny_driving_scene], size=(24, 72), label_fraction=0.25)
    assert len(ds) == 3  # 25% of 12 frames
    item = ds[1]
    assert item["video"].shape == (3, 1, 24, 72) and item["mask"].shape == (24, 72)
    assert int(item["mask"].max()) < ds.num_classes


def test_semantic_clips_errors(tiny_driving_scene: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="context"):
        SemanticClips([tiny_driving_scene], clip_len=7, frame_stride=2)  # needs 12 frames before the label
    other = tmp_path / "other"
    shutil.copytree(tiny_driving_scene, other)
    (other / "classes.json").write_text('["a", "b", "c", "d", "e", "f", "g"]')
    with pytest.raises(ValueError, match="share the class list"):
        SemanticClips([tiny_driving_scene, other])
