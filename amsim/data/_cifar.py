"""CIFAR-10, python version (``cifar-10-batches-py``), read with an unpickler that can only build plain data."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ._errors import DatasetCorruptError, DatasetNotFoundError
from ._sources import candidate_dirs

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
_SUBDIRS = ("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10", "cifar-10")

# The callables a numpy array pickle needs, taken from numpy itself so no deprecated module path is imported.
_probe = np.zeros(1, dtype=np.uint8)
_RECONSTRUCT = _probe.__reduce__()[0]
_FROMBUFFER = _probe.__reduce_ex__(5)[0]
_SCALAR = np.float32(0).__reduce__()[0]
del _probe

_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("codecs").encode,  # how Python 3 writes bytes in protocol 2
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _RECONSTRUCT
    _ALLOWED[(_mod, "scalar")] = _SCALAR
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _FROMBUFFER
for _mod in ("builtins", "__builtin__"):
    for _name, _obj in (("dict", dict), ("list", list), ("tuple", tuple), ("bytes", bytes), ("str", str),
                        ("int", int), ("bytearray", bytearray)):
        _ALLOWED[(_mod, _name)] = _obj


class _DataOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except the plain-data constructors above, so a crafted file cannot run code."""

    def __init__(self, file, path):
        super().__init__(file, encoding="bytes")  # Python 2 strings stay bytes, as the CIFAR docs expect
        self._path = path

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DatasetCorruptError(
                f"{self._path} refers to {module}.{name}, which a CIFAR-10 batch never contains; refusing to load it. "
                f"Use the original python-version batch files (cifar-10-python.tar.gz)."
            ) from None


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as uint8 images (N, 32, 32, 3) and uint8 labels (N,)."""
    with open(path, "rb") as f:
        try:
            obj = _DataOnlyUnpickler(f, path).load()
        except DatasetCorruptError:
            raise
        except Exception as exc:  # truncated or not a pickle at all
            reason = f"{type(exc).__name__}: {exc}"
            raise DatasetCorruptError(f"{path} is not a readable CIFAR-10 batch ({reason}).") from None
    if not isinstance(obj, dict):
        raise DatasetCorruptError(f"{path} should hold a dict, found {type(obj).__name__}.")
    get = lambda key: obj.get(key.encode(), obj.get(key))  # noqa: E731  (Python 2 files have bytes keys)
    data, labels = get("data"), get("labels")
    if data is None or labels is None:
        extra = " (this looks like CIFAR-100, which has 'fine_labels')" if get("fine_labels") is not None else ""
        raise DatasetCorruptError(f"{path} lacks the 'data' or 'labels' entry{extra}.")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetCorruptError(
            f"{path}: 'data' should be uint8 of shape (N, 3072), found {data.dtype} {data.shape}."
        )
    if labels.shape != (data.shape[0],) or labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetCorruptError(f"{path}: 'labels' should be {data.shape[0]} integers in 0..9.")
    # rows are channel-major: 1024 red, then green, then blue values
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.uint8)


def load_cifar10(split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) uint8 for the given split."""
    names = TRAIN_FILES if split == "train" else TEST_FILES
    dirs = candidate_dirs(data_dir, _SUBDIRS, None)
    for d in dirs:
        present = [(d / n).is_file() for n in names]
        if all(present):
            parts = [read_batch(d / n) for n in names]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        if any(present):
            missing = ", ".join(n for n, ok in zip(names, present) if not ok)
            raise DatasetNotFoundError(f"CIFAR-10 in {d} is incomplete: {missing} missing. Extract the whole archive.")
    searched = "\n  ".join(str(d) for d in dirs) or "(nothing: neither data_dir nor AMSIM_DATA_DIR is set)"
    raise DatasetNotFoundError(
        f"CIFAR-10 {split} files ({', '.join(names)}) were not found. Searched:\n  {searched}\n"
        f"Fix: extract cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) so that "
        f"<dir>/cifar-10-batches-py/ holds data_batch_1..5 and test_batch, then pass data_dir=<dir> or set "
        f"AMSIM_DATA_DIR=<dir>. amsim never downloads it."
    )
