from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stssl.encoders import Encoder, build_encoder
from stssl.encoders.resnet3d import ResNet3D
from stssl.eval.probe import (
    extract_features,
    knn_accuracy,
    knn_classify,
    linear_probe,
    load_encoder_from_checkpoint,
    mean_class_accuracy,
    recalibrate_batchnorm,
)
from stssl.types import EncoderSpec

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/eval/conftest.py


def _knn_reference(train_x, train_y, test_x, k, temperature, num_classes):
    """Explicit loops: cosine similarity to every train row, the k best vote exp(s / T), argmax (lowest on ties)."""
    preds = []
    for q in test_x.tolist():
        qn = math.sqrt(sum(v * v for v in q))
        sims = []
        for row, label in zip(train_x.tolist(), train_y.tolist(), strict=True):
            rn = math.sqrt(sum(v * v for v in row))
            sims.append((sum(a * b for a, b in zip(q, row, strict=True)) / (qn * rn), label))
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for s, label in sims[:k]:
            votes[label] += math.exp(s / temperature)
        preds.append(max(range(num_classes), key=lambda c: (votes[c], -c)))
    return preds


def _clusters(n: int, d: int, k: int, seed: int, spread: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=torch.Generator().manual_seed(1234)) * spread
    y = torch.arange(n) % k
    return centres[y] + torch.randn(n, d, generator=g), y


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.07), (5, 0.07), (7, 0.5), (100, 1.0)])
def test_knn_matches_the_explicit_loop(k: int, temperature: float) -> None:
    g = torch.Generator().manual_seed(k)
    train_x, test_x = torch.randn(30, 6, generator=g), torch.randn(12, 6, generator=g)
    train_y = torch.randint(4, (30,), generator=g)
    expected = _knn_reference(train_x, train_y, test_x, min(k, 30), temperature, 4)
    got = knn_classify(train_x, train_y, test_x, k=k, temperature=temperature, num_classes=4, chunk_size=5)
    assert got.tolist() == expected
    assert got.dtype == torch.int64


def test_knn_is_scale_invariant_and_counts_unseen_classes() -> None:
    x, y = _clusters(40, 8, 3, seed=0)
    pred = knn_classify(x[:20], y[:20], x[20:], k=5)
    assert torch.equal(pred, knn_classify(x[:20] * 7.0, y[:20], x[20:] * 0.1, k=5))  # cosine similarity
    # num_classes larger than the labels seen is fine; a label out of range is an error
    assert torch.equal(pred, knn_classify(x[:20], y[:20], x[20:], k=5, num_classes=5))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        knn_classify(x[:20], y[:20], x[20:], num_classes=2)
    with pytest.raises(ValueError, match="test_x"):
        knn_classify(x[:20], y[:20], x[20:, :4])


@pytest.mark.parametrize(
    "device",
    ["meta", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))],
)
def test_knn_moves_test_features_to_the_train_device(device: str) -> None:
    """A CPU test set against a train bank on another device: the similarities are computed there."""
    x, y = _clusters(40, 8, 3, seed=0)
    pred = knn_classify(x[:20].to(device), y[:20], x[20:], k=5, num_classes=3, chunk_size=7)
    assert pred.device.type == device and pred.shape == (20,) and pred.dtype == torch.int64
    if device != "meta":
        assert torch.equal(pred.cpu(), knn_classify(x[:20], y[:20], x[20:], k=5, num_classes=3))


def test_probes_separate_clusters_and_stay_at_chance_on_random_labels() -> None:
    x, y = _clusters(300, 16, 3, seed=0)
    train_x, train_y, test_x, test_y = x[:150], y[:150], x[150:], y[150:]
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=10) > 0.98
    assert linear_probe(train_x, train_y, test_x, test_y)["acc"] > 0.98
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(600, 16, generator=g)
    rand_y = torch.randint(3, (600,), generator=g)
    knn_rand = knn_accuracy(noise[:300], rand_y[:300], noise[300:], rand_y[300:], k=10)
    lin_rand = linear_probe(noise[:300], rand_y[:300], noise[300:], rand_y[300:])
    assert knn_rand < 0.45 and lin_rand["acc"] < 0.45  # chance is 1/3
    assert lin_rand["train_acc"] > lin_rand["acc"]  # it fits the train noise, which does not transfer


def _reference_logistic(train_x, train_y, test_x, weight_decay, num_classes, iters=15):
    """Standardise with explicit per-dimension loops, then Newton's method (pseudo-inverse Hessian) in float64."""
    n, d = train_x.shape
    mean = torch.tensor([sum(train_x[:, j].tolist()) / n for j in range(d)])
    std = torch.tensor([math.sqrt(sum((v - mean[j].item()) ** 2 for v in train_x[:, j].tolist()) / n) for j in range(d)])
    xtr, xte = ((train_x - mean) / std).double(), ((test_x - mean) / std).double()

    def objective(theta: torch.Tensor) -> torch.Tensor:
        w, b = theta[: num_classes * d].reshape(num_classes, d), theta[num_classes * d :]
        return F.cross_entropy(xtr @ w.T + b, train_y) + 0.5 * weight_decay * w.pow(2).sum()

    theta = torch.zeros(num_classes * (d + 1), dtype=torch.float64)
    for _ in range(iters):  # the bias direction (all logits + c) is flat: the pseudo-inverse steps around it
        grad = torch.autograd.functional.jacobian(objective, theta)
        theta = theta - torch.linalg.pinv(torch.autograd.functional.hessian(objective, theta)) @ grad
    w, b = theta[: num_classes * d].reshape(num_classes, d), theta[num_classes * d :]
    return (xte @ w.T + b).argmax(1), float(objective(theta))


