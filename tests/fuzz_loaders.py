"""Fuzzing amsim's file readers: run as ``python -m tests.fuzz_loaders KIND... --examples N`` (in a child process,
by tests/test_fuzz.py, so that a crash is seen as a crash and memory is measured on its own).

For each kind a valid file is written, then hypothesis mutates its bytes (flips, overwrites, truncations,
insertions, deletions, duplicated ranges) and the reader must either load it or raise an amsim error: any other
exception fails (hypothesis shrinks and prints the mutation), and a crash kills the process. The process prints
its peak resident memory at the end.
"""

from __future__ import annotations

import argparse
import pickle
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import amsim
from amsim import _train, interop
from amsim.data import _cifar, _idx


def _cifar_file(d: Path) -> Path:
    rng = np.random.default_rng(0)
    obj = {b"batch_label": b"x", b"labels": [1, 2], b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
           b"filenames": [b"a.png", b"b.png"]}
    p = d / "test_batch"
    p.write_bytes(pickle.dumps(obj, protocol=2))
    return p


def _idx_file(d: Path) -> Path:
    p = d / "t10k-labels-idx1-ubyte.gz"
    import gzip

    p.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + bytes(range(10))))
    return p


def _checkpoint_target():
    import jax.numpy as jnp

    return {"p": {"w": jnp.zeros((3, 2), jnp.float32)}, "s": {}, "o": {"count": jnp.zeros((), jnp.int32)}}


def _checkpoint_file(d: Path) -> Path:
    import json

    import flax.serialization

    blob = {"state": flax.serialization.to_state_dict(_checkpoint_target()),
            "meta": json.dumps({"run_id": "x", "epoch": 1, "history": [], "curve": []})}
    p = d / "c.msgpack"
    p.write_bytes(flax.serialization.msgpack_serialize(blob))
    return p


KINDS = {
    # kind: (make a valid file in a folder, read a file, exceptions that are the reader's clear errors)
    "npz": (lambda d: amsim.multipliers.mbm(3).save(d / "t.npz"), amsim.Multiplier.load, ()),
    "npz_int": (lambda d: amsim.multipliers.exact_int(4).save(d / "i.npz"), amsim.Multiplier.load, ()),
    "approxtrain": (lambda d: interop.save_approxtrain(amsim.multipliers.mbm(4), d / "M_4.bin"),
                    interop.load_approxtrain, ()),
    "tfapprox": (lambda d: interop.save_tfapprox(amsim.multipliers.exact_int(8, signed=False), d / "t.bin"),
                 interop.load_tfapprox, ()),
    "c_header": (lambda d: interop.save_c_header(amsim.multipliers.exact_int(3), d / "lut.h"),
                 lambda p: interop.load_c_header(p), ()),
    "torchapprox": (lambda d: (np.save(d / "lut.npy", interop.to_torchapprox(amsim.multipliers.exact_int(8))),
                               d / "lut.npy")[1], lambda p: interop.from_torchapprox(p), ()),
    "cifar": (_cifar_file, _cifar.read_batch, ()),
    "idx": (_idx_file, lambda p: _idx.parse_idx(_idx._read_bounded(p, 18), p), ()),
    "checkpoint": (_checkpoint_file, lambda p: _train.read_checkpoint(p, _checkpoint_target()), ()),
}

_MUTATION = st.tuples(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "duplicate"]),
                      st.floats(0, 1, allow_nan=False), st.integers(0, 255), st.integers(1, 64))


def mutate(blob: bytes, mutations) -> bytes:
    b = bytearray(blob)
    for op, where, value, length in mutations:
        i = min(int(where * len(b)), max(len(b) - 1, 0))
        if op == "flip" and b:
            b[i] ^= 1 << (value % 8)
        elif op == "set" and b:
            b[i] = value
        elif op == "truncate":
            del b[i:]
        elif op == "insert":
            b[i:i] = bytes([value]) * length
        elif op == "delete":
            del b[i:i + length]
        elif op == "duplicate":
            b[i:i] = b[i:i + length]
    return bytes(b)


def fuzz(kind: str, examples: int, workdir: Path) -> None:
    make, read, extra = KINDS[kind]
    folder = workdir / kind
    folder.mkdir()
    original = Path(make(folder))
    valid = original.read_bytes()
    read(original)  # the valid file itself loads
    target = folder / ("m_" + original.name)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(_MUTATION, min_size=1, max_size=4))
    def check(mutations):
        target.write_bytes(mutate(valid, mutations))
        try:
            read(target)
        except (amsim.AmsimError, *extra):
            pass

    check()


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started its program (VmHWM: getrusage's ru_maxrss would also
    count the pages of the parent it was forked from, a multi-GB pytest process)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("kinds", nargs="+", choices=sorted(KINDS))
    ap.add_argument("--examples", type=int, default=100)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            fuzz(kind, args.examples, Path(tmp))
            print("FUZZED", kind, args.examples, flush=True)
    print("PEAK_RSS_MB", peak_rss_mb())


if __name__ == "__main__":
    sys.exit(main())
