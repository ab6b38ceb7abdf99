"""Few-shot probing of frozen features: the paper's second measure of a representation.

The paper (sec. 4.1, Table 2, Figs. 3-4) scores pre-trained models two ways: by fine-tuning, and by
a *few-shot linear probe*, a regularised least-squares regression fitted in closed form from
frozen features of k images per class to {-1, 1}^K targets. It is cheap (one forward pass over
the data, then linear algebra), so it can score a model many times.

The fit here, :func:`ridge_fit`, standardises the features (centre, then unit spread per
dimension, so one grid of penalties suits any feature scale), fits an unpenalised intercept and
solves through one SVD of the k-shot features, which gives the weights *and* the leave-one-out
predictions for every penalty in the grid at the cost of one fit (exact for the regression; the
standardisation is the one of all k-shot images). The penalty is chosen by
leave-one-out accuracy on the k-shot images alone (ties: the lower leave-one-out squared error),
never on the test split. With one shot per class, leaving an image out removes its class, so
leave-one-out accuracy is 0 for every penalty and the squared error alone decides.

:func:`knn` is the second probe on the same features: cosine similarity, the 20 nearest training
images (fewer when there are fewer), votes weighted by exp(similarity / 0.07), the rule
DINO (Caron et al., 2021) made the usual k-NN evaluation of self-supervised ViTs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .data.dataset import per_class_index, smallest_class
from .errors import DataError

# Penalties tried (times the number of k-shot images, so that the grid means the same at 1 and
# 25 shots): 2^-10 ... 2^14, every power of 4.
L2_GRID: tuple[float, ...] = tuple(2.0**i for i in range(-10, 15, 2))
KNN_K = 20
KNN_TEMPERATURE = 0.07


@dataclass
class RidgeProbe:
    """A fitted probe: standardisation, weights, intercept, and how the penalty was chosen.

    What :func:`ridge_fit` returns; its :meth:`scores` of features (N, D) are (N, K), and their
    argmax is the predicted class.
    """

    mean: torch.Tensor  # (D,)
    scale: torch.Tensor  # (D,)
    weight: torch.Tensor  # (D, K)
    bias: torch.Tensor  # (K,)
    l2: float
    loo_accuracy: dict[float, float] = field(default_factory=dict)
    loo_error: dict[float, float] = field(default_factory=dict)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N, K) regression outputs; the argmax is the predicted class."""
        x = (features.double() - self.mean) / self.scale
        return x @ self.weight + self.bias

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.scores(features).argmax(1) == labels).double().mean())


def standardize(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centred and scaled features, mean, scale); dimensions that do not vary keep scale 1."""
    x = features.double()
    mean = x.mean(0)
    scale = x.std(0, unbiased=False)
    scale = torch.where(scale > 1e-8, scale, torch.ones_like(scale))
    return (x - mean) / scale, mean, scale


def targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels -> {-1, 1} one-hot rows: +1 for the class, -1 elsewhere."""
    return 2.0 * torch.nn.functional.one_hot(labels, num_classes).double() - 1.0


def ridge_fit(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2_grid: Sequence[float] = L2_GRID
) -> RidgeProbe:
    """Closed-form ridge regression, the penalty chosen by leave-one-out on these images alone.

    With X the standardised, centred features and Y the centred targets, for penalty ``lam``:
    W = V diag(s / (s^2 + lam)) U^T Y from the thin SVD X = U S V^T, and the hat matrix
    H = U diag(s^2 / (s^2 + lam)) U^T gives each image's leave-one-out prediction
    y_i - (y_i - yhat_i) / (1 - h_ii) without refitting. The intercept is the targets' mean
    (unpenalised, as scikit-learn's ``Ridge(fit_intercept=True)``). The grid is in units of the
    number of images, so ``lam = l2 * n``.
    """
    x, mean, scale = standardize(features)
    y_raw = targets(labels, num_classes)
    y_mean = y_raw.mean(0)
    y = y_raw - y_mean
    n = x.shape[0]
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    loo_acc: dict[float, float] = {}
    loo_err: dict[float, float] = {}
    # The centring uses the mean of all n images, so each hat-matrix diagonal gets the mean's 1/n.
    for l2 in l2_grid:
        lam = l2 * n
        shrink = s.square() / (s.square() + lam)
        fitted = u @ (shrink[:, None] * uty) + y_mean
        h = (u.square() * shrink).sum(1) + 1.0 / n
        loo = y_raw - (y_raw - fitted) / (1.0 - h).clamp_min(1e-12)[:, None]
        loo_acc[l2] = float((loo.argmax(1) == labels).double().mean())
        loo_err[l2] = float((loo - y_raw).square().mean())
    best = min(l2_grid, key=lambda l2: (-loo_acc[l2], loo_err[l2]))
    w = vh.T @ ((s / (s.square() + best * n))[:, None] * uty)
    return RidgeProbe(mean, scale, w, y_mean, best, loo_acc, loo_err)


