"""The scikit-learn 8x8 digits as a masked-diffusion data set, a digit classifier, and sample metrics.

Data: ``sklearn.datasets.load_digits`` (1797 handwritten digits shipped with scikit-learn, no
network). Each image is 64 pixels with integer values ``0..16``, read row by row: a sequence of
``L = 64`` tokens over 17 clean tokens, plus the mask id ``17`` (``V = 18``). A fixed stratified
split (``random_state=0``) keeps 20% (360 images) out of training: the diffusion model and the
classifier see only the training split, and the held-out split is "the real data" every metric is
compared against.

Metrics (:func:`digit_metrics`), none of which needs the network:

* ``confidence``: mean over samples of ``max_c P(c | x)`` under an RBF-SVM classifier with sigmoid
  calibration, trained on the training split (about 98% held-out accuracy). Digit-like samples score
  close to the held-out real data; blurry or mixed strokes score lower.
* ``class_entropy``: the entropy (bits) of the histogram of predicted classes; ``log2(10) = 3.32``
  when the ten digits come out equally often (diversity; mode collapse lowers it).
* ``precision``: the fraction of samples that land on the real-data manifold, estimated as in
  Kynkaanniemi et al. 2019 ("Improved precision and recall", arXiv 1904.06991) in pixel space: inside
  at least one ball around a training image whose radius is the distance from that image to its
  ``k = 3``-rd nearest training neighbour. Noise and smudges score near 0 even where the classifier
  is confident; held-out real digits score about 0.9.
* ``nn_distance``: mean Euclidean distance (pixel units, ``0..16`` per pixel) from each sample to
  its nearest training image; ``copies``: the fraction of samples equal to a training image.
  A memorising model has ``nn_distance`` far below the held-out real data's and ``copies > 0``.

scikit-learn and matplotlib are optional (``pip install pit-sampler[demo]``): they are imported
when needed, with a clear message if missing.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

GRID = (8, 8)
LENGTH = GRID[0] * GRID[1]
NUM_LEVELS = 17  # pixel values 0..16
MASK_ID = NUM_LEVELS
VOCAB_SIZE = NUM_LEVELS + 1
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def _require(module: str, purpose: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        package = {"sklearn": "scikit-learn"}.get(module.split(".")[0], module.split(".")[0])
        raise ImportError(
            f"{purpose} needs {package}; install it with `pip install {package}` "
            f"(or `pip install pit-sampler[demo]`)"
        ) from err


def load_digits_tokens() -> tuple[Tensor, Tensor]:
    """All 1797 digits: ``(tokens int64 [1797, 64] in 0..16, labels int64 [1797])``."""
    datasets = _require("sklearn.datasets", "loading the digits data")
    data = datasets.load_digits()
    return torch.as_tensor(data.data).round().to(torch.int64), torch.as_tensor(data.target).to(torch.int64)


def digits_split() -> dict[str, Tensor]:
    """The fixed stratified 80/20 split: ``train_tokens``, ``train_labels``, ``test_tokens``, ``test_labels``."""
    model_selection = _require("sklearn.model_selection", "splitting the digits data")
    tokens, labels = load_digits_tokens()
    idx_train, idx_test = model_selection.train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=TEST_FRACTION,
        random_state=SPLIT_SEED,
        stratify=labels.numpy(),
    )
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    return {
        "train_tokens": tokens[idx_train],
        "train_labels": labels[idx_train],
        "test_tokens": tokens[idx_test],
        "test_labels": labels[idx_test],
    }


def _check_tokens(tokens: Tensor, name: str = "tokens") -> None:
    if not (isinstance(tokens, Tensor) and tokens.dim() == 2 and tokens.shape[1] == LENGTH):
        raise ValueError(f"{name} must be a tensor [N, {LENGTH}], got {tuple(getattr(tokens, 'shape', ()))}")
    if not (tokens.shape[0] >= 1):
        raise ValueError(f"{name} is empty")
    if tokens.is_floating_point() or not (0 <= int(tokens.min()) and int(tokens.max()) < NUM_LEVELS):
        raise ValueError(f"{name} must hold integer pixel values in 0..{NUM_LEVELS - 1} (no mask left)")


class DigitClassifier:
    """RBF support-vector classifier with sigmoid calibration (``CalibratedClassifierCV(SVC(),
    ensemble=False)``) on pixels scaled to ``[0, 1]``; deterministic for given data."""

    def __init__(self, tokens: Tensor, labels: Tensor):
        _check_tokens(tokens)
        svm = _require("sklearn.svm", "the digit classifier")
        calibration = _require("sklearn.calibration", "the digit classifier")
        self.model = calibration.CalibratedClassifierCV(svm.SVC(), ensemble=False)
        self.model.fit(tokens.numpy() / 16.0, labels.numpy())

    def predict_proba(self, tokens: Tensor) -> Tensor:
        """float64 ``[N, 10]``: ``P(class | image)``."""
        _check_tokens(tokens)
        return torch.as_tensor(self.model.predict_proba(tokens.cpu().numpy() / 16.0))


def digit_metrics(
    tokens: Tensor, classifier: DigitClassifier, train_tokens: Tensor, k: int = 3
) -> dict[str, float]:
    """``confidence``, ``class_entropy`` (bits), ``precision`` (``k``-NN balls), ``nn_distance`` and
    ``copies`` of ``tokens [N, 64]`` (definitions in the module docstring)."""
    _check_tokens(tokens)
    _check_tokens(train_tokens, "train_tokens")
    if not (isinstance(k, int) and 1 <= k < len(train_tokens)):
        raise ValueError(f"k must be an int in [1, {len(train_tokens)}), got {k!r}")
    probs = classifier.predict_proba(tokens)
    hist = torch.bincount(probs.argmax(1), minlength=10).to(torch.float64) / len(tokens)
    nz = hist[hist > 0]
    train = train_tokens.cpu().to(torch.float64)
    radius = torch.cdist(train, train).kthvalue(k + 1, dim=1).values  # k-th neighbour, self excluded
    dist = torch.cdist(tokens.cpu().to(torch.float64), train)
    nearest = dist.min(1).values
    return {
        "confidence": float(probs.max(1).values.mean()),
        "class_entropy": float(-(nz * nz.log2()).sum()),
        "precision": float((dist <= radius[None]).any(1).to(torch.float64).mean()),
        "nn_distance": float(nearest.mean()),
        "copies": float((nearest == 0).to(torch.float64).mean()),
    }


def save_digit_grid(panels: dict[str, Tensor], path: str | os.PathLike, columns: int | None = None) -> None:
    """One PNG with a panel per entry of ``panels`` (title -> tokens ``[N, 64]``), each a grid of
    8x8 images (black = 0, white = 16)."""
    _require("matplotlib", "saving the image grid")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("panels is empty")
    for title, tokens in panels.items():
        _check_tokens(tokens, f"panel {title!r}")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.8), squeeze=False)
    for ax, (title, tokens) in zip(axes[0], panels.items()):
        n = tokens.shape[0]
        cols = columns or math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        canvas = torch.full((rows * 9 + 1, cols * 9 + 1), float("nan"))
        for i in range(n):
            r, c = divmod(i, cols)
            canvas[1 + 9 * r : 9 + 9 * r, 1 + 9 * c : 9 + 9 * c] = tokens[i].cpu().reshape(8, 8).to(torch.float32)
        ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=16, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
