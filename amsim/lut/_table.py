"""The LUT object: values, metadata, validation and .npz persistence (no pickle)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from .._errors import InvalidTableError

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class Table:
    """A multiplier's exhaustive lookup table and what it was built from.

    Float multipliers: ``values[ma, mb]`` is the float32 approximate product of the significands
    ``1.ma`` and ``1.mb`` (each an m-bit fraction field), finite and >= 0. Integer multipliers:
    ``values[a - lo, b - lo]`` is the int32 product of operands ``a`` and ``b``.

    Attributes:
        values: the table, float32 (2**m, 2**m) or int32 (2**bits, 2**bits); read-only.
        kind: "float" or "int".
        bits: mantissa bits (float) or operand bits (int).
        signed: integer operands are two's complement (int tables only).
        name: the multiplier's name.
        source: "model", "bits-model", "int-model" or "table" (how it was made).
        code_hash: hash of the model's code (or of the table for ``from_table``).
    """

    values: np.ndarray
    kind: str
    bits: int
    signed: bool
    name: str
    source: str
    code_hash: str

    def __post_init__(self):
        self.values.setflags(write=False)

    @property
    def digest(self) -> str:
        """SHA-256 of the table's bytes: two tables with the same digest multiply identically."""
        return hashlib.sha256(np.ascontiguousarray(self.values).tobytes()).hexdigest()

    def metadata(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "bits": self.bits,
            "signed": self.signed,
            "name": self.name,
            "source": self.source,
            "code_hash": self.code_hash,
            "digest": self.digest,
        }

    def save(self, path, rounding: str | None = None, **extra) -> Path:
        """Write the table and its metadata to an ``.npz`` file (no pickled objects)."""
        meta = self.metadata()
        if rounding is not None:
            meta["rounding"] = rounding
        meta.update(extra)
        path = Path(path)
        with open(path, "wb") as fh:
            np.savez_compressed(fh, values=self.values, metadata=np.array(json.dumps(meta)))
        return path

    @staticmethod
    def load(path) -> tuple["Table", dict]:
        """Read a table written by :meth:`save`; checks the stored digest."""
        with np.load(Path(path), allow_pickle=False) as data:
            if "values" not in data or "metadata" not in data:
                raise InvalidTableError(f"{path} is not an amsim table file (needs 'values' and 'metadata').")
            values = np.array(data["values"])
            meta = json.loads(str(data["metadata"]))
        if meta.get("format_version") != FORMAT_VERSION:
            raise InvalidTableError(f"{path}: table format version {meta.get('format_version')} is not supported.")
        table = Table(
            values=values,
            kind=meta["kind"],
            bits=int(meta["bits"]),
            signed=bool(meta["signed"]),
            name=meta["name"],
            source=meta["source"],
            code_hash=meta["code_hash"],
        )
        validate(table)
        if table.digest != meta["digest"]:
            raise InvalidTableError(f"{path}: the table's contents do not match its stored digest (file damaged?).")
        return table, meta


def _describe(values, bad, label_a, label_b, fmt_a, fmt_b, limit=5) -> str:
    idx = np.argwhere(bad)
    lines = [f"  {label_a}={fmt_a(int(i))}, {label_b}={fmt_b(int(j))} -> {float(values[i, j])!r}"
             for i, j in idx[:limit]]
    more = f"\n  ... and {len(idx) - limit} more" if len(idx) > limit else ""
    return "\n".join(lines) + more


def validate(table: Table) -> None:
    """Raise :class:`InvalidTableError` naming the offending operands if the table breaks the semantics."""
    v = table.values
    n = 1 << table.bits
    if v.ndim != 2 or v.shape != (n, n):
        raise InvalidTableError(f"table shape {v.shape} does not match {table.bits} bits: expected ({n}, {n}).")
    if table.kind == "float":
        if v.dtype != np.float32:
            raise InvalidTableError(f"float tables hold float32 values, got {v.dtype}.")
        bad = ~np.isfinite(v) | (v < 0)
        if bad.any():
            m = table.bits
            fmt = lambda i: f"1+{i}/2**{m} ({1 + i / 2**m!r})"  # noqa: E731
            raise InvalidTableError(
                f"multiplier {table.name!r}: {int(bad.sum())} table entries are NaN, infinite or negative; "
                f"significand products must be finite and >= 0:\n" + _describe(v, bad, "x", "y", fmt, fmt)
            )
    elif table.kind == "code":
        if v.dtype != np.float32:
            raise InvalidTableError(f"full-operand tables hold float32 values, got {v.dtype}.")
    elif table.kind == "int":
        if v.dtype != np.int32:
            raise InvalidTableError(f"integer tables hold int32 values, got {v.dtype}.")
    else:
        raise InvalidTableError(f"unknown table kind {table.kind!r}.")
