"""Video object segmentation by label propagation, scored with the DAVIS-2017 J&F protocol.

- :func:`propagate_labels`: the first frame's one-hot masks are carried through a video by feature affinity
  (top-k nearest context features, softmax with a temperature, a spatial radius on recent frames), as in the
  label-propagation evaluation of Jabri et al. 2020 ("Space-Time Correspondence as a Contrastive Random Walk",
  the videowalk code) and the self-supervised correspondence papers that follow it.
- :func:`mask_to_onehot` / :func:`soft_labels_to_masks`: the first frame's object-id mask to one-hot labels at
  feature resolution, and propagated soft labels back to object-id masks at the annotation resolution.
- :func:`davis_scores` / :func:`j_and_f` / :class:`DavisMeter`: region similarity J and boundary F-measure,
  exactly as the official ``davis2017-evaluation`` computes them for the semi-supervised task.

Example:
    >>> gt = torch.zeros(4, 32, 32, dtype=torch.long)
    >>> gt[:, 8:20, 8:20] = 1
    >>> j_and_f(gt, gt)
    {'J': 1.0, 'F': 1.0, 'JF': 1.0}
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from stssl.checks import check_shape

__all__ = [
    "DavisMeter",
    "boundary_f_measure",
    "boundary_map",
    "davis_scores",
    "dilate_disk",
    "j_and_f",
    "mask_to_onehot",
    "propagate_labels",
    "region_similarity",
    "soft_labels_to_masks",
]

#: DAVIS's void label in annotation PNGs; the semi-supervised evaluation treats it as background.
DAVIS_VOID = 255


def _as_long_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer object ids, got dtype {t.dtype}")
    return t.long()


# ----------------------------------------------------------------------------------------------- J and F
def region_similarity(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Jaccard index per map: ``|pred & gt| / |pred | gt|``, and 1 where both are empty (DAVIS's ``db_eval_iou``).

    Args:
        pred: bool ``(..., H, W)``.
        gt: bool ``(..., H, W)``, same shape.

    Returns:
        float64 ``(...)``.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"region_similarity: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ")
    inter = (pred & gt).sum(dim=(-2, -1)).double()
    union = (pred | gt).sum(dim=(-2, -1)).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def boundary_map(seg: torch.Tensor) -> torch.Tensor:
    """One-pixel boundaries of binary maps by DAVIS's ``seg2bmap`` rule.

    A pixel is on the boundary when it differs from its east, south or south-east neighbour (neighbours outside
    the image count as background); in the last row only the east neighbour is compared, in the last column
    only the south one, and the bottom-right pixel is never a boundary.

    Args:
        seg: bool ``(..., H, W)``.

    Returns:
        bool ``(..., H, W)``.

    Example:
        >>> seg = torch.zeros(4, 4, dtype=torch.bool)
        >>> seg[1:3, 1:3] = True
        >>> boundary_map(seg).int()
        tensor([[1, 1, 1, 0],
                [1, 0, 1, 0],
                [1, 1, 1, 0],
                [0, 0, 0, 0]], dtype=torch.int32)
    """
    seg = seg.bool()
    east = torch.zeros_like(seg)
    south = torch.zeros_like(seg)
    south_east = torch.zeros_like(seg)
    east[..., :, :-1] = seg[..., :, 1:]
    south[..., :-1, :] = seg[..., 1:, :]
    south_east[..., :-1, :-1] = seg[..., 1:, 1:]
    b = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    b[..., -1, :] = seg[..., -1, :] ^ east[..., -1, :]
    b[..., :, -1] = seg[..., :, -1] ^ south[..., :, -1]
    b[..., -1, -1] = False
    return b


def dilate_disk(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation by the disk ``{(dx, dy): dx^2 + dy^2 <= radius^2}`` (skimage's ``disk``), no wrap-around.

    Pixels outside the image never switch anything on (OpenCV's ``dilate`` default). Runs in ``O(radius * H * W)``
    per map: a row prefix sum gives the dilation by each horizontal run, and the disk is the union of those
    runs shifted vertically.

    Args:
        x: bool ``(..., H, W)``.
        radius: disk radius in pixels, ``>= 0``.

    Returns:
        bool ``(..., H, W)``.
    """
    if radius < 0:
        raise ValueError(f"dilate_disk: radius must be >= 0, got {radius}")
    x = x.bool()
    if radius == 0:
        return x.clone()
    H, W = x.shape[-2:]
    # prefix[..., j] = sum(x[..., :j]), extended by `radius` clamped copies on each side, so that a window
    # [x - half, x + half] clipped to the image sums to prefix[x + half + 1] - prefix[x - half] with plain slices.
    prefix = F.pad(x.to(torch.int32).cumsum(dim=-1), (1, 0))  # (..., H, W + 1)
    prefix = torch.cat([prefix[..., :1].expand(*prefix.shape[:-1], radius), prefix,
                        prefix[..., -1:].expand(*prefix.shape[:-1], radius)], dim=-1)  # (..., H, W + 1 + 2 radius)
    out = torch.zeros_like(x)
    rows_by_width: dict[int, torch.Tensor] = {}
    for dy in range(-radius, radius + 1):
        half = math.isqrt(radius * radius - dy * dy)
        if half not in rows_by_width:
            # window sum at column c: prefix_ext[c + radius + half + 1] - prefix_ext[c + radius - half]
            hi = prefix[..., radius + half + 1 : radius + half + 1 + W]
            lo = prefix[..., radius - half : radius - half + W]
            rows_by_width[half] = hi > lo
        rows = rows_by_width[half]
        if abs(dy) >= H:
            continue
        if dy >= 0:  # out[y] |= rows[y + dy]
            out[..., : H - dy, :] |= rows[..., dy:, :]
        else:
            out[..., -dy:, :] |= rows[..., : H + dy, :]
    return out


