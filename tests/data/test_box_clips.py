"""BoxClips: boxes rescaled to the served size (hand-checked), negatives kept, clip context, label fractions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stssl.data.box_clips import BoxClips, collate_boxes, scale_boxes
from stssl.data.labelled import select_labelled
from stssl.worlds.scene_io import write_video

# frame t is a flat grey of value 40 * t + 20 (survives H.264), 16 x 32 pixels
_T, _H, _W = 5, 16, 32


def _scene(root: Path, *, annotate: tuple[int, ...] = (0, 1, 2, 3, 4), categories: list | None = None,
           image_size: tuple[int, int] = (_H, _W)) -> Path:
    """A scene folder with a video and boxes.json: frame 1 has two boxes, frame 3 one tiny box, the rest none."""
    root.mkdir(parents=True)
    frames = np.stack([np.full((_H, _W, 3), 40 * t + 20, dtype=np.uint8) for t in range(_T)])
    write_video(root / "video.mp4", frames, fps=10)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [4, 2, 8, 6], "iscrowd": 0},  # xyxy 4 2 12 8
        {"id": 2, "image_id": 1, "category_id": 9, "bbox": [20, 10, 12, 6], "iscrowd": 0},  # xyxy 20 10 32 16
        {"id": 3, "image_id": 3, "category_id": 7, "bbox": [0, 0, 1, 1], "iscrowd": 0},
    ]
    coco = {
        "images": [{"id": t, "file_name": f"{t:06d}", "height": image_size[0], "width": image_size[1]}
                   for t in annotate],
        "annotations": [a for a in anns if a["image_id"] in annotate],
        "categories": categories or [{"id": 9, "name": "truck"}, {"id": 7, "name": "car"}],
    }
    (root / "boxes.json").write_text(json.dumps(coco))
    return root


def test_boxes_are_rescaled_to_the_served_size(tmp_path: Path) -> None:
    data = BoxClips([_scene(tmp_path / "a")], size=(8, 64))
    assert data.categories == ["car", "truck"] and data.size == (8, 64) and len(data) == _T
    item = data[1]
    assert item["frame"] == 1 and item["scene"] == 0
    assert item["video"].shape == (3, 1, 8, 64) and item["video"].dtype == torch.uint8
    # hand-checked: x * 64 / 32, y * 8 / 16
    assert item["boxes"].dtype == torch.float32
    assert item["boxes"].tolist() == [[8.0, 1.0, 24.0, 4.0], [40.0, 5.0, 64.0, 8.0]]
    assert item["labels"].tolist() == [1, 2]  # car (COCO id 7) -> 1, truck (id 9) -> 2: 1-based, background 0
    assert item["iscrowd"].tolist() == [False, False]


def test_frames_without_boxes_are_negatives_and_unannotated_frames_are_skipped(tmp_path: Path) -> None:
    data = BoxClips([_scene(tmp_path / "a", annotate=(0, 1, 3))])
    assert [data[i]["frame"] for i in range(len(data))] == [0, 1, 3]
    empty = data[0]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["labels"].dtype == torch.int64
    assert data.box_counts() == {"boxes": 3, "ignored": 0, "empty_frames": 1}


def test_small_boxes_are_marked_ignored(tmp_path: Path) -> None:
    data = BoxClips([_scene(tmp_path / "a")], min_box_size=2.0)
    assert data[3]["iscrowd"].tolist() == [True]  # 1 x 1 px
    assert data[1]["iscrowd"].tolist() == [False, False]
    assert data.box_counts()["ignored"] == 1 and data.box_counts()["empty_frames"] == 4


def test_clips_end_at_the_labelled_frame(tmp_path: Path) -> None:
    data = BoxClips([_scene(tmp_path / "a")], clip_len=2, frame_stride=2)
    assert [data[i]["frame"] for i in range(len(data))] == [2, 3, 4]  # frames 0, 1 lack two frames of context
    video = data[1]["video"].float()  # frame 3 with frame 1 before it
    assert video.shape == (3, 2, _H, _W)
    assert abs(video[:, 0].mean().item() - 60) < 4 and abs(video[:, 1].mean().item() - 140) < 4


def test_label_fraction_selects_the_same_frames_every_time(tmp_path: Path) -> None:
    scenes = [_scene(tmp_path / "a"), _scene(tmp_path / "b")]
    data = BoxClips(scenes, label_fraction=0.3, seed=3)
    assert data.items == [(s, t) for s, t in select_labelled([_T, _T], 0.3, seed=3)]
    assert data.items == BoxClips(scenes, label_fraction=0.3, seed=3).items
    assert len(data) == 3


def test_collate_keeps_per_clip_boxes(tmp_path: Path) -> None:
    data = BoxClips([_scene(tmp_path / "a")])
    batch = collate_boxes([data[i] for i in range(3)])
    assert batch["video"].shape == (3, 3, 1, _H, _W)
    assert [len(b) for b in batch["boxes"]] == [0, 2, 0] and batch["frame"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="no items"):
        collate_boxes([])


def test_scale_boxes_clips_to_the_image() -> None:
    out = scale_boxes(torch.tensor([[-2.0, 1.0, 40.0, 9.0]]), (10, 20), (20, 40))
    assert out.tolist() == [[0.0, 2.0, 40.0, 18.0]]
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        scale_boxes(torch.zeros(4), (1, 1), (1, 1))


def test_errors_name_the_problem(tmp_path: Path) -> None:
    a = _scene(tmp_path / "a")
    other = _scene(tmp_path / "b", categories=[{"id": 7, "name": "car"}, {"id": 9, "name": "bus"}])
    with pytest.raises(ValueError, match="categories"):
        BoxClips([a, other])
    with pytest.raises(ValueError, match="video's pixels"):
        BoxClips([_scene(tmp_path / "c", image_size=(32, 64))])
    with pytest.raises(ValueError, match="context"):
        BoxClips([a], clip_len=6)
    with pytest.raises(ValueError, match="clip_len"):
        BoxClips([a], clip_len=0)


def test_world_scene_boxes_lie_inside_the_served_frames(tiny_driving_scene: Path) -> None:
    raw = json.loads((tiny_driving_scene / "boxes.json").read_text())
    data = BoxClips([tiny_driving_scene], size=(24, 96), clip_len=2)
    assert data.categories == [c["name"] for c in raw["categories"]] and len(data) == 11
    total = 0
    for i in range(len(data)):
        item = data[i]
        boxes = item["boxes"]
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 96).all() and (boxes[:, [1, 3]] <= 24).all()
        assert (item["labels"] == 1).all()
        total += len(boxes)
    assert total == sum(1 for a in raw["annotations"] if a["image_id"] >= 1 and min(a["bbox"][2:]) > 0)
