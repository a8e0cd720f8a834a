"""``load`` and the dataset registry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._cifar import load_cifar10
from ._digits import load_digits
from ._idx import load_idx_dataset


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset looks like, known without reading it.

    Attributes:
        name: canonical name accepted by :func:`load`.
        shape: one image, (H, W, C).
        num_classes: labels are 0 .. num_classes - 1.
        classes: human-readable class names, index = label.
        sizes: number of images in ("train", "test").
    """

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    classes: tuple[str, ...]
    sizes: tuple[int, int]


_DIGITS = tuple(str(i) for i in range(10))
_INFO = {
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10, _DIGITS, (60000, 10000)),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", (28, 28, 1), 10,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (60000, 10000),
    ),
    "cifar10": DatasetInfo(
        "cifar10", (32, 32, 3), 10,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        (50000, 10000),
    ),
    # UCI split; the scikit-learn fallback has 1437 / 360
    "digits": DatasetInfo("digits", (8, 8, 1), 10, _DIGITS, (3823, 1797)),
    "random": DatasetInfo("random", (8, 8, 1), 10, _DIGITS, (512, 256)),
}
_ALIASES = {"fashion": "fashion_mnist", "fmnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
            "cifar_10": "cifar10", "optdigits": "digits"}


def available() -> list[str]:
    """Names accepted by :func:`load`."""
    return list(_INFO)


def canonical_name(name: str) -> str:
    """The registry name for ``name`` (case, ``-`` vs ``_`` and a few aliases are forgiven)."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}; choose one of {available()}.")
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _INFO:
        raise ValueError(f"unknown dataset {name!r}; choose one of {available()}.")
    return key


def info(name: str) -> DatasetInfo:
    """Shape, class count and sizes of dataset ``name``, without reading any file."""
    return _INFO[canonical_name(name)]


def _random(split: str) -> tuple[np.ndarray, np.ndarray]:
    # ten fixed 8x8 prototypes plus noise: learnable, so a smoke test can see the loss fall
    protos = np.random.default_rng(1234).random((10, 8, 8))
    n = _INFO["random"].sizes[0 if split == "train" else 1]
    rng = np.random.default_rng(1 if split == "train" else 2)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = np.clip(protos[labels] + 0.25 * rng.standard_normal((n, 8, 8)), 0.0, 1.0)
    return np.round(images * 255).astype(np.uint8), labels.astype(np.uint8)


def load(name: str, split: str = "train", data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """Load a dataset from local files; never downloads anything.

    Files are searched in ``data_dir``, then ``$AMSIM_DATA_DIR``, then where ``scripts/install_data.sh`` puts them
    (see :mod:`amsim.data`). MNIST and Fashion-MNIST files are checked against their SHA-256.

    Arguments:
        name: "mnist", "fashion_mnist", "cifar10", "digits" (UCI 8x8 digits) or "random" (small synthetic set).
        split: "train" or "test".
        data_dir: a directory searched before the others (str or Path), or None.

    Returns:
        (images, labels): images float32 of shape (N, H, W, C) with values in [0, 1]; labels int32 of shape (N,).
    """
    key = canonical_name(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if key in ("mnist", "fashion_mnist"):
        images, labels = load_idx_dataset(key, split, data_dir)
        scale = 255.0
    elif key == "cifar10":
        images, labels = load_cifar10(split, data_dir)
        scale = 255.0
    elif key == "digits":
        images, labels = load_digits(split, data_dir)
        scale = 16.0
    else:
        images, labels = _random(split)
        scale = 255.0
    x = images.astype(np.float32)
    x /= np.float32(scale)
    if x.ndim == 3:
        x = x[..., None]
    return x, labels.astype(np.int32)