def test_linear_probe_matches_a_reference_and_is_deterministic() -> None:
    x, y = _clusters(90, 5, 3, seed=3, spread=1.0)  # overlapping clusters: the optimum is not trivial
    x = x * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0]) + 5.0  # badly scaled features
    train_x, train_y, test_x, test_y = x[:60], y[:60], x[60:], y[60:]
    out = linear_probe(train_x, train_y, test_x, test_y, weight_decay=0.05)
    ref_pred, ref_loss = _reference_logistic(train_x, train_y, test_x, 0.05, 3)
    assert out["loss"] == pytest.approx(ref_loss, rel=1e-3)
    assert out["acc"] == pytest.approx(float((ref_pred == test_y).float().mean()), abs=1.5 / len(test_y))
    assert 0.5 < out["acc"] < 1.0 and 0.0 <= out["mean_class_acc"] <= 1.0
    again = linear_probe(train_x, train_y, test_x, test_y, weight_decay=0.05)
    assert out == again
    # standardised with the train statistics: an affine rescaling of every dimension changes nothing
    scale, shift = torch.tensor([3.0, 0.5, 2.0, 1.0, 7.0]), torch.tensor([1.0, -2.0, 0.0, 4.0, 3.0])
    rescaled = linear_probe(train_x * scale + shift, train_y, test_x * scale + shift, test_y, weight_decay=0.05)
    assert rescaled["acc"] == out["acc"] and rescaled["loss"] == pytest.approx(out["loss"], rel=1e-4)


def test_linear_probe_validates_inputs() -> None:
    x, y = _clusters(20, 4, 2, seed=0)
    with pytest.raises(ValueError, match="test_y"):
        linear_probe(x, y, x, y[:5])
    with pytest.raises(ValueError, match="epochs"):
        linear_probe(x, y, x, y, epochs=0)


def test_mean_class_accuracy_weights_classes_equally() -> None:
    target = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2])
    pred = torch.tensor([0, 0, 0, 0, 0, 0, 0, 2])
    assert mean_class_accuracy(pred, target) == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    with pytest.raises(ValueError, match="mean_class_accuracy: pred"):
        mean_class_accuracy(pred[:5], target)
    with pytest.raises(ValueError, match="mean_class_accuracy: target"):
        mean_class_accuracy(pred, target[:, None])


def test_knn_accuracy_names_its_inputs() -> None:
    x, y = _clusters(20, 4, 2, seed=0)
    with pytest.raises(ValueError, match="knn_accuracy: test_x"):
        knn_accuracy(x, y, x[:, :, None], y)
    with pytest.raises(ValueError, match="knn_accuracy: test_y"):
        knn_accuracy(x, y, x, y[:5])


def _batches(n_batches: int = 2, dtype: torch.dtype = torch.uint8) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n_batches):
        video = torch.randint(0, 256, (2, 3, 4, 16, 16), generator=g, dtype=torch.uint8)
        out.append({"video": video if dtype == torch.uint8 else video.float() / 255, "label": torch.tensor([i, 1])})
    return out


def test_extract_features_converts_uint8_pools_and_restores_the_mode() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("r3d_tiny", width=4)
    encoder.train()
    x8, y = extract_features(encoder, _batches(dtype=torch.uint8))
    xf, yf = extract_features(encoder, _batches(dtype=torch.float32))
    assert encoder.training, "the encoder's train mode was not restored"
    assert x8.dtype == torch.float32 and y.dtype == torch.int64 and y.tolist() == [0, 1, 1, 1] == yf.tolist()
    assert x8.shape == (4, encoder.spec.dim)
    torch.testing.assert_close(x8, xf)  # uint8 / 255 == the float batch
    # eval mode: BatchNorm uses running statistics, so one clip's features do not depend on its batch mates
    single, _ = extract_features(encoder, [{"video": _batches()[0]["video"][:1], "label": torch.tensor([0])}])
    torch.testing.assert_close(single[0], x8[0], rtol=1e-4, atol=1e-5)
    grid, _ = extract_features(encoder, _batches(), pool="grid2")
    assert grid.shape == (4, 4 * encoder.spec.dim)
    # the 2x2 grid cells average back to the global mean
    torch.testing.assert_close(grid.reshape(4, 4, -1).mean(1), x8, rtol=1e-4, atol=1e-5)