def boundary_f_measure(pred: torch.Tensor, gt: torch.Tensor, bound_th: float = 0.008) -> torch.Tensor:
    """Boundary F-measure per map, as DAVIS's ``db_eval_boundary``.

    Boundaries come from :func:`boundary_map`; a predicted boundary pixel matches when a ground-truth boundary
    pixel lies within the tolerance disk, and vice versa. The tolerance is ``bound_th`` pixels when
    ``bound_th >= 1``, else ``ceil(bound_th * sqrt(H^2 + W^2))`` (0.008 of the diagonal: 8 px at 480p).
    Precision = matched predicted / predicted boundary pixels, recall = matched gt / gt boundary pixels;
    F = 2PR / (P + R) (0 when P + R = 0). Empty boundaries: both empty gives F = 1; only one empty gives F = 0.

    Args:
        pred: bool ``(..., H, W)``.
        gt: bool ``(..., H, W)``.
        bound_th: tolerance as a fraction of the diagonal (< 1) or in pixels (>= 1).

    Returns:
        float64 ``(...)``.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"boundary_f_measure: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ")
    H, W = gt.shape[-2:]
    radius = int(bound_th) if bound_th >= 1 else math.ceil(bound_th * math.hypot(H, W))
    pred_b, gt_b = boundary_map(pred), boundary_map(gt)
    pred_matched = (pred_b & dilate_disk(gt_b, radius)).sum(dim=(-2, -1)).double()
    gt_matched = (gt_b & dilate_disk(pred_b, radius)).sum(dim=(-2, -1)).double()
    n_pred = pred_b.sum(dim=(-2, -1)).double()
    n_gt = gt_b.sum(dim=(-2, -1)).double()
    precision = torch.where(n_pred > 0, pred_matched / n_pred.clamp(min=1), torch.ones_like(n_pred))
    recall = torch.where(n_gt > 0, gt_matched / n_gt.clamp(min=1), torch.ones_like(n_gt))
    # DAVIS: no predicted boundary but some gt boundary -> P=1, R=0 (and symmetrically); both empty -> 1, 1.
    total = precision + recall
    return torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-300), torch.zeros_like(total))


def davis_scores(
    pred_masks: torch.Tensor | np.ndarray,
    gt_masks: torch.Tensor | np.ndarray,
    *,
    bound_th: float = 0.008,
    exclude_last: bool = True,
    frame_chunk: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-object, per-frame J and F of one sequence, as ``davis2017-evaluation`` (semi-supervised) computes them.

    Objects are the ids ``1..N`` with ``N = max(gt_masks[0])`` (ids absent from the first frame but below ``N``
    still count, as in DAVIS). The void label 255 in ``gt_masks`` is treated as background (the semi-supervised
    evaluation passes no void mask). The first frame is excluded (it was given), and with ``exclude_last`` the
    last one too: the official code evaluates ``masks[:, 1:-1]``.

    Args:
        pred_masks: integer ``(T, H, W)`` predicted object ids (0 = background), tensor or numpy.
        gt_masks: integer ``(T, H, W)`` ground-truth object ids (0 = background, 255 = void).
        bound_th: boundary tolerance of :func:`boundary_f_measure`.
        exclude_last: drop the last frame as the official evaluation does; ``False`` scores frames ``1..T-1``.
        frame_chunk: frames processed at once (bounds memory at high resolution).

    Returns:
        ``(J, F)``: float64 ``(N, T')`` each, with ``T' = T - 2`` (or ``T - 1``), on the inputs' device.

    Raises:
        ValueError: mismatched shapes, too few frames, no object in the first gt frame, or a predicted id above
            ``N`` (the official code aborts on those too).
    """
    pred = _as_long_tensor(pred_masks, "davis_scores: pred_masks")
    gt = _as_long_tensor(gt_masks, "davis_scores: gt_masks").to(pred.device)
    if gt.dim() != 3 or pred.shape != gt.shape:
        raise ValueError(f"davis_scores: pred_masks {tuple(pred.shape)} and gt_masks {tuple(gt.shape)} must both "
                         "be (T, H, W)")
    T = gt.shape[0]
    min_frames = 3 if exclude_last else 2
    if T < min_frames:
        raise ValueError(f"davis_scores: masks have T={T} frames, need {min_frames} (the first"
                         + (" and last are" if exclude_last else " is") + " not scored)")
    gt = torch.where(gt == DAVIS_VOID, torch.zeros_like(gt), gt)
    num_objects = int(gt[0].max())
    if num_objects < 1:
        raise ValueError("davis_scores: gt_masks[0] has no object (all background); nothing to evaluate")
    if int(pred.max()) > num_objects or int(pred.min()) < 0:
        raise ValueError(f"davis_scores: pred_masks has ids in [{int(pred.min())}, {int(pred.max())}] but the "
                         f"first gt frame has objects 1..{num_objects}")
    stop = T - 1 if exclude_last else T
    J = torch.empty(num_objects, stop - 1, dtype=torch.float64, device=gt.device)
    Fm = torch.empty_like(J)
    for obj in range(1, num_objects + 1):
        for start in range(1, stop, frame_chunk):
            end = min(start + frame_chunk, stop)
            p, g = pred[start:end] == obj, gt[start:end] == obj
            J[obj - 1, start - 1 : end - 1] = region_similarity(p, g)
            Fm[obj - 1, start - 1 : end - 1] = boundary_f_measure(p, g, bound_th)
    return J, Fm


