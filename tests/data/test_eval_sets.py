"""Tests for stssl.data.eval_sets: each adapter on a tiny tree built in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stssl.data.eval_sets import (
    CITYSCAPES_CLASSES,
    EvalSetError,
    cityscapes_clip_paths,
    cityscapes_items,
    davis_sequences,
    labelids_to_trainids,
    read_cityscapes_item,
    read_coco_detection,
    read_davis_sequence,
    read_label_png,
    read_scene_eval,
)
from stssl.worlds.render import coco_boxes
from stssl.worlds.scene_io import SceneFormatError

# ------------------------------------------------------------------------------------------ scene format


def write_scene_gt(folder: Path, T: int = 3, H: int = 8, W: int = 10) -> torch.Tensor:
    """semantic.npz, classes.json and boxes.json (from an instance map, as the worlds write them)."""
    folder.mkdir(parents=True)
    instances = torch.zeros(T, H, W, dtype=torch.long)
    for t in range(T):
        instances[t, 2:5, 1 + t : 4 + t] = 1  # a car moving right
        instances[t, 5:8, 6:9] = 2  # a parked car
    semantic = (instances > 0).to(torch.uint8) * 2  # 0 road, 2 car
    np.savez_compressed(folder / "semantic.npz", semantic=semantic.numpy())
    (folder / "classes.json").write_text(json.dumps(["road", "sky", "car"]))
    (folder / "boxes.json").write_text(json.dumps(coco_boxes(instances, {1: 1, 2: 1}, ["car"])))
    return instances


def test_scene_eval_set(tmp_path: Path) -> None:
    instances = write_scene_gt(tmp_path / "scene")
    scene = read_scene_eval(tmp_path / "scene")
    assert scene.num_frames == 3 and scene.classes == ["road", "sky", "car"]
    assert scene.semantic.dtype == torch.uint8 and torch.equal(scene.semantic, (instances > 0).to(torch.uint8) * 2)
    assert scene.video_path == tmp_path / "scene" / "video.mp4"
    assert scene.detections.categories == ["car"]
    for t, target in enumerate(scene.detections.items):
        assert target.image_id == t and target.path is None
        order = target.instance_ids.argsort()
        assert target.instance_ids[order].tolist() == [1, 2]
        assert target.boxes[order].tolist() == [[1.0 + t, 2.0, 4.0 + t, 5.0], [6.0, 5.0, 9.0, 8.0]]
        assert target.labels.tolist() == [0, 0]


def test_scene_eval_set_errors_name_the_file(tmp_path: Path) -> None:
    write_scene_gt(tmp_path / "scene")
    (tmp_path / "scene" / "boxes.json").unlink()
    with pytest.raises(SceneFormatError, match="boxes.json: missing"):
        read_scene_eval(tmp_path / "scene")
    with pytest.raises(SceneFormatError, match="semantic.npz"):
        read_scene_eval(tmp_path / "nothing")


# -------------------------------------------------------------------------------------------- Cityscapes
def test_cityscapes_pairs_and_train_ids(tmp_path: Path, eval_trees) -> None:
    label = eval_trees.make_cityscapes(tmp_path)
    items = cityscapes_items(tmp_path, "val")
    assert [item.stem for item in items] == ["aachen_000000_000019", "bochum_000003_000019"]
    image, train = read_cityscapes_item(items[1])
    assert image.shape == (4, 8, 3) and image.dtype == torch.uint8
    assert torch.equal(image, torch.from_numpy(np.array(Image.open(items[1].image))))
    expected = np.array([[0, 1, 13, 255], [18, 11, 255, 10]]).repeat(2, 0).repeat(2, 1)
    assert train.tolist() == expected.tolist()
    _, raw = read_cityscapes_item(items[0], map_to_train_ids=False)
    assert raw.tolist() == label.tolist()
    assert [CITYSCAPES_CLASSES[i] for i in (0, 13, 18)] == ["road", "car", "bicycle"]


def test_train_id_table_is_the_standard_one() -> None:
    table = labelids_to_trainids(torch.arange(256)).tolist()
    assert sum(v != 255 for v in table) == 19 and sorted(v for v in table if v != 255) == list(range(19))
    named = {7: "road", 11: "building", 17: "pole", 21: "vegetation", 25: "rider", 31: "train"}
    for label_id, name in named.items():
        assert CITYSCAPES_CLASSES[table[label_id]] == name
    for unevaluated in (0, 1, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 255):
        assert table[unevaluated] == 255


def test_cityscapes_clip_paths_and_errors(tmp_path: Path, eval_trees) -> None:
    eval_trees.make_cityscapes(tmp_path)
    item = cityscapes_items(tmp_path)[0]
    paths = cityscapes_clip_paths(tmp_path, item, [-2, -1, 0, 1])
    assert [p.name for p in paths] == [f"aachen_000000_{f:06d}_leftImg8bit.png" for f in (17, 18, 19, 20)]
    with pytest.raises(EvalSetError, match="aachen_000000_000021_leftImg8bit.png: missing sequence frame"):
        cityscapes_clip_paths(tmp_path, item, [2])
    (tmp_path / "gtFine" / "val" / "bochum" / "bochum_000003_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(EvalSetError, match="bochum_000003_000019_gtFine_labelIds.png: missing label"):
        cityscapes_items(tmp_path)
    with pytest.raises(EvalSetError, match="leftImg8bit/train: missing"):
        cityscapes_items(tmp_path, "train")


# -------------------------------------------------------------------------------------------------- COCO
def make_coco(root: Path, trees) -> Path:
    (root / "val").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        trees.save_png(root / "val" / name, np.zeros((6, 9, 3), dtype=np.uint8))
    coco = {
        "images": [{"id": 10, "file_name": "a.jpg", "height": 6, "width": 9},
                   {"id": 4, "file_name": "b.jpg", "height": 6, "width": 9}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 90, "bbox": [1, 1, 2, 3], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 1, "bbox": [0.5, 2, 4, 1], "iscrowd": 1},
            {"id": 3, "image_id": 10, "category_id": 3, "bbox": [2, 2, 0, 3]},  # degenerate: dropped
        ],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
    }
    path = root / "annotations" / "instances_val.json"
    path.parent.mkdir()
    path.write_text(json.dumps(coco))
    return path


def test_coco_detection_folder(tmp_path: Path, eval_trees) -> None:
    ann = make_coco(tmp_path, eval_trees)
    data = read_coco_detection(ann, tmp_path / "val")
    assert data.categories == ["person", "car", "toothbrush"] and data.category_ids == [1, 3, 90]
    assert len(data) == 2 and [t.image_id for t in data.items] == [10, 4]
    a, b = data[0], data[1]
    assert a.path == tmp_path / "val" / "a.jpg" and (a.height, a.width) == (6, 9)
    assert a.boxes.tolist() == [[1.0, 1.0, 3.0, 4.0], [0.5, 2.0, 4.5, 3.0]]
    assert a.labels.tolist() == [2, 0] and a.iscrowd.tolist() == [False, True]
    assert b.boxes.shape == (0, 4) and b.labels.shape == (0,)
    target = a.as_torchmetrics_target()
    assert set(target) == {"boxes", "labels", "iscrowd"}
    kept = read_coco_detection(ann, drop_degenerate=False)[0]
    assert kept.labels.tolist() == [2, 0, 1] and kept.path is None


def test_coco_errors_name_the_file_and_key(tmp_path: Path, eval_trees) -> None:
    ann = make_coco(tmp_path, eval_trees)
    (tmp_path / "val" / "b.jpg").unlink()
    with pytest.raises(EvalSetError, match="b.jpg: missing image"):
        read_coco_detection(ann, tmp_path / "val")
    coco = json.loads(ann.read_text())
    del coco["annotations"][0]["bbox"]
    ann.write_text(json.dumps(coco))
    with pytest.raises(EvalSetError, match=r"instances_val.json: annotations\[0\]: missing key\(s\) 'bbox'"):
        read_coco_detection(ann)
    ann.write_text(json.dumps({"images": []}))
    with pytest.raises(EvalSetError, match="missing key.*'annotations', 'categories'"):
        read_coco_detection(ann)
    with pytest.raises(EvalSetError, match="nope.json: missing COCO annotation file"):
        read_coco_detection(tmp_path / "nope.json")


# ------------------------------------------------------------------------------------------------- DAVIS
def test_davis_sequence_reads_palette_ids(tmp_path: Path, eval_trees) -> None:
    masks = eval_trees.make_davis(tmp_path)
    assert davis_sequences(tmp_path, "val") == ["dog", "bear"]
    assert davis_sequences(tmp_path, None) == ["bear", "dog"]
    seq = read_davis_sequence(tmp_path, "dog")
    assert seq.frame_names == ["00000", "00001", "00002", "00003"]
    assert seq.frames is not None and seq.frames.shape == (4, 12, 16, 3) and seq.frames.dtype == torch.uint8
    assert seq.masks is not None and seq.masks.tolist() == masks.tolist()  # indices, not palette colours
    assert torch.equal(seq.first_mask, seq.masks[0]) and seq.num_objects == 2
    from stssl.eval.propagation import j_and_f

    pred = torch.where(seq.masks == 255, 0, seq.masks)  # DAVIS rejects a prediction with the void id 255
    assert j_and_f(pred, seq.masks)["JF"] == 1.0


def test_davis_partial_annotations_and_errors(tmp_path: Path, eval_trees) -> None:
    eval_trees.make_davis(tmp_path)
    ann = tmp_path / "Annotations" / "480p" / "bear"
    (ann / "00002.png").unlink()
    seq = read_davis_sequence(tmp_path, "bear", load_frames=False)
    assert seq.masks is None and seq.frames is None and seq.first_mask.shape == (12, 16)
    (ann / "00000.png").unlink()
    with pytest.raises(EvalSetError, match="bear/00000.png: missing first-frame annotation"):
        read_davis_sequence(tmp_path, "bear")
    with pytest.raises(EvalSetError, match="JPEGImages/480p/cat: missing"):
        read_davis_sequence(tmp_path, "cat")
    with pytest.raises(EvalSetError, match="ImageSets/2017/test-dev.txt: missing"):
        davis_sequences(tmp_path, "test-dev")
    rgb = tmp_path / "rgb.png"
    eval_trees.save_png(rgb, np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(EvalSetError, match="mode RGB; expected a palette"):
        read_label_png(rgb)
