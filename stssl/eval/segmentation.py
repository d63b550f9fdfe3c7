"""Semantic segmentation metrics: confusion matrix, per-class IoU, mIoU, and a streaming meter.

Conventions (the Cityscapes / PASCAL VOC benchmark ones):

- Pixels whose ground truth equals ``ignore_index`` (255 by default) are dropped before anything is counted,
  whatever the prediction there.
- One confusion matrix is accumulated over the **whole evaluation set** (rows = ground truth, columns =
  prediction), and IoU is computed per class from it: ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``. mIoU is not a
  mean of per-image mIoUs.
- A class absent from both the prediction and the ground truth (``TP + FP + FN = 0``) has no IoU (NaN in
  :func:`per_class_iou`) and is **excluded from the mean**. A class present only in the prediction has IoU 0
  and counts. If ``ignore_index`` is itself a valid class index, that class is excluded from the mean too.

Relation to torchmetrics 1.9: :func:`miou` equals ``torchmetrics.classification.MulticlassJaccardIndex(
num_classes, average="macro", ignore_index=ignore_index)`` (same dataset-level confusion matrix, same exclusion
of classes with zero union and of an in-range ``ignore_index``); the tests check this. It is **not**
``torchmetrics.segmentation.MeanIoU``, which computes IoU per image (per sample) and averages those, and has no
``ignore_index``.

Example:
    >>> gt = torch.tensor([[0, 0, 1, 255]])
    >>> pred = torch.tensor([[0, 1, 1, 2]])
    >>> confusion_matrix(pred, gt, num_classes=3)
    tensor([[1, 1, 0],
            [0, 1, 0],
            [0, 0, 0]])
    >>> per_class_iou(pred, gt, num_classes=3)  # class 2 never occurs outside the ignored pixel
    tensor([0.5000, 0.5000,    nan], dtype=torch.float64)
    >>> miou(pred, gt, num_classes=3)
    0.5
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "SegmentationMeter",
    "confusion_matrix",
    "iou_from_confusion",
    "miou",
    "per_class_iou",
]


def _labels(pred: torch.Tensor, gt: torch.Tensor, name: str) -> torch.Tensor:
    """Class indices from ``pred``: itself if it has ``gt``'s shape, its argmax over dim 1 if it is scores."""
    if not isinstance(pred, torch.Tensor) or not isinstance(gt, torch.Tensor):
        raise TypeError(f"{name}: pred and gt must be torch tensors, got {type(pred).__name__} and "
                        f"{type(gt).__name__}")
    if pred.shape == gt.shape:
        if pred.is_floating_point():
            raise ValueError(f"{name}: pred has gt's shape {tuple(gt.shape)} but is floating point; pass class "
                             "indices (integer) or scores of shape (B, K, ...)")
        return pred
    if pred.dim() == gt.dim() + 1 and pred.shape[0] == gt.shape[0] and pred.shape[2:] == gt.shape[1:]:
        return pred.argmax(dim=1)
    raise ValueError(f"{name}: pred {tuple(pred.shape)} must have gt's shape {tuple(gt.shape)} (class indices) "
                     "or (B, K, ...) scores with gt (B, ...)")