def j_and_f(
    pred_masks: torch.Tensor | np.ndarray,
    gt_masks: torch.Tensor | np.ndarray,
    *,
    bound_th: float = 0.008,
    exclude_last: bool = True,
) -> dict[str, float]:
    """DAVIS-2017 J&F of one sequence: J and F averaged per object over the scored frames, then over objects.

    See :func:`davis_scores` for which objects and frames are scored. For a dataset, DAVIS averages over all
    objects of all sequences (not over sequences): use :class:`DavisMeter`.

    Args:
        pred_masks: integer ``(T, H, W)`` object ids (0 = background).
        gt_masks: integer ``(T, H, W)`` object ids (0 = background, 255 = void, treated as background).
        bound_th: boundary tolerance (fraction of the diagonal, or pixels if ``>= 1``).
        exclude_last: drop the last frame as the official evaluation does.

    Returns:
        ``{"J": ..., "F": ..., "JF": (J + F) / 2}`` as floats.

    Example:
        >>> gt = torch.zeros(3, 40, 40, dtype=torch.long)
        >>> gt[:, 10:30, 10:30] = 1
        >>> pred = torch.roll(gt, shifts=4, dims=2)  # 4 px off; tolerance here: ceil(0.008 * 56.6) = 1 px
        >>> scores = j_and_f(pred, gt)
        >>> scores["J"] < 1 and scores["F"] < 1
        True
    """
    J, Fm = davis_scores(pred_masks, gt_masks, bound_th=bound_th, exclude_last=exclude_last)
    j, f = float(J.mean(dim=1).mean()), float(Fm.mean(dim=1).mean())
    return {"J": j, "F": f, "JF": (j + f) / 2}


