"""Frozen-feature probes: extract clip features with a frozen encoder, then classify them with kNN or a linear layer.

These are the standard checks that a pretext task taught an encoder something: the encoder never trains here,
so accuracy above a random-init encoder's is what the pretraining contributed.

- :func:`extract_features`: ``(N, D)`` features and ``(N,)`` labels from a loader of clip batches.
- :func:`knn_classify` / :func:`knn_accuracy`: cosine-similarity kNN with temperature-weighted votes
  (Wu et al. 2018, "Unsupervised feature learning via non-parametric instance discrimination"; the DINO protocol).
- :func:`linear_probe`: a linear layer on standardised features, trained full batch with L-BFGS (deterministic);
  :func:`fit_linear_classifier` returns the fitted layer (:class:`LinearClassifier`) to apply elsewhere.
- :func:`mean_class_accuracy`: accuracy averaged over classes (robust to imbalanced test sets).
- :func:`load_encoder_from_checkpoint`: the trained encoder of an ``stssl-train`` checkpoint.
- :func:`pretraining_world`: which built-in world scenes a checkpoint was pretrained on (to keep test scenes out).
- :func:`recalibrate_batchnorm`: BatchNorm statistics recomputed on the probe data (fair random-init baselines).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> centres = torch.randn(3, 16, generator=g) * 4
    >>> y = torch.arange(60) % 3
    >>> x = centres[y] + torch.randn(60, 16, generator=g)
    >>> knn_accuracy(x[:30], y[:30], x[30:], y[30:], k=5)
    1.0
    >>> linear_probe(x[:30], y[:30], x[30:], y[30:])["acc"]
    1.0
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce

from stssl.checks import check_shape
from stssl.encoders.base import Encoder

__all__ = [
    "POOLS",
    "LinearClassifier",
    "extract_features",
    "fit_linear_classifier",
    "knn_accuracy",
    "knn_classify",
    "linear_probe",
    "load_encoder_from_checkpoint",
    "mean_class_accuracy",
    "pretraining_world",
    "pyramid_level",
    "recalibrate_batchnorm",
    "scaled_video",
]

#: Feature pooling choices of :func:`extract_features`.
POOLS = ("mean", "grid2")


def _pool(out_dense: torch.Tensor, out_pooled: torch.Tensor, pool: str) -> torch.Tensor:
    if pool == "mean":
        return out_pooled
    # grid2: average over time, then a 2x2 spatial grid of cell means, concatenated cell by cell: (B, 4 D).
    frame = reduce(out_dense, "b d t h w -> b d h w", "mean")
    cells = F.adaptive_avg_pool2d(frame, (2, 2))
    return rearrange(cells, "b d gh gw -> b (gh gw d)")


def scaled_video(video: torch.Tensor, normalize: tuple[float, float] | None = None) -> torch.Tensor:
    """A clip batch as the encoder's float input: uint8 divided by 255 (float kept as is), then ``(x - mean) /
    std`` with ``normalize = (mean, std)`` (the encoder's pretraining input), or unchanged with ``None``.

    Example:
        >>> scaled_video(torch.full((1, 3, 1, 2, 2), 255, dtype=torch.uint8), (0.5, 0.5)).unique().tolist()
        [1.0]
    """
    video = video.float().div(255.0) if video.dtype == torch.uint8 else video.float()
    return video if normalize is None else (video - normalize[0]) / normalize[1]


def pyramid_level(pyramid: tuple[torch.Tensor, ...], stage: int, owner: str) -> torch.Tensor:
    """``pyramid[stage]`` (negative counts from the last), or a ``ValueError`` naming ``owner``, the stage and the
    levels there are."""
    levels = len(pyramid)
    if not -levels <= stage < levels:
        raise ValueError(f"{owner}: stage {stage} but the encoder's pyramid has {levels} levels "
                         f"(0..{levels - 1}, or negative from the last)")
    return pyramid[stage]


@torch.no_grad()
def extract_features(
    encoder: Encoder,
    loader: Iterable[Mapping[str, Any]],
    *,
    pool: str = "mean",
    stage: int = -1,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a frozen ``encoder`` over every batch of ``loader``; return its features and the batches' labels.

    The encoder runs in eval mode without gradients (its train/eval mode is restored afterwards). Batches are
    dicts with ``video`` and ``label``; a uint8 ``video`` (a raw :class:`~stssl.data.ClipDataset` batch) is
    converted to float in ``[0, 1]`` here, a float one is used as is.

    Args:
        encoder: any :class:`~stssl.encoders.Encoder`.
        loader: yields dicts with ``video`` ``(B, C, T, H, W)`` and ``label`` ``(B,)``.
        pool: ``"mean"``: the global average of the ``stage``'s map ``(B, D)`` (the encoder's ``pooled`` for the
            last); ``"grid2"``: that map averaged over time and
            over each cell of a 2x2 spatial grid, concatenated ``(B, 4 D)`` (keeps coarse layout, e.g. where in
            the image things move).
        stage: which level of the encoder's ``pyramid`` to pool (``-1``, the default: the last, ``dense``).
            Probing each stage is the layer-wise protocol of Goyal et al. 2019 ("Scaling and benchmarking
            self-supervised visual representation learning"): a pretext task's last layers specialise in it, so
            the best layer is often an intermediate one.
        device: where the encoder runs (default: the device of its parameters).

    Returns:
        ``features`` float32 ``(N, D)`` (``(N, 4 D)`` for ``grid2``) and ``labels`` int64 ``(N,)``, on the CPU.

    Raises:
        ValueError: for an unknown ``pool``, a ``stage`` outside the encoder's pyramid, a batch without ``label``
            or an empty loader.

    Example:
        >>> from stssl.encoders import build_encoder
        >>> batches = [{"video": torch.rand(2, 3, 4, 32, 32), "label": torch.tensor([0, 1])}] * 2
        >>> x, y = extract_features(build_encoder("r3d_tiny", width=4), batches, pool="grid2")
        >>> tuple(x.shape), y.tolist()
        ((4, 128), [0, 1, 0, 1])
    """
    if pool not in POOLS:
        raise ValueError(f"extract_features: pool must be one of {POOLS}, got {pool!r}")
    if device is None:
        device = next(encoder.parameters()).device
    device = torch.device(device)
    was_training = encoder.training
    encoder.eval()
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    try:
        for i, batch in enumerate(loader):
            if "label" not in batch:
                raise ValueError(f"extract_features: batch {i} has no 'label' (keys {sorted(batch)}); probes need labels")
            video = batch["video"]
            check_shape(video, "B C T H W", name=f"extract_features: batch {i} ['video']")
            out = encoder(scaled_video(video.to(device, non_blocking=True)))
            dense = pyramid_level(out.pyramid, stage, "extract_features")
            pooled = out.pooled if dense is out.dense else reduce(dense, "b d t h w -> b d", "mean")
            feats.append(_pool(dense, pooled, pool).float().cpu())
            labels.append(torch.as_tensor(batch["label"]).reshape(-1).to(torch.int64).cpu())
    finally:
        encoder.train(was_training)
    if not feats:
        raise ValueError("extract_features: the loader gave no batches")
    x, y = torch.cat(feats), torch.cat(labels)
    if len(x) != len(y):
        raise ValueError(f"extract_features: {len(x)} feature rows but {len(y)} labels; each clip needs one label")
    return x, y


@torch.no_grad()
def recalibrate_batchnorm(
    encoder: Encoder,
    loader: Iterable[Mapping[str, Any]],
    *,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
    normalize: tuple[float, float] | None = None,
) -> Encoder:
    """Recompute every BatchNorm layer's running statistics on ``loader`` (no weights change); returns ``encoder``.

    A random-init encoder's BatchNorm layers hold the default statistics (mean 0, variance 1), so in eval mode its
    activations are not normalised at all, while a trained encoder's statistics fit the data. Recalibrating both
    on the probe's *train* clips separates what training taught the weights from what it taught the statistics
    (a fairer random-init baseline). Statistics are the equal-weight average over batches (``momentum=None``);
    the layers' momentum and the encoder's train/eval mode are restored afterwards.

    Args:
        encoder: the encoder to recalibrate in place.
        loader: yields dicts with ``video`` ``(B, C, T, H, W)`` (uint8 is divided by 255).
        device: where the encoder runs (default: the device of its parameters).
        max_batches: stop after this many batches (default: all).
        normalize: ``(mean, std)`` of the encoder's pretraining input (:func:`scaled_video`), or ``None``.
    """
    layers = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return encoder
    device = next(encoder.parameters()).device if device is None else torch.device(device)
    momenta = [m.momentum for m in layers]
    was_training = encoder.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts the same
    encoder.train()
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            encoder(scaled_video(batch["video"].to(device, non_blocking=True), normalize))
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        encoder.train(was_training)
    return encoder


def _num_classes(train_y: torch.Tensor, num_classes: int | None, what: str) -> int:
    k = int(train_y.max()) + 1 if num_classes is None else int(num_classes)
    if train_y.numel() and (int(train_y.min()) < 0 or int(train_y.max()) >= k):
        raise ValueError(f"{what}: labels must lie in [0, {k}), got [{int(train_y.min())}, {int(train_y.max())}]")
    return k


@torch.no_grad()
def knn_classify(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Weighted kNN: each test row takes the ``k`` most cosine-similar train rows, which vote ``exp(s / T)``.

    Args:
        train_x: ``(N, D)`` train features (any scale: rows are L2-normalised here).
        train_y: ``(N,)`` int train labels in ``[0, K)``.
        test_x: ``(M, D)`` test features, on any device (each chunk is moved to ``train_x``'s device).
        k: neighbours (capped at ``N``).
        temperature: ``T`` of the vote weights; small ``T`` approaches 1-NN, large ``T`` a plain majority.
        num_classes: ``K`` (default ``max(train_y) + 1``).
        chunk_size: test rows per similarity block (bounds memory at ``chunk_size x N``).

    Returns:
        int64 ``(M,)`` predicted classes on ``train_x``'s device; ties go to the lowest class index.

    Example:
        >>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> knn_classify(train, torch.tensor([0, 0, 1]), torch.tensor([[1.0, 0.2], [0.1, 1.0]]), k=1).tolist()
        [0, 1]
    """
    sizes = check_shape(train_x, "N D", name="knn_classify: train_x")
    check_shape(train_y, "N", sizes, name="knn_classify: train_y")
    check_shape(test_x, "M D", sizes, name="knn_classify: test_x")
    if k < 1:
        raise ValueError(f"knn_classify: k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"knn_classify: temperature must be > 0, got {temperature}")
    if len(train_x) == 0:
        raise ValueError("knn_classify: train_x is empty")
    num_k = _num_classes(train_y, num_classes, "knn_classify: train_y")
    k = min(k, len(train_x))
    train_n = F.normalize(train_x.float(), dim=1)
    train_y = train_y.to(device=train_x.device, dtype=torch.int64)
    preds = []
    for start in range(0, len(test_x), chunk_size):
        test_n = F.normalize(test_x[start : start + chunk_size].to(train_x.device).float(), dim=1)
        sim = test_n @ train_n.T  # (m, N) cosine similarity
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(test_n), num_k, device=test_n.device, dtype=weights.dtype)
        votes.scatter_add_(1, train_y[top_idx], weights)
        preds.append(votes.argmax(dim=1))  # the first maximum: ties go to the lowest class
    if not preds:
        return torch.zeros(0, dtype=torch.int64, device=train_x.device)
    return torch.cat(preds)


def knn_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Top-1 accuracy of :func:`knn_classify` on ``(test_x, test_y)`` (``test_y`` ``(M,)``)."""
    sizes = check_shape(test_x, "M D", name="knn_accuracy: test_x")
    check_shape(test_y, "M", sizes, name="knn_accuracy: test_y")
    pred = knn_classify(train_x, train_y, test_x, k=k, temperature=temperature, num_classes=num_classes)
    return float((pred.cpu() == test_y.cpu()).float().mean())


def mean_class_accuracy(pred: torch.Tensor, target: torch.Tensor, num_classes: int | None = None) -> float:
    """Accuracy averaged over the classes present in ``target`` (balanced accuracy).

    Example:
        >>> pred, target = torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1])
        >>> float((pred == target).float().mean()), mean_class_accuracy(pred, target)
        (0.75, 0.5)
    """
    sizes = check_shape(target, "N", name="mean_class_accuracy: target")
    check_shape(pred, "N", sizes, name="mean_class_accuracy: pred")
    pred, target = pred.cpu().long(), target.cpu().long()
    num_k = int(target.max()) + 1 if num_classes is None else num_classes
    accs = [float((pred[target == c] == c).float().mean()) for c in range(num_k) if bool((target == c).any())]
    return sum(accs) / len(accs) if accs else float("nan")


@dataclass(frozen=True)
class LinearClassifier:
    """A fitted linear probe (:func:`fit_linear_classifier`): ``logits(x) = ((x - mean) / std) W^T + b``.

    ``mean`` / ``std`` are the train features' statistics (``None`` without standardisation). The map is affine per
    feature vector, so on a dense map it commutes with bilinear resizing (whose weights sum to 1): the logits of
    upsampled features equal the upsampled logits, which :mod:`stssl.eval.dense_probe` relies on.
    """

    weight: torch.Tensor  # (K, D)
    bias: torch.Tensor  # (K,)
    mean: torch.Tensor | None  # (D,)
    std: torch.Tensor | None  # (D,)
    loss: float  # the final train objective

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` features -> ``(..., K)`` class scores (on the classifier's device)."""
        x = x.to(self.weight.device).float()
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        return F.linear(x, self.weight, self.bias)

    @torch.no_grad()
    def logits_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D, h, w)`` feature maps -> ``(B, K, h, w)`` class-score maps."""
        check_shape(x, "B D h w", {"D": self.weight.shape[1]}, name="LinearClassifier.logits_map: x")
        return self.logits(x.movedim(1, -1)).movedim(-1, 1)


def fit_linear_classifier(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    *,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-3,
    standardize: bool = True,
    num_classes: int | None = None,
    seed: int = 0,
) -> LinearClassifier:
    """Multinomial logistic regression on frozen features: full-batch L-BFGS, deterministic for a ``seed``.

    Features are standardised with the *train* mean and standard deviation (kept in the result, so test features
    never leak into the probe). The loss is cross-entropy plus ``weight_decay / 2 * ||W||^2`` on the weights (not
    the bias); the problem is convex, so the result hardly depends on the seeded initialisation.

    Args:
        train_x: ``(N, D)`` train features.
        train_y: ``(N,)`` int labels in ``[0, K)``.
        epochs: L-BFGS iterations (each one full batch, with a strong-Wolfe line search).
        lr: L-BFGS step scale (1 is the natural step with a line search).
        weight_decay: L2 penalty on the weights.
        standardize: standardise features with the train statistics first.
        num_classes: ``K`` (default ``max(train_y) + 1``).
        seed: seeds the initial weights.
    """
    sizes = check_shape(train_x, "N D", name="fit_linear_classifier: train_x")
    check_shape(train_y, "N", sizes, name="fit_linear_classifier: train_y")
    if len(train_x) == 0:
        raise ValueError("fit_linear_classifier: train_x is empty")
    if epochs < 1:
        raise ValueError(f"fit_linear_classifier: epochs must be >= 1, got {epochs}")
    if weight_decay < 0:
        raise ValueError(f"fit_linear_classifier: weight_decay must be >= 0, got {weight_decay}")
    num_k = _num_classes(train_y, num_classes, "fit_linear_classifier: train_y")
    device = train_x.device
    xtr, ytr = train_x.float(), train_y.to(device, torch.int64)
    mean = std = None
    if standardize:
        mean = xtr.mean(dim=0)
        std = xtr.std(dim=0, unbiased=False).clamp_min(1e-6)
        xtr = (xtr - mean) / std
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(num_k, xtr.shape[1], generator=gen) * 0.01).to(device).requires_grad_(True)
    bias = torch.zeros(num_k, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=lr, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-9, tolerance_change=1e-12,
    )

    def objective() -> torch.Tensor:
        return F.cross_entropy(F.linear(xtr, weight, bias), ytr) + 0.5 * weight_decay * weight.pow(2).sum()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        loss = float(objective())
    return LinearClassifier(weight.detach(), bias.detach(), mean, std, loss)


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-3,
    standardize: bool = True,
    num_classes: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Fit :func:`fit_linear_classifier` on ``(train_x, train_y)`` and score it on ``(test_x, test_y)``.

    Args:
        train_x / train_y: ``(N, D)`` features, ``(N,)`` int labels in ``[0, K)``.
        test_x / test_y: ``(M, D)`` features, ``(M,)`` int labels.
        epochs / lr / weight_decay / standardize / seed: see :func:`fit_linear_classifier`.
        num_classes: ``K`` (default ``max(train_y, test_y) + 1``).

    Returns:
        ``{"acc": test accuracy, "mean_class_acc": test accuracy averaged over classes, "train_acc": ...,
        "loss": final train objective}``.
    """
    sizes = check_shape(train_x, "N D", name="linear_probe: train_x")
    check_shape(train_y, "N", sizes, name="linear_probe: train_y")
    check_shape(test_x, "M D", sizes, name="linear_probe: test_x")
    check_shape(test_y, "M", sizes, name="linear_probe: test_y")
    if len(train_x) == 0:
        raise ValueError("linear_probe: train_x is empty")
    if num_classes is None:
        num_classes = int(torch.cat([train_y.reshape(-1), test_y.reshape(-1)]).max()) + 1
    probe = fit_linear_classifier(train_x, train_y, epochs=epochs, lr=lr, weight_decay=weight_decay,
                                  standardize=standardize, num_classes=num_classes, seed=seed)
    yte = test_y.to(probe.weight.device, torch.int64)
    pred_tr = probe.logits(train_x).argmax(dim=1)
    pred_te = probe.logits(test_x).argmax(dim=1)
    return {
        "acc": float((pred_te == yte).float().mean()) if len(yte) else float("nan"),
        "mean_class_acc": mean_class_accuracy(pred_te, yte, num_classes) if len(yte) else float("nan"),
        "train_acc": float((pred_tr == train_y.to(pred_tr.device, torch.int64)).float().mean()),
        "loss": probe.loss,
    }


def load_encoder_from_checkpoint(
    path: str | Path,
    *,
    encoder: Encoder | None = None,
    map_location: str | torch.device = "cpu",
    random_init: bool = False,
) -> Encoder:
    """The encoder of an ``stssl-train`` (:class:`~stssl.modules.SSLModule`) checkpoint, with its trained weights.

    The encoder is rebuilt from the checkpoint's saved LightningCLI config (``hyper_parameters["encoder"]``, a
    ``class_path``/``init_args`` dict) unless ``encoder`` is given; then the ``encoder.*`` entries of its
    ``state_dict`` are loaded strictly. Tasks, heads and optimizer state in the checkpoint are ignored.

    Args:
        path: a Lightning ``.ckpt`` file.
        encoder: an encoder of the trained architecture to load into (for checkpoints without a saved config).
        map_location: where the weights are loaded.
        random_init: return the checkpoint's architecture freshly initialised, without its weights (the
            scratch baseline of an evaluation); the weights are still checked to fit it. Without ``encoder``, the
            fresh encoder is built from the random state this function was called with, so after
            ``torch.manual_seed(s)`` it equals the architecture built directly after the same seed.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        ValueError: when the checkpoint has no ``encoder.*`` weights, no saved encoder config (and no ``encoder``
            was given), or its weights do not fit the encoder (listing missing and unexpected keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_encoder_from_checkpoint: {path} not found")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)  # Lightning stores hparams objects
    state = ckpt.get("state_dict", {}) if isinstance(ckpt, dict) else {}
    enc_state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if not enc_state:
        raise ValueError(
            f"{path}: no 'encoder.*' weights in the checkpoint's state_dict (found {len(state)} keys, e.g. "
            f"{list(state)[:3]}); expected an stssl-train (SSLModule) checkpoint"
        )
    config = (ckpt.get("hyper_parameters") or {}).get("encoder")
    fresh = None if encoder is None else copy.deepcopy(encoder)  # its initial weights, for random_init
    rng = torch.random.get_rng_state()  # the fresh encoder of random_init is built from here
    if encoder is None:
        encoder = _encoder_from_config(config, path)
    hint = "build the encoder the checkpoint was trained with"
    try:
        result = encoder.load_state_dict(enc_state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even when not strict
        raise ValueError(f"{path}: the encoder weights do not fit {type(encoder).__name__} ({err}); {hint}") from err
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: the encoder weights do not fit {type(encoder).__name__}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}; {hint}"
        )
    if random_init:  # the weights fit: now the same architecture, freshly initialised
        if fresh is None:
            torch.random.set_rng_state(rng)
            fresh = _encoder_from_config(config, path)
        encoder = fresh
    return encoder.to(map_location)


def pretraining_world(path: str | Path) -> dict[str, Any] | None:
    """The built-in world an ``stssl-train`` checkpoint was pretrained on: ``{"world": name, "train_seeds": [..]}``.

    Read from the checkpoint's saved :class:`~stssl.data.ClipDataModule` arguments. ``None`` when it trained on
    other video (``sources`` given), on no world, or the checkpoint holds no data-module arguments. A world scene
    is its seed's camera path at any length and size, so seeds are what two renders share: the 64-frame scene of
    seed 12 is the first 64 frames of the 200-frame one.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretraining_world: {path} not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    data = ckpt.get("datamodule_hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(data, Mapping) or data.get("sources") is not None or not data.get("world"):
        return None
    return {"world": str(data["world"]), "train_seeds": [int(s) for s in data.get("world_train_seeds") or ()]}


def _encoder_from_config(config: Any, path: Path) -> Encoder:
    """Instantiate an encoder from a saved ``class_path``/``init_args`` dict (jsonargparse, as LightningCLI does)."""
    if isinstance(config, Encoder):  # a copy: the caller loads weights into it, or wants a fresh one
        return copy.deepcopy(config)
    if not isinstance(config, Mapping) or "class_path" not in config:
        raise ValueError(
            f"{path}: the checkpoint has no saved encoder config (hyper_parameters['encoder'] is {config!r}); it was "
            "not written by stssl-train's LightningCLI. Pass the encoder it was trained with (e.g. --encoder NAME)"
        )
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--encoder", type=Encoder)
    cfg = parser.parse_object({"encoder": dict(config)})
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    encoder = instantiate(cfg).encoder
    if not isinstance(encoder, Encoder):
        raise ValueError(f"{path}: the saved encoder config built a {type(encoder).__name__}, not an Encoder")
    return encoder