def confusion_matrix(
    pred: torch.Tensor, gt: torch.Tensor, num_classes: int, ignore_index: int | None = 255, *, validate: bool = True
) -> torch.Tensor:
    """Confusion matrix by ``bincount``, on the inputs' device.

    Args:
        pred: integer class indices with ``gt``'s shape, or scores ``(B, K, ...)`` (argmax over ``K``).
        gt: integer ground-truth class indices, any shape; ``ignore_index`` marks pixels to drop.
        num_classes: ``K``.
        ignore_index: ground-truth value whose pixels are dropped; ``None`` keeps all pixels.
        validate: check that every kept ground truth and prediction lies in ``[0, K)`` (one device sync).

    Returns:
        int64 ``(K, K)``; entry ``[g, p]`` counts pixels of ground truth ``g`` predicted as ``p``.

    Raises:
        ValueError: shapes that do not match, or (with ``validate``) an index outside ``[0, K)``.
    """
    if num_classes < 1:
        raise ValueError(f"confusion_matrix: num_classes must be >= 1, got {num_classes}")
    labels = _labels(pred, gt, "confusion_matrix")
    g, p = gt.reshape(-1).long(), labels.reshape(-1).long().to(gt.device)
    if ignore_index is not None:
        keep = g != ignore_index
        g, p = g[keep], p[keep]
    if validate and g.numel():
        bad_g = (g < 0) | (g >= num_classes)
        bad_p = (p < 0) | (p >= num_classes)
        if bool(bad_g.any()):
            raise ValueError(f"confusion_matrix: gt has value {int(g[bad_g][0])} outside [0, {num_classes}) "
                             f"that is not ignore_index={ignore_index}")
        if bool(bad_p.any()):
            raise ValueError(f"confusion_matrix: pred has value {int(p[bad_p][0])} outside [0, {num_classes}) "
                             "at a pixel whose gt is not ignored")
    counts = torch.bincount(g * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(confmat: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Per-class IoU ``TP / (TP + FP + FN)`` from a ``(K, K)`` confusion matrix (rows = ground truth).

    Returns:
        float64 ``(K,)``; NaN for classes with zero union and for ``ignore_index`` when it is in ``[0, K)``.
    """
    if confmat.dim() != 2 or confmat.shape[0] != confmat.shape[1]:
        raise ValueError(f"iou_from_confusion: confmat must be square (K, K), got {tuple(confmat.shape)}")
    cm = confmat.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = tp / union  # 0 / 0 = NaN for absent classes
    if ignore_index is not None and 0 <= ignore_index < cm.shape[0]:
        iou[ignore_index] = float("nan")
    return iou


def per_class_iou(
    pred: torch.Tensor, gt: torch.Tensor, num_classes: int, ignore_index: int | None = 255
) -> torch.Tensor:
    """IoU of every class over all pixels of ``pred``/``gt`` (see the module docstring for the conventions).

    Args:
        pred: class indices with ``gt``'s shape, or scores ``(B, K, ...)``.
        gt: ground-truth class indices; ``ignore_index`` pixels are dropped.
        num_classes: ``K``.
        ignore_index: ground-truth value to drop (``None``: keep all).

    Returns:
        float64 ``(K,)`` on the inputs' device, NaN where a class is absent from both pred and gt.
    """
    return iou_from_confusion(confusion_matrix(pred, gt, num_classes, ignore_index), ignore_index)


def miou(pred: torch.Tensor, gt: torch.Tensor, num_classes: int, ignore_index: int | None = 255) -> float:
    """Mean IoU over the classes present in ``pred`` or ``gt`` (absent classes are excluded from the mean).

    Equals torchmetrics' ``MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index)``.
    For a dataset, accumulate with :class:`SegmentationMeter` rather than averaging per-batch values.

    Args:
        pred: class indices with ``gt``'s shape, or scores ``(B, K, ...)``.
        gt: ground-truth class indices; ``ignore_index`` pixels are dropped.
        num_classes: ``K``.
        ignore_index: ground-truth value to drop (``None``: keep all).

    Returns:
        mIoU in ``[0, 1]``; NaN when no pixel is left (everything ignored).

    Example:
        >>> gt = torch.tensor([[0, 1], [1, 1]])
        >>> miou(gt, gt, num_classes=5)  # classes 2..4 are absent, so they do not pull the mean down
        1.0
    """
    iou = per_class_iou(pred, gt, num_classes, ignore_index)
    return float(iou.nanmean()) if bool((~iou.isnan()).any()) else float("nan")


class SegmentationMeter:
    """Streaming semantic segmentation metrics: one confusion matrix accumulated over batches.

    Args:
        num_classes: ``K``.
        ignore_index: ground-truth value to drop (``None``: keep all).
        class_names: optional ``K`` names; :meth:`compute` then also reports ``iou/<name>``.

    The confusion matrix lives on the device of the first batch (``self.confmat``, int64 ``(K, K)``); for
    distributed evaluation, all-reduce (sum) it before :meth:`compute`.

    Example:
        >>> meter = SegmentationMeter(num_classes=2, class_names=["road", "car"])
        >>> meter.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
        >>> meter.update(torch.tensor([[0, 0]]), torch.tensor([[0, 1]]))
        >>> {k: round(v, 4) for k, v in meter.compute().items()}
        {'miou': 0.5833, 'pixel_accuracy': 0.75, 'mean_accuracy': 0.75, 'iou/road': 0.6667, 'iou/car': 0.5}
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, class_names: Sequence[str] | None = None):
        if num_classes < 1:
            raise ValueError(f"SegmentationMeter: num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"SegmentationMeter: {len(class_names)} class_names for num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else None
        self.confmat: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.confmat = None

    @torch.no_grad()
    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """Add a batch: ``pred`` class indices with ``gt``'s shape, or scores ``(B, K, ...)``."""
        cm = confusion_matrix(pred, gt, self.num_classes, self.ignore_index)
        self.confmat = cm if self.confmat is None else self.confmat + cm.to(self.confmat.device)

    def per_class_iou(self) -> torch.Tensor:
        """float64 ``(K,)`` IoU per class so far (NaN for classes not seen in pred or gt)."""
        if self.confmat is None:
            raise RuntimeError("SegmentationMeter: no batch seen; call update() first")
        return iou_from_confusion(self.confmat, self.ignore_index)

    def compute(self) -> dict[str, float]:
        """``miou``, ``pixel_accuracy`` (over kept pixels), ``mean_accuracy`` (recall averaged over classes
        present in the ground truth) and, with ``class_names``, ``iou/<name>`` (NaN for unseen classes)."""
        iou = self.per_class_iou()
        assert self.confmat is not None
        cm = self.confmat.double()
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            cm = cm.clone()
            cm[self.ignore_index, :] = 0
        total = cm.sum()
        support = cm.sum(1)
        recall = cm.diagonal()[support > 0] / support[support > 0]
        out = {
            "miou": float(iou.nanmean()) if bool((~iou.isnan()).any()) else float("nan"),
            "pixel_accuracy": float(cm.diagonal().sum() / total) if total > 0 else float("nan"),
            "mean_accuracy": float(recall.mean()) if recall.numel() else float("nan"),
        }
        if self.class_names is not None:
            out.update({f"iou/{name}": float(v) for name, v in zip(self.class_names, iou.tolist(), strict=True)})
        return out