class DavisMeter:
    """Dataset-level J&F: per-object means collected over sequences, averaged over all objects (as DAVIS does).

    Example:
        >>> gt = torch.zeros(3, 16, 16, dtype=torch.long)
        >>> gt[:, 4:8, 4:8] = 1
        >>> meter = DavisMeter()
        >>> meter.update(gt, gt, name="seq_a")
        >>> meter.compute()
        {'J': 1.0, 'F': 1.0, 'JF': 1.0}
        >>> meter.per_object["seq_a_1"]
        (1.0, 1.0)
    """

    def __init__(self, *, bound_th: float = 0.008, exclude_last: bool = True) -> None:
        self.bound_th = bound_th
        self.exclude_last = exclude_last
        self.per_object: dict[str, tuple[float, float]] = {}

    def update(self, pred_masks: torch.Tensor | np.ndarray, gt_masks: torch.Tensor | np.ndarray, name: str) -> None:
        """Score one sequence; its objects are recorded as ``<name>_<id>`` (DAVIS's naming)."""
        J, Fm = davis_scores(pred_masks, gt_masks, bound_th=self.bound_th, exclude_last=self.exclude_last)
        for i, (j, f) in enumerate(zip(J.mean(dim=1).tolist(), Fm.mean(dim=1).tolist(), strict=True)):
            self.per_object[f"{name}_{i + 1}"] = (j, f)

    def compute(self) -> dict[str, float]:
        """``{"J", "F", "JF"}`` means over all objects seen."""
        if not self.per_object:
            raise RuntimeError("DavisMeter: no sequence scored; call update() first")
        values = torch.tensor(list(self.per_object.values()), dtype=torch.float64)
        j, f = float(values[:, 0].mean()), float(values[:, 1].mean())
        return {"J": j, "F": f, "JF": (j + f) / 2}