def test_extract_features_pools_the_chosen_pyramid_stage() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("r3d_tiny", width=4).eval()
    batches = _batches()
    with torch.no_grad():
        pyramid = [encoder(b["video"].float() / 255).pyramid for b in batches]
    last, _ = extract_features(encoder, batches)
    torch.testing.assert_close(extract_features(encoder, batches, stage=3)[0], last)  # 4 stages: 3 is -1
    for stage in (0, 1, -2):
        x, _ = extract_features(encoder, batches, stage=stage)
        want = torch.cat([p[stage].mean(dim=(2, 3, 4)) for p in pyramid])
        assert x.shape == (4, pyramid[0][stage].shape[1]) and x.shape[1] < encoder.spec.dim
        torch.testing.assert_close(x, want, rtol=1e-4, atol=1e-5)
    grid, _ = extract_features(encoder, batches, stage=1, pool="grid2")
    assert grid.shape == (4, 4 * pyramid[0][1].shape[1])
    with pytest.raises(ValueError, match="stage 4 but the encoder's pyramid has 4 levels"):
        extract_features(encoder, batches, stage=4)


def test_extract_features_errors() -> None:
    encoder = build_encoder("r3d_tiny", width=4)
    with pytest.raises(ValueError, match="no 'label'"):
        extract_features(encoder, [{"video": torch.rand(1, 3, 4, 16, 16)}])
    with pytest.raises(ValueError, match="pool must be one of"):
        extract_features(encoder, _batches(), pool="max")
    with pytest.raises(ValueError, match="no batches"):
        extract_features(encoder, [])


def test_load_encoder_from_checkpoint(tmp_path) -> None:
    torch.manual_seed(3)
    trained = ResNet3D("r3d", width=4, layers=(1, 1, 1, 1))
    config = {"class_path": "stssl.encoders.ResNet3D", "init_args": {"arch": "r3d", "width": 4, "layers": [1, 1, 1, 1]}}
    state = {f"encoder.{k}": v for k, v in trained.state_dict().items()}
    state["tasks.0.head.weight"] = torch.zeros(2, 2)  # other modules' weights are ignored
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"encoder": config, "tasks": []}}, path)
    loaded = load_encoder_from_checkpoint(path)
    assert isinstance(loaded, ResNet3D)
    for (name, a), b in zip(trained.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # random_init: the architecture as built right after the caller's seed, not the weights
    torch.manual_seed(7)
    fresh = load_encoder_from_checkpoint(path, random_init=True)
    torch.manual_seed(7)
    direct = ResNet3D("r3d", width=4, layers=(1, 1, 1, 1))
    for (name, a), b in zip(direct.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(next(fresh.parameters()), next(trained.parameters()))
    # without a saved config, the caller gives the architecture; a wrong one is refused with the keys
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": state}, bare)
    with pytest.raises(ValueError, match="no saved encoder config"):
        load_encoder_from_checkpoint(bare)
    into = load_encoder_from_checkpoint(bare, encoder=ResNet3D("r3d", width=4, layers=(1, 1, 1, 1)))
    assert torch.equal(next(into.parameters()), next(trained.parameters()))
    with pytest.raises(ValueError, match="do not fit"):
        load_encoder_from_checkpoint(bare, encoder=ResNet3D("r3d", width=8, layers=(1, 1, 1, 1)))
    empty = tmp_path / "empty.ckpt"
    torch.save({"state_dict": {"head.weight": torch.zeros(1)}}, empty)
    with pytest.raises(ValueError, match="no 'encoder"):
        load_encoder_from_checkpoint(empty)


class _ConvBN(Encoder):
    """One conv + BatchNorm stage: its BN input is inspectable."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = EncoderSpec(channels=(4,), strides=((1, 1, 1),))
        self.conv = torch.nn.Conv3d(3, 4, 1)
        self.bn = torch.nn.BatchNorm3d(4, momentum=0.3)

    def forward_features(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.bn(self.conv(video)),)


def test_recalibrate_batchnorm_averages_the_batches() -> None:
    torch.manual_seed(0)
    encoder = _ConvBN().eval()
    batches = _batches(3)
    weights = [p.detach().clone() for p in encoder.parameters()]
    recalibrate_batchnorm(encoder, batches)
    with torch.no_grad():
        acts = [encoder.conv(b["video"].float() / 255) for b in batches]
    expected_mean = torch.stack([a.mean(dim=(0, 2, 3, 4)) for a in acts]).mean(0)
    expected_var = torch.stack([a.transpose(0, 1).reshape(4, -1).var(dim=1) for a in acts]).mean(0)  # unbiased
    torch.testing.assert_close(encoder.bn.running_mean, expected_mean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(encoder.bn.running_var, expected_var, rtol=1e-4, atol=1e-6)
    assert int(encoder.bn.num_batches_tracked) == 3
    assert encoder.bn.momentum == 0.3 and not encoder.training  # restored
    assert all(torch.equal(a, b) for a, b in zip(weights, encoder.parameters(), strict=True))
    recalibrate_batchnorm(encoder, batches, max_batches=1)
    torch.testing.assert_close(encoder.bn.running_mean, acts[0].mean(dim=(0, 2, 3, 4)), rtol=1e-4, atol=1e-6)
