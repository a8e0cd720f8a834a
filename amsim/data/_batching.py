"""Mini-batch iteration and per-channel normalisation."""

from __future__ import annotations

import numbers

import numpy as np


class Batches:
    """Iterator over ``(x_batch, y_batch)`` pairs; ``len()`` gives the number of batches one pass yields.

    Built by :func:`batches`. Each ``iter()`` starts a new pass with a fresh permutation drawn from ``rng``.
    """

    def __init__(self, x, y, batch_size, rng, shuffle, drop_remainder):
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.rng = rng
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.x)
        order = self.rng.permutation(n) if self.shuffle else None
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None:
                yield self.x[lo:hi], self.y[lo:hi]
            else:
                idx = np.sort(order[lo:hi])  # sorted gathers are faster; the batch's contents are what is random
                yield self.x[idx], self.y[idx]


def batches(x, y, batch_size: int, rng=None, shuffle: bool = True, drop_remainder: bool = False) -> Batches:
    """Split a dataset into mini-batches.

    Arguments:
        x: inputs, indexed along axis 0 (NumPy array).
        y: labels, same length as ``x``.
        batch_size: examples per batch (positive int).
        rng: a ``numpy.random.Generator`` or an int seed; required when ``shuffle`` is true.
        shuffle: draw a new random order on every pass.
        drop_remainder: skip the last, smaller batch (keeps every batch the same shape, so jitted code compiles
            once); otherwise it is yielded.

    Returns:
        A re-iterable :class:`Batches`; ``len()`` is the number of batches per pass.
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}; pass matching arrays.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if shuffle:
        if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
            rng = np.random.default_rng(int(rng))
        elif not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"shuffle=True needs rng=numpy.random.default_rng(seed) or an int seed, got {type(rng).__name__}."
            )
    if drop_remainder and len(x) < batch_size:
        raise ValueError(
            f"drop_remainder=True with {len(x)} examples and batch_size={batch_size} yields no batch; "
            f"lower batch_size or pass drop_remainder=False."
        )
    return Batches(x, y, int(batch_size), rng, bool(shuffle), bool(drop_remainder))


def channel_stats(x) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of NHWC images (accumulated in float64).

    Arguments:
        x: array of shape (..., C).

    Returns:
        (mean, std), float32 arrays of shape (C,).
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"channel_stats expects (..., C) images, got shape {x.shape}.")
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    return mean.astype(np.float32), std.astype(np.float32)


def normalize(x, mean, std) -> np.ndarray:
    """``(x - mean) / std`` per channel, as float32.

    Arguments:
        x: images (..., C).
        mean, std: per-channel statistics of shape (C,), e.g. from :func:`channel_stats` on the training split.

    Returns:
        A new float32 array shaped like ``x``.
    """
    x = np.asarray(x, dtype=np.float32)
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    if mean.shape != (x.shape[-1],) or std.shape != (x.shape[-1],):
        raise ValueError(f"mean and std must have shape ({x.shape[-1]},) for images {x.shape}, "
                         f"got {mean.shape} and {std.shape}.")
    if not np.all(std > 0):
        raise ValueError(f"std must be positive in every channel, got {std}; a constant channel cannot be normalised.")
    return (x - mean) / std
