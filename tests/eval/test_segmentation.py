"""Tests for stssl.eval.segmentation: confusion matrix, IoU, mIoU and the streaming meter vs naive loops."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from stssl.eval.segmentation import (
    SegmentationMeter,
    confusion_matrix,
    iou_from_confusion,
    miou,
    per_class_iou,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def naive_confusion(pred: torch.Tensor, gt: torch.Tensor, k: int, ignore: int | None) -> list[list[int]]:
    cm = [[0] * k for _ in range(k)]
    for p, g in zip(pred.flatten().tolist(), gt.flatten().tolist(), strict=True):
        if ignore is not None and g == ignore:
            continue
        cm[g][p] += 1
    return cm


def naive_miou(pred: torch.Tensor, gt: torch.Tensor, k: int, ignore: int | None) -> tuple[list[float], float]:
    """Per-class IoU (NaN if absent from both) and the mean over present classes, by pixel loops."""
    cm = naive_confusion(pred, gt, k, ignore)
    ious = []
    for c in range(k):
        tp = cm[c][c]
        fn = sum(cm[c]) - tp
        fp = sum(cm[r][c] for r in range(k)) - tp
        union = tp + fp + fn
        ious.append(tp / union if union and c != ignore else math.nan)
    present = [v for v in ious if not math.isnan(v)]
    return ious, sum(present) / len(present)


def random_labels(seed: int, k: int, shape=(2, 12, 12), absent: tuple[int, ...] = ()) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    gt = torch.randint(0, k, shape, generator=g)
    # predictions agree with gt 60% of the time
    pred = torch.where(torch.rand(shape, generator=g) < 0.6, gt, torch.randint(0, k, shape, generator=g))
    for c in absent:
        gt[gt == c] = 0
        pred[pred == c] = 0
    gt[torch.rand(shape, generator=g) < 0.1] = 255
    return pred, gt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_and_iou_match_naive_loops(seed: int) -> None:
    k = 6
    pred, gt = random_labels(seed, k, absent=(2, 4))
    cm = confusion_matrix(pred, gt, k)
    assert cm.tolist() == naive_confusion(pred, gt, k, 255)
    ious, mean = naive_miou(pred, gt, k, 255)
    torch.testing.assert_close(per_class_iou(pred, gt, k), torch.tensor(ious, dtype=torch.float64), equal_nan=True)
    assert per_class_iou(pred, gt, k)[[2, 4]].isnan().all()
    assert miou(pred, gt, k) == pytest.approx(mean, abs=1e-12)


def test_absent_classes_do_not_lower_the_mean_but_false_positives_do() -> None:
    gt = torch.tensor([[0, 0, 1, 1]])
    assert miou(gt, gt, num_classes=10) == 1.0
    pred = torch.tensor([[0, 0, 1, 7]])  # class 7 only predicted: IoU 0 and it counts
    ious, mean = naive_miou(pred, gt, 10, 255)
    assert miou(pred, gt, num_classes=10) == pytest.approx(mean)
    assert per_class_iou(pred, gt, num_classes=10)[7] == 0.0
    assert mean == pytest.approx((1 + 0.5 + 0) / 3)


@pytest.mark.parametrize("ignore_index", [255, 0])
def test_miou_matches_torchmetrics_multiclass_jaccard_macro(ignore_index: int) -> None:
    k = 5
    pred, gt = random_labels(3, k, shape=(3, 16, 16), absent=(3,))
    if ignore_index == 0:
        gt[gt == 255] = 1
    metric = MulticlassJaccardIndex(num_classes=k, average="macro", ignore_index=ignore_index)
    expected = float(metric(pred, gt))
    assert miou(pred, gt, k, ignore_index=ignore_index) == pytest.approx(expected, abs=1e-6)
    _, naive = naive_miou(pred, gt, k, ignore_index)
    assert naive == pytest.approx(expected, abs=1e-6)


def test_scores_input_is_argmaxed_over_dim_1() -> None:
    pred, gt = random_labels(4, 4, shape=(2, 8, 8))
    scores = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float() + 0.01 * torch.rand(2, 4, 8, 8)
    assert torch.equal(confusion_matrix(scores, gt, 4), confusion_matrix(pred, gt, 4))


def test_meter_streams_to_the_dataset_level_result() -> None:
    k = 5
    batches = [random_labels(seed, k, shape=(2, 8, 8), absent=(seed % k,)) for seed in range(4)]
    meter = SegmentationMeter(k, class_names=[f"c{i}" for i in range(k)])
    for pred, gt in batches:
        meter.update(pred, gt)
    all_pred = torch.cat([p for p, _ in batches])
    all_gt = torch.cat([g for _, g in batches])
    out = meter.compute()
    assert out["miou"] == pytest.approx(miou(all_pred, all_gt, k))
    # dataset-level mIoU is not the mean of per-batch mIoUs
    assert out["miou"] != pytest.approx(sum(miou(p, g, k) for p, g in batches) / len(batches), abs=1e-6)
    keep = all_gt != 255
    assert out["pixel_accuracy"] == pytest.approx(float((all_pred[keep] == all_gt[keep]).double().mean()))
    recalls = [float((all_pred[all_gt == c] == c).double().mean()) for c in range(k) if (all_gt == c).any()]
    assert out["mean_accuracy"] == pytest.approx(sum(recalls) / len(recalls))
    ious, _ = naive_miou(all_pred, all_gt, k, 255)
    for c in range(k):
        assert out[f"iou/c{c}"] == pytest.approx(ious[c], nan_ok=True)
    meter.reset()
    with pytest.raises(RuntimeError, match="no batch"):
        meter.compute()


def test_no_ignore_index_counts_every_pixel() -> None:
    pred = torch.tensor([0, 1, 1])
    gt = torch.tensor([0, 1, 0])
    assert confusion_matrix(pred, gt, 2, ignore_index=None).tolist() == [[1, 1], [0, 1]]
    assert iou_from_confusion(torch.tensor([[1, 1], [0, 1]])).tolist() == [0.5, 0.5]


def test_all_ignored_gives_nan() -> None:
    gt = torch.full((4, 4), 255)
    assert math.isnan(miou(torch.zeros(4, 4, dtype=torch.long), gt, 3))


def test_errors_name_the_problem() -> None:
    gt = torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="pred has value 3 outside"):
        confusion_matrix(torch.tensor([[0, 3]]), gt, 3)
    with pytest.raises(ValueError, match="gt has value 7 outside"):
        confusion_matrix(gt, torch.tensor([[0, 7]]), 3)
    with pytest.raises(ValueError, match="must have gt's shape"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), gt, 3)
    with pytest.raises(ValueError, match="floating point"):
        miou(gt.float(), gt, 3)
    with pytest.raises(ValueError, match="class_names"):
        SegmentationMeter(3, class_names=["a"])
