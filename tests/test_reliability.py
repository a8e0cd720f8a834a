"""Untrusted files, crashes and faults: crafted inputs give one clear error (never a crash, never unbounded memory,
never code run), failed writes keep the old file, the CLI shows no tracebacks, concurrency is safe."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import amsim
from amsim import cli, data, interop
from amsim import nn as ann

ROOT = Path(__file__).resolve().parents[1]
HAVE_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang"))
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler on this machine")
F = np.float32


def run_child(code: str, *, as_limit_gb: float | None = 3.0, timeout=300, env=None):
    """Run ``code`` in a fresh Python with an address-space limit; returns (returncode, stdout+stderr, peak RSS
    in MB as the child measured it, or None if it died before reporting)."""
    prelude = ("import resource, json, sys\n"
               + (f"resource.setrlimit(resource.RLIMIT_AS, ({int(as_limit_gb * 2**30)}, {int(as_limit_gb * 2**30)}))\n"
                  if as_limit_gb else ""))
    epilogue = "\nfrom tests.fuzz_loaders import peak_rss_mb\nprint('PEAK_RSS_MB', peak_rss_mb())\n"
    proc = subprocess.run([sys.executable, "-c", prelude + code + epilogue], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    out = proc.stdout + proc.stderr
    peak = next((float(line.split()[1]) for line in out.splitlines() if line.startswith("PEAK_RSS_MB")), None)
    return proc.returncode, out, peak


# ---- CIFAR-10 -------------------------------------------------------------------------------------------------
_RECONSTRUCT = np.zeros(1).__reduce__()[0]


class _Dtype:
    def __init__(self, state, code="u1"):
        self.state, self.code = state, code

    def __reduce__(self):
        return (np.dtype, (self.code, False, True), self.state)


class _Array:
    def __init__(self, shape, dtype_state, raw, code="u1"):
        self.shape, self.dtype, self.raw = shape, _Dtype(dtype_state, code), raw

    def __reduce__(self):
        return (_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, self.shape, self.dtype, False, self.raw))


class _Call:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _batch_pickle(data_node, n=2, labels=None):
    import pickle

    labels = [1] * n if labels is None else labels
    return pickle.dumps({b"batch_label": b"x", b"labels": labels, b"data": data_node, b"filenames": [b"a"] * n},
                        protocol=2)


def _cifar_dir(tmp_path, test_batch: bytes):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(test_batch)
    return tmp_path


@pytest.mark.parametrize("case", ["object_dtype_flags", "void_labels", "bytes_bomb", "huge_shape"])
def test_crafted_cifar_batch_is_refused_without_crash_or_memory(tmp_path, case):
    n = 2
    if case == "object_dtype_flags":  # only numpy globals; flags make the labels' dtype hold object pointers
        good = _Array((n, 3072), (3, "|", None, None, None, -1, -1, 0), b"\x00" * (n * 3072))
        blob = _batch_pickle(good, n, labels=_Array((n,), (3, "|", None, None, None, -1, -1, 63), b"\x11" * (8 * n)))
    elif case == "void_labels":  # labels of a structured void dtype: NumPy's own TypeError leaked before
        good = _Array((n, 3072), (3, "|", None, None, None, -1, -1, 0), b"\x00" * (n * 3072))
        blob = _batch_pickle(good, n, labels=_Array((n,), (3, "|", None, None, None, 8, 8, 1), b"\x11" * 16, "V8"))
    elif case == "bytes_bomb":  # a few hundred bytes asking builtins.bytes for 1.7 GB
        blob = _batch_pickle(_Call(bytes, (1_700_000_000,)), n)
    else:
        blob = _batch_pickle(_Array((10**9, 3072), (3, "|", None, None, None, -1, -1, 0), b"\x00" * 64), n)
    root = _cifar_dir(tmp_path, blob)
    rc, out, peak = run_child("from amsim import data\n"
                              "try:\n"
                              f"    data.load('cifar10', 'test', data_dir={str(root)!r})\n"
                              "    print('LOADED')\n"
                              "except data.DatasetCorruptError as e:\n"
                              "    print('REFUSED', e)\n"
                              "    x = 1\n")
    assert rc == 0 and "REFUSED" in out, out[-2000:]  # no SIGSEGV, no MemoryError, a clear error
    assert peak is not None and peak < 600, peak  # amsim and NumPy's own footprint, not the bomb's


def _py2_cifar_pickle(images: np.ndarray, labels) -> bytes:
    """What Python 2's cPickle wrote for the real batches: BINSTRING bytes, numpy.core names, int dtype flags."""
    def s(b):  # SHORT_BINSTRING / BINSTRING
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    n = images.shape[0]
    out = [b"\x80\x02}q\x01(", s(b"batch_label"), s(b"testing batch 1 of 1"), s(b"labels"), b"]q\x02("]
    out += [b"K" + bytes([v]) for v in labels] + [b"e", s(b"data")]
    out += [b"cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85", s(b"b"), b"\x87Rq\x05(K\x01",
            b"M" + struct.pack("<H", n), b"M\x00\x0c\x86", b"cnumpy\ndtype\nq\x06", s(b"u1"), b"K\x00K\x01\x87Rq\x07",
            b"(K\x03", s(b"|"), b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89", s(images.tobytes()), b"tb"]
    out += [s(b"filenames"), b"]q\x08(", *[s(b"f.png") for _ in range(n)], b"eu."]
    return b"".join(out)


def test_cifar_python2_layout_loads(tmp_path, rng):
    raw = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    root = _cifar_dir(tmp_path, _py2_cifar_pickle(raw, [4, 0, 9]))
    x, y = data.load("cifar10", "test", data_dir=root)
    assert y.tolist() == [4, 0, 9]
    np.testing.assert_array_equal(np.round(x * 255).astype(np.uint8), raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


# ---- decompression bombs ----------------------------------------------------------------------------------------
def _zip_member(zf, name, nbytes, header=b""):
    with zf.open(name, "w", force_zip64=True) as fh:
        fh.write(header)
        chunk = b"\x00" * (1 << 20)
        for _ in range(nbytes >> 20):
            fh.write(chunk)


def test_table_npz_bomb_is_refused_before_inflating(tmp_path):
    good = amsim.multipliers.mbm(3).save(tmp_path / "good.npz")
    with zipfile.ZipFile(good) as zf:
        meta = zf.read("metadata.npy")
    bomb = tmp_path / "bomb.npz"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((8192, 8192), np.float32))
    import io

    hbuf = io.BytesIO()
    np.lib.format.write_array_header_1_0(hbuf, header)
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        _zip_member(zf, "values.npy", 256 << 20, hbuf.getvalue())
        zf.writestr("metadata.npy", meta)
    assert bomb.stat().st_size < 2 << 20
    rc, out, peak = run_child("import amsim\n"
                              "try:\n"
                              f"    amsim.Multiplier.load({str(bomb)!r})\n"
                              "except amsim.InvalidTableError as e:\n"
                              "    print('REFUSED', e)\n")
    assert rc == 0 and "REFUSED" in out and "inflate" in out, out[-2000:]
    assert peak < 600, peak


def test_gzip_idx_bomb_is_refused_within_the_files_size(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(folder / f"{stem}.gz", "wb", compresslevel=1) as fh:
            chunk = b"\x00" * (1 << 20)
            for _ in range(300):  # 300 MB of zeros, far more than the 7.8 MB the real file holds
                fh.write(chunk)
    rc, out, peak = run_child("from amsim import data\n"
                              "try:\n"
                              f"    data.load('mnist', 'test', data_dir={str(tmp_path)!r})\n"
                              "except data.DatasetCorruptError as e:\n"
                              "    print('REFUSED', e)\n")
    assert rc == 0 and "REFUSED" in out and "decompresses to more than" in out, out[-2000:]
    assert peak < 600, peak


# ---- C models -------------------------------------------------------------------------------------------------
@needs_cc
def test_from_c_file_name_cannot_inject_code(tmp_path):
    evil = tmp_path / 'm.c"\n#define mul8u_t(a, b) 0\n#x.c'
    evil.write_text("#include <stdint.h>\nuint16_t mul8u_t(uint8_t a, uint8_t b) { return a * b; }\n")
    mult = interop.from_c(evil, "mul8u_t", bits=8, signed=False)
    np.testing.assert_array_equal(mult.table.values, amsim.multipliers.exact_int(8, signed=False).table.values)


@needs_cc
def test_from_c_crash_and_hang_are_contained():
    crash = "int f(int a, int b) { volatile int *p = 0; if (a == 3 && b == 5) return *p; return a * b; }"
    with pytest.raises(interop.CModelError, match="SIGSEGV"):
        interop.from_c(crash, "f", bits=4, signed=False)
    hang = "int f(int a, int b) { while (a == 7) {} return a * b; }"
    with pytest.raises(interop.CModelError, match="did not finish .* within 2"):
        interop.from_c(hang, "f", bits=4, signed=False, timeout=2)
    leave = "#include <stdlib.h>\nint f(int a, int b) { if (a == 2) exit(7); return a * b; }"
    with pytest.raises(interop.CModelError, match="exited with status 7"):
        interop.from_c(leave, "f", bits=4, signed=False)
    # and the process goes on: a good model still tabulates
    assert interop.from_c("int f(int a, int b) { return a * b; }", "f", bits=4, signed=False).table.values[3, 5] == 15


# ---- atomic writes ------------------------------------------------------------------------------------------------
def _full_disk_child(setup: str, write: str, target: Path):
    """Run ``write`` with file sizes limited (as on a full disk) after ``setup`` wrote ``target`` unlimited."""
    code = (f"{setup}\n"
            f"before = open({str(target)!r}, 'rb').read()\n"
            "import resource, signal\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))\n"
            "try:\n"
            f"    {write}\n"
            "    print('WROTE')\n"
            "except amsim.AmsimError as e:\n"
            "    print('FAILED', type(e).__name__, e)\n"
            f"print('INTACT', open({str(target)!r}, 'rb').read() == before)\n"
            f"import os; print('LEFTOVERS', [n for n in os.listdir({str(target.parent)!r}) if n.endswith('.tmp')])\n")
    rc, out, _ = run_child(code, as_limit_gb=None)
    assert rc == 0, out[-2000:]
    return out


@pytest.mark.parametrize("writer", ["table", "approxtrain", "c_header", "tfapprox"])
def test_failed_write_keeps_the_previous_file(tmp_path, writer):
    target = tmp_path / {"table": "t.npz", "approxtrain": "T_7.bin", "c_header": "t.h", "tfapprox": "t.bin"}[writer]
    first, second = {"table": ("amsim.multipliers.mbm(3)", "amsim.multipliers.mbm(9)"),
                     "approxtrain": ("amsim.multipliers.exact_truncated(3)", "amsim.multipliers.exact_truncated(7)"),
                     "c_header": ("amsim.multipliers.exact_int(2)", "amsim.multipliers.exact_int(8)"),
                     "tfapprox": ("amsim.multipliers.exact_int(8, signed=False)",
                                  "amsim.multipliers.drum(k=3, bits=8, signed=False)")}[writer]
    save = {"table": "{m}.save(p)", "approxtrain": "interop.save_approxtrain({m}, p)",
            "c_header": "interop.save_c_header({m}, p)", "tfapprox": "interop.save_tfapprox({m}, p)"}[writer]
    setup = (f"import amsim\nfrom amsim import interop\np = {str(target)!r}\n"
             + save.format(m=first).replace("(p)", "(p)") + "\n")
    if writer == "tfapprox":  # a 128 KiB file: start from an empty one so the limit bites on the new write
        setup = f"import amsim\nfrom amsim import interop\np = {str(target)!r}\nopen(p, 'wb').write(b'old')\n"
    out = _full_disk_child(setup, save.format(m=second), target)
    assert "FAILED WriteError" in out and str(target.name) in out and "unchanged" in out, out
    assert "INTACT True" in out and "LEFTOVERS []" in out, out


def test_second_run_into_the_same_out_keeps_the_first(tmp_path):
    common = ["--model", "lenet300", "--dataset", "digits", "--epochs", "1", "--train-limit", "128", "--test-limit",
              "64", "--batch-size", "64", "--out", str(tmp_path), "--no-progress", "--multiplier", "fp32"]
    assert cli.main(["train", *common]) == 0
    assert cli.main(["train", "--seed", "1", *common]) == 0
    doc = json.loads((tmp_path / "lenet300-digits.json").read_text())
    assert sorted((r["label"], r["config"]["seed"]) for r in doc["runs"]) == [("fp32", 0), ("fp32", 1)]
    csv_rows = (tmp_path / "lenet300-digits.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + 2
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2


# ---- the CLI: one line, a non-zero exit code, no traceback ---------------------------------------------------
def _cli(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys, monkeypatch):
    good = amsim.multipliers.mbm(3).save(tmp_path / "t.npz")
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    mod = tmp_path / "mine.py"
    mod.write_text("import amsim\n\n@amsim.multiplier(mantissa_bits=3)\ndef ok(x, y):\n    return x * y\n")
    afile = tmp_path / "a_file"
    afile.write_text("x")
    cases = [
        (["inspect", str(truncated)], "not a readable amsim table file"),
        (["inspect", f"{mod}:missing"], "has no 'missing'"),
        (["train", "--model", "lenet300", "--dataset", "digits", "--epochs", "1", "--out", str(afile),
          "--no-progress"], "is a file"),
        (["inspect", str(tmp_path / "nope.npz")], "nope.npz"),
    ]
    for argv, expected in cases:
        rc, out = _cli(capsys, *argv)
        assert rc == 2 and expected in out and "Traceback" not in out, (argv, out)
        assert out.count("amsim: error:") == 1
    with pytest.raises(amsim.InvalidTableError):
        cli.main(["inspect", str(truncated), "--debug"])  # --debug lets the exception through


def test_cli_corrupted_checkpoint_names_the_file_and_no_resume(tmp_path, capsys):
    common = ["train", "--model", "lenet300", "--dataset", "digits", "--multiplier", "mitchell4", "--epochs", "1",
              "--train-limit", "128", "--test-limit", "64", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(common) == 0
    (ckpt,) = (tmp_path / "checkpoints").iterdir()
    ckpt.write_bytes(b"\x93\x00garbage")
    rc, out = _cli(capsys, *common)
    assert rc == 2 and ckpt.name in out and "--no-resume" in out and "Traceback" not in out
    assert _cli(capsys, *common, "--no-resume")[0] == 0


def test_cli_ctrl_c_keeps_the_checkpoint_and_says_so(tmp_path, capsys, monkeypatch):
    import amsim.data as amsim_data

    real = amsim_data.batches
    calls = {"n": 0}

    def interrupted(*a, **k):
        if k.get("shuffle"):  # a training epoch (evaluation batches are not shuffled)
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(amsim_data, "batches", interrupted)
    common = ["train", "--model", "lenet300", "--dataset", "digits", "--multiplier", "fp32", "--epochs", "3",
              "--train-limit", "128", "--test-limit", "64", "--out", str(tmp_path), "--no-progress"]
    rc, out = _cli(capsys, *common)
    assert rc == 130 and "interrupted; checkpoint of epoch 1 kept" in out and "rerun" in out and "Traceback" not in out
    monkeypatch.setattr(amsim_data, "batches", real)
    rc, out = _cli(capsys, *common)
    assert rc == 0 and "resuming run" in out and "after epoch 1 of 3" in out


# ---- smaller leaks ------------------------------------------------------------------------------------------------
def test_bad_out_arguments_are_clear_errors(rng):
    m = amsim.multipliers.mbm(7)
    a, b = rng.standard_normal((4, 3)).astype(F), rng.standard_normal((3, 5)).astype(F)
    ro = np.empty((4, 5), F)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        amsim.matmul(a, b, m, out=ro)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        amsim.matmul(a, b, m, out=[[0.0] * 5] * 4)
    ro3 = np.zeros((4, 3), F)
    ro3.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        amsim.multiply(a, a, m, out=ro3)


@pytest.mark.parametrize("model", [np.multiply, max, type("C", (), {"__call__": lambda self, x, y: x * y})()],
                         ids=["ufunc", "builtin", "callable"])
def test_non_function_models_are_refused(model):
    with pytest.raises(TypeError, match="must be a Python function"):
        amsim.multiplier(model, mantissa_bits=3)
    with pytest.raises(TypeError, match="must be a Python function"):
        amsim.int_multiplier(model, bits=4)


@pytest.mark.parametrize("values", [np.array([["a", "b"], ["c", "d"]]), np.full((4, 4), None, dtype=object)])
def test_from_table_refuses_non_numeric_dtypes(values):
    with pytest.raises(amsim.InvalidTableError, match="dtype"):
        amsim.Multiplier.from_table(values, name="x")


@pytest.mark.parametrize("text, match", [
    ("const int lut[2][2] = {{1, 09}, {2, 3}};", "not a valid C integer literal"),
    ("const int lut[2][2] = {{1, 99999999999999999999999}, {2, 3}};", "beyond 64 bits"),
    ("const int lut[2][8] = {{0,0,0,0,0,0,0,0},{0,0,0,0,0,0,0,0}};", r"declared \[2\]\[8\]"),
    ("const int lut[4][4] = {{1, 2}, {3, 4}};", "holds 4 values"),
])
def test_c_header_parser_errors(text, match):
    with pytest.raises(amsim.InvalidTableError, match=match):
        interop.load_c_header(text)


def test_c_header_binary_file_is_an_error(tmp_path):
    p = tmp_path / "lut.h"
    p.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(amsim.InvalidTableError, match="not a text"):
        interop.load_c_header(p)


def test_jax_ops_raise_lax_style_errors():
    import jax.numpy as jnp
    from jax import lax

    m = amsim.multipliers.mbm(7)
    x, y = jnp.ones((2, 3)), jnp.ones((3, 4))
    for dn in [(((1,), (1,)), ((), ())), (((2,), (0,)), ((), ())), (((1,), (0,)), ((0,), (0,)))]:
        with pytest.raises(TypeError) as want:
            lax.dot_general(x, y, dn)
        with pytest.raises(TypeError) as got:
            ann.dot_general(m)(x, y, dn)
        assert str(got.value) == str(want.value)
    xi, w = jnp.ones((1, 5, 5, 1)), jnp.ones((3, 3, 1, 1))
    conv = ann.conv_general_dilated(m)
    spec = ("NHWC", "HWIO", "NHWC")
    with pytest.raises(ValueError, match="window_strides must be positive"):
        conv(xi, w, (0, 1), "VALID", dimension_numbers=spec)
    with pytest.raises(ValueError, match="same number of dimensions"):
        conv(xi, w, (1,), "VALID", dimension_numbers=spec)
    with pytest.raises(TypeError, match="dilations must be positive"):
        conv(xi, w, (1, 1), "VALID", rhs_dilation=(0, 1), dimension_numbers=spec)
    with pytest.raises(ValueError, match="feature_group_count must be a positive integer"):
        conv(xi, w, (1, 1), "VALID", feature_group_count=0, dimension_numbers=spec)
    with pytest.raises(ValueError, match="divided by feature_group_count"):
        conv(xi, jnp.ones((3, 3, 2, 1)), (1, 1), "VALID", dimension_numbers=spec)


# ---- concurrency --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", ["workqueue", "default"])
def test_concurrent_matmuls_under_every_threading_layer(layer):
    code = ("import threading, numpy as np, numba, amsim\n"
            "from amsim import golden\n"
            "m = amsim.multipliers.mbm(7)\n"
            "rng = np.random.default_rng(0)\n"
            "a = rng.standard_normal((256, 128)).astype(np.float32)\n"
            "b = rng.standard_normal((128, 160)).astype(np.float32)\n"
            "i8 = amsim.multipliers.exact_int(8)\n"
            "ia = rng.integers(-128, 128, (200, 96)).astype(np.int8)\n"
            "ib = rng.integers(-128, 128, (96, 150)).astype(np.int8)\n"
            "want, iwant = golden.matmul(a, b, m), golden.matmul(ia, ib, i8)\n"
            "bad = []\n"
            "def work():\n"
            "    for _ in range(6):\n"
            "        bad.append(not np.array_equal(amsim.matmul(a, b, m), want))\n"
            "        bad.append(not np.array_equal(amsim.matmul(ia, ib, i8), iwant))\n"
            "ts = [threading.Thread(target=work) for _ in range(4)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "print('LAYER', numba.threading_layer(), 'WRONG', sum(bad), 'OF', len(bad))\n")
    env = {"NUMBA_THREADING_LAYER": layer} if layer != "default" else {}
    rc, out, _ = run_child(code, as_limit_gb=None, env=env)
    assert rc == 0, out[-3000:]  # the workqueue layer used to abort the process (SIGABRT)
    assert "WRONG 0 OF 48" in out, out[-2000:]
    if layer == "workqueue":
        assert "LAYER workqueue" in out