def knn(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk: int = 2048,
) -> torch.Tensor:
    """Predicted classes of ``test_features`` by a similarity-weighted vote of the k nearest
    training images (cosine similarity of features centred on the training mean)."""
    mean = train_features.double().mean(0)
    train = torch.nn.functional.normalize(train_features.double() - mean, dim=1)
    k = min(k, len(train))
    predictions = []
    for part in test_features.split(chunk):
        test = torch.nn.functional.normalize(part.double() - mean, dim=1)
        sim, index = (test @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(part), num_classes, dtype=torch.float64)
        votes.scatter_add_(1, train_labels[index], (sim / temperature).exp())
        predictions.append(votes.argmax(1))
    return torch.cat(predictions)


@dataclass
class ShotResult:
    """One (shots, seed) probe: its accuracies and the penalty chosen."""

    shots: int
    seed: int
    ridge: float
    knn: float
    l2: float


def few_shot(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    shots: Sequence[int],
    seeds: Sequence[int],
    class_names: Sequence[str] | None = None,
) -> list[ShotResult]:
    """Every (shots, seed): draw ``shots`` training images per class with that seed, fit the ridge
    probe and the k-NN on them, and score both on the whole test split."""
    check_shots(train_labels, num_classes, shots, class_names)
    results = []
    for k in shots:
        for seed in seeds:
            index = per_class_index(train_labels, num_classes, k, seed)
            x, y = train_features[index], train_labels[index]
            probe = ridge_fit(x, y, num_classes)
            knn_acc = float((knn(x, y, test_features, num_classes) == test_labels).double().mean())
            results.append(ShotResult(k, seed, probe.accuracy(test_features, test_labels), knn_acc, probe.l2))
    return results


DEFAULT_SHOTS = (1, 5, 10, 25)  # the paper's few-shot counts (sec. 4.1, Figure 4: 1, 5, 10, 25)


def clip_shots(
    labels: torch.Tensor, num_classes: int, shots: Sequence[int], class_names: Sequence[str] | None = None
) -> tuple[list[int], str | None]:
    """``shots`` with each count above the smallest class's image count lowered to it, and a
    sentence saying so (None when nothing changed): for the default counts, which the user did
    not choose, on a folder whose smallest class has 14 images. Counts the user gave are checked
    instead (:func:`check_shots`)."""
    smallest, count = smallest_class(labels, num_classes)
    clipped = sorted({min(s, count) for s in shots})
    if clipped == sorted(shots):
        return clipped, None
    name = class_names[smallest] if class_names else str(smallest)
    shown = ",".join(map(str, clipped))
    note = f"--shots {shown}, not the default {','.join(map(str, shots))}: class {name!r} has {count} training images"
    return clipped, note


def check_shots(
    labels: torch.Tensor, num_classes: int, shots: Sequence[int], class_names: Sequence[str] | None = None
) -> None:
    """A one-line error when some class has fewer training images than the largest shot count."""
    smallest, count = smallest_class(labels, num_classes)
    if shots and max(shots) > count:
        name = class_names[smallest] if class_names else str(smallest)
        raise DataError(
            f"--shots {max(shots)} asks for {max(shots)} training images per class, but class {name!r} "
            f"has {count}; give at most {count}"
        )
    if shots and min(shots) < 1:
        raise DataError(f"--shots must be at least 1, got {min(shots)}")


def summarize(results: Sequence[ShotResult]) -> list[dict[str, float | int]]:
    """Per shot count: mean and standard deviation over seeds of both probes' accuracies."""
    rows = []
    for k in sorted({r.shots for r in results}):
        group = [r for r in results if r.shots == k]
        row: dict[str, float | int] = {"shots": k, "seeds": len(group)}
        for name in ("ridge", "knn"):
            values = [getattr(r, name) for r in group]
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
            row[f"{name}_mean"] = mean
            row[f"{name}_std"] = math.sqrt(var)
        rows.append(row)
    return rows