# ------------------------------------------------------------------------------------------- propagation
def mask_to_onehot(
    mask: torch.Tensor | np.ndarray,
    size: tuple[int, int] | None = None,
    num_labels: int | None = None,
    mode: str = "nearest",
) -> torch.Tensor:
    """One-hot labels ``(K, h, w)`` of an object-id mask, optionally resized to the feature grid.

    Channel ``k`` is object id ``k`` (0 = background); ``K = max id + 1`` unless ``num_labels`` is given. The
    DAVIS void label 255 becomes background.

    Args:
        mask: integer ``(H, W)`` object ids.
        size: ``(h, w)`` of the feature grid; ``None`` keeps ``(H, W)``.
        num_labels: ``K`` (must exceed the largest id).
        mode: ``"nearest"`` (pixel-centre sampling, PIL's ``NEAREST`` resize, as DINO's evaluation) or
            ``"area"`` (each cell gets the fraction of its pixels with each id: soft labels).

    Returns:
        float32 ``(K, h, w)`` on the mask's device.

    Example:
        >>> mask_to_onehot(torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2]]), size=(1, 2))[:, 0]
        tensor([[1., 0.],
                [0., 0.],
                [0., 1.]])
    """
    m = _as_long_tensor(mask, "mask_to_onehot: mask")
    if m.dim() != 2:
        raise ValueError(f"mask_to_onehot: mask must be (H, W), got {tuple(m.shape)}")
    if mode not in ("nearest", "area"):
        raise ValueError(f"mask_to_onehot: mode must be 'nearest' or 'area', got {mode!r}")
    m = torch.where(m == DAVIS_VOID, torch.zeros_like(m), m)
    K = int(m.max()) + 1 if num_labels is None else num_labels
    if int(m.max()) >= K or int(m.min()) < 0:
        raise ValueError(f"mask_to_onehot: ids span [{int(m.min())}, {int(m.max())}] but num_labels={K}")
    if size is None or tuple(size) == tuple(m.shape):
        return rearrange(F.one_hot(m, K).float(), "h w k -> k h w")
    if mode == "nearest":
        small = F.interpolate(m[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
        return rearrange(F.one_hot(small, K).float(), "h w k -> k h w")
    onehot = rearrange(F.one_hot(m, K).float(), "h w k -> 1 k h w")
    return F.interpolate(onehot, size=size, mode="area")[0]


def soft_labels_to_masks(
    labels: torch.Tensor, size: tuple[int, int], *, normalize: bool = False, frame_chunk: int = 8
) -> torch.Tensor:
    """Object-id masks from soft label maps: bilinear upsampling (``align_corners=False``), then argmax.

    Args:
        labels: ``(T, K, h, w)`` soft labels (channel ``k`` = object id ``k``).
        size: ``(H, W)`` of the annotations.
        normalize: after upsampling, rescale each label map to ``[0, 1]`` per frame and channel before the
            argmax (DINO's ``norm_mask`` in its DAVIS evaluation).
        frame_chunk: frames upsampled at once (bounds memory).

    Returns:
        int64 ``(T, H, W)`` on ``labels``' device.
    """
    check_shape(labels, "T K h w", name="soft_labels_to_masks: labels")
    out = torch.empty(labels.shape[0], *size, dtype=torch.long, device=labels.device)
    for start in range(0, labels.shape[0], frame_chunk):
        up = F.interpolate(labels[start : start + frame_chunk].float(), size=size, mode="bilinear",
                           align_corners=False)
        if normalize:
            lo = up.amin(dim=(-2, -1), keepdim=True)
            hi = up.amax(dim=(-2, -1), keepdim=True)
            up = (up - lo) / (hi - lo).clamp(min=1e-12)
        out[start : start + frame_chunk] = up.argmax(dim=1)
    return out


def _radius_neighbours(
    h: int, w: int, radius: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
    """For each cell of an ``h x w`` grid, the flat indices of the cells strictly within ``radius``.

    Returns:
        ``(neighbours, inside)``: int64 ``(h w, O)`` indices (clamped into the grid) and bool ``(h w, O)``
        marking the offsets that stay inside it; ``(None, None)`` when ``O >= h w`` (masking is then cheaper).
    """
    reach = min(math.ceil(radius), max(h, w))
    span = torch.arange(-reach, reach + 1, device=device)
    dy, dx = torch.meshgrid(span, span, indexing="ij")
    keep = (dy * dy + dx * dx).double() < radius * radius
    dy, dx = dy[keep], dx[keep]  # (O,)
    if dy.numel() >= h * w:
        return None, None
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ny = ys.reshape(-1, 1) + dy  # (n, O)
    nx = xs.reshape(-1, 1) + dx
    inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    return ny.clamp(0, h - 1) * w + nx.clamp(0, w - 1), inside


def _context_frames(t: int, context: int) -> list[int]:
    """The first frame, then frames ``t - context .. t - 1`` clamped at 0 (videowalk pads with the first frame)."""
    return [0] + [max(s, 0) for s in range(t - context, t)]


@torch.no_grad()
def propagate_labels(
    features: torch.Tensor,
    first_labels: torch.Tensor,
    *,
    topk: int = 10,
    context: int = 20,
    radius: float = 12.0,
    temperature: float = 0.07,
    normalize: bool = True,
    device: torch.device | str | None = None,
    max_affinity_elements: int = 2**24,
) -> torch.Tensor:
    """Propagate the first frame's soft labels through a video by feature affinity (videowalk protocol).

    For each frame ``t >= 1`` and each query cell ``q`` of frame ``t``, the candidates are all cells of the
    first frame (no spatial limit) and the cells within ``radius`` feature cells (Euclidean, strictly ``<``) of
    ``q`` in each of the ``context`` previous frames ``t - context .. t - 1`` (indices below 0 repeat the first
    frame, as videowalk pads the video; those copies also take the radius). Affinity is the dot product of
    L2-normalised features; the ``topk`` most similar candidates are weighted by a softmax of
    ``affinity / temperature`` and their labels averaged. Labels of propagated frames are the soft predictions
    themselves (never hardened). Frame 0's output is ``first_labels``.

    Memory and compute: the video's features may stay on the CPU (``device`` names where the work happens);
    per frame only its context (``(context + 1) h w`` features and labels) and one block of at most
    ``max_affinity_elements`` affinities (queries x candidates) are on ``device``, so a long video costs only
    its ``(T, K, h, w)`` output. When the radius disc is smaller than the grid, affinities to recent frames are
    computed only for the rows within ``radius`` of each block of queries and the top-k runs over the first
    frame plus the in-radius cells, not over every cell of every context frame.

    Differences from videowalk's code, none of which changes the result: no explicit padding (clamped frame
    indices instead), and no ``-1e10`` mask values (out-of-radius cells are never candidates; ties aside, the
    top-k is the same whenever at least ``topk`` candidates are in range, which the first frame guarantees for
    ``topk <= h w``).

    Args:
        features: ``(T, D, h, w)`` per-frame dense features (e.g. an encoder's stride-8 map).
        first_labels: ``(K, h, w)`` one-hot (or soft) labels of frame 0 at the feature grid
            (:func:`mask_to_onehot`).
        topk: neighbours kept per query.
        context: previous frames used besides the first.
        radius: spatial limit on the previous frames, in feature cells.
        temperature: softmax temperature on the cosine affinities.
        normalize: L2-normalise features over ``D`` first.
        device: where to compute (default: ``features.device``).
        max_affinity_elements: largest affinity block (queries x candidates) held at once.

    Returns:
        float32 ``(T, K, h, w)`` soft labels on ``features.device``; each cell's labels are a convex
        combination of context labels, so they sum to 1 when ``first_labels`` does.

    Example:
        >>> feats = torch.eye(4).reshape(4, 2, 2).expand(3, 4, 2, 2)  # every cell its own static identity
        >>> first = mask_to_onehot(torch.tensor([[0, 1], [2, 0]]))
        >>> out = propagate_labels(feats, first, topk=1, context=1, radius=1.0)
        >>> torch.equal(out[2], first)
        True
    """
    sizes = check_shape(features, "T D h w", name="propagate_labels: features")
    check_shape(first_labels, "K h w", sizes, name="propagate_labels: first_labels")
    if topk < 1 or context < 0 or temperature <= 0 or radius <= 0:
        raise ValueError(f"propagate_labels: need topk >= 1, context >= 0, temperature > 0, radius > 0; got "
                         f"topk={topk}, context={context}, temperature={temperature}, radius={radius}")
    T, _, h, w = features.shape
    n = h * w
    work = torch.device(device) if device is not None else features.device
    out = torch.empty(T, first_labels.shape[0], h, w, dtype=torch.float32, device=features.device)
    out[0] = first_labels.float()

    def frame_feats(t: int) -> torch.Tensor:
        f = rearrange(features[t].to(work).float(), "d h w -> (h w) d")
        return F.normalize(f, dim=1) if normalize else f

    neighbours, inside = _radius_neighbours(h, w, radius, work)  # (n, O) each, or None when O >= n
    reach = math.ceil(radius)  # rows a neighbour can be away
    ys, xs = torch.meshgrid(torch.arange(h, device=work), torch.arange(w, device=work), indexing="ij")
    grid = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1).float()  # (n, 2)
    cache: dict[int, torch.Tensor] = {}  # features of frames still in some context
    for t in range(1, T):
        ctx = _context_frames(t, context)
        cache = {s: cache[s] if s in cache else frame_feats(s) for s in set(ctx) | {t}}
        keys = torch.stack([cache[s] for s in ctx])  # (C, n, D)
        key_labels = rearrange(out[ctx].to(work), "c k h w -> (c h w) k")
        query = cache[t] / temperature  # the query carries the temperature: no extra pass over affinities
        C = len(ctx)
        chunk = max(1, max_affinity_elements // (C * n))
        pred = torch.empty(n, key_labels.shape[1], device=work)
        for q0 in range(0, n, chunk):
            q1 = min(q0 + chunk, n)
            if C > 1 and neighbours is not None and inside is not None:
                # gather the few cells within the radius of each query;
                # recent frames only matter within `radius` rows of the block's rows: a contiguous slice
                k0 = max(q0 // w - reach, 0) * w
                k1 = min((q1 - 1) // w + reach + 1, h) * w
                first_aff = query[q0:q1] @ keys[0].T  # (q, n), already / temperature
                recent = torch.einsum("qd,cnd->qcn", query[q0:q1], keys[1:, k0:k1])  # (q, C - 1, k1 - k0)
                nbr = neighbours[q0:q1]  # (q, O)
                local = recent.gather(2, (nbr - k0)[:, None].expand(-1, C - 1, -1))  # (q, C - 1, O)
                local = local.masked_fill(~inside[q0:q1, None], float("-inf"))
                candidates = torch.cat([first_aff, local.flatten(1)], dim=1)  # (q, n + (C - 1) O)
                weights, idx = torch.topk(candidates, min(topk, candidates.shape[1]), dim=1)
                # back to key indices (slot * n + cell): first-frame candidates are already cells of slot 0
                rest = (idx - n).clamp(min=0)
                slot, offset = rest // nbr.shape[1] + 1, rest % nbr.shape[1]
                idx = torch.where(idx < n, idx, slot * n + nbr.gather(1, offset))
            else:
                aff = torch.einsum("qd,cnd->qcn", query[q0:q1], keys)  # (q, C, n), already / temperature
                if C > 1:  # the radius covers most of the grid: mask the far cells instead
                    far = torch.cdist(grid[q0:q1], grid) >= radius  # (q, n)
                    aff[:, 1:].masked_fill_(far[:, None], float("-inf"))
                weights, idx = torch.topk(aff.flatten(1), min(topk, C * n), dim=1)
            pred[q0:q1] = torch.einsum("qj,qjk->qk", torch.softmax(weights, dim=1), key_labels[idx])
        out[t] = rearrange(pred, "(h w) k -> k h w", h=h, w=w).to(out.device)
    return out
