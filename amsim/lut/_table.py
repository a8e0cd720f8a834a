"""The LUT object: values, metadata, validation and .npz persistence (no pickle)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from .._errors import InvalidTableError
from .._io import atomic_writer

FORMAT_VERSION = 2  # 2: the digest covers the metadata too


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
        source: "model", "bits-model", "int-model", "code-model" or "table" (how it was made).
        code_hash: the model's fingerprint (code and the values it reads), or the values' digest for tables
            that came from elsewhere.
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
            "values_digest": self.digest,
        }

    def save(self, path, **extra) -> Path:
        """Write the table and its metadata (plus ``extra`` JSON fields) to an ``.npz`` file (no pickled objects).

        The stored ``digest`` covers the values *and* every metadata field, so an edited field is refused on load.
        """
        meta = self.metadata()
        meta.update(extra)
        meta["digest"] = file_digest(meta, self.values)
        path = Path(path)
        with atomic_writer(path) as fh:
            np.savez_compressed(fh, values=self.values, metadata=np.array(json.dumps(meta, sort_keys=True)))
        return path

    @staticmethod
    def load(path) -> tuple[Table, dict]:
        """Read a table written by :meth:`save`; refuses a file whose values or metadata do not match its digest."""
        values, meta_text = _read_npz(Path(path))
        try:
            meta = json.loads(meta_text)
        except ValueError as exc:
            raise InvalidTableError(f"{path}: the metadata is not valid JSON ({exc}).") from None
        if not isinstance(meta, dict):
            raise InvalidTableError(f"{path}: the metadata is not a JSON object.")
        version = meta.get("format_version")
        if version == 1:
            raise InvalidTableError(
                f"{path} is a version-1 amsim table file, whose digest covered the values but not the metadata "
                "(rounding, signedness, operand format), so its metadata cannot be trusted. Rebuild the table from "
                "its model and save it again, or wrap the values with Multiplier.from_table(...) stating the "
                "format explicitly.")
        if version != FORMAT_VERSION:
            raise InvalidTableError(f"{path}: table format version {version!r} is not supported (this amsim reads "
                                    f"version {FORMAT_VERSION}).")
        for key, typ in (("kind", str), ("bits", int), ("signed", bool), ("name", str), ("source", str),
                         ("code_hash", str), ("digest", str)):
            if not isinstance(meta.get(key), typ) or (typ is int and isinstance(meta.get(key), bool)):
                raise InvalidTableError(f"{path}: metadata field {key!r} is missing or not a {typ.__name__}.")
        if meta["digest"] != file_digest(meta, values):
            raise InvalidTableError(f"{path}: the table's values or metadata do not match its stored digest (file "
                                    "damaged or edited); rebuild the table from its model.")
        table = Table(values=values, kind=meta["kind"], bits=meta["bits"], signed=meta["signed"], name=meta["name"],
                      source=meta["source"], code_hash=meta["code_hash"])
        validate(table)
        return table, meta


MAX_TABLE_BITS = 11  # the largest table side is 2**11 (float tables, m = 11)
_MAX_VALUES_BYTES = 4 << (2 * MAX_TABLE_BITS)  # 16 MiB of float32 / int32
_MAX_META_BYTES = 1 << 16
_NPY_HEADER_MAX = 1 << 12


def _read_member(zf, name, limit, path):
    info = zf.getinfo(name)
    if info.file_size > limit:  # the declared size bounds what zipfile will inflate, so check it first
        raise InvalidTableError(f"{path}: member {name} would inflate to {info.file_size} bytes, more than an amsim "
                                f"table's {limit}; refusing to read it.")
    with zf.open(info) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise InvalidTableError(f"{path}: member {name} is larger than an amsim table's {limit} bytes.")
    return data


def _parse_npy(data: bytes, name, path, accept, what):
    """A .npy member: header checked (``accept(dtype, shape)``) before the array is built; no pickle, no objects."""
    import io

    fh = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=_NPY_HEADER_MAX)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=_NPY_HEADER_MAX)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:
        raise InvalidTableError(f"{path}: member {name} is not a valid .npy array ({exc}).") from None
    if dtype.hasobject or not accept(dtype, shape):
        raise InvalidTableError(f"{path}: member {name} has dtype {dtype} and shape {shape}; an amsim table file "
                                f"holds {what} there.")
    count = int(np.prod(shape, dtype=np.int64))
    body = data[fh.tell():]
    if len(body) != count * dtype.itemsize:
        raise InvalidTableError(f"{path}: member {name} holds {len(body)} bytes, but its header says {shape} "
                                f"{dtype} ({count * dtype.itemsize} bytes).")
    arr = np.frombuffer(body, dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C")


def _read_npz(path: Path) -> tuple[np.ndarray, str]:
    """The values array and the metadata string of a table file, read without pickle and with every size checked
    before anything is inflated (a crafted file cannot make amsim allocate more than a table's size)."""
    import zipfile
    import zlib

    size = path.stat().st_size  # a missing file stays a FileNotFoundError
    if size > 2 * _MAX_VALUES_BYTES:
        raise InvalidTableError(f"{path} is {size} bytes, larger than any amsim table file.")
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(zf.namelist())
            if names != ["metadata.npy", "values.npy"]:
                raise InvalidTableError(f"{path} is not an amsim table file: it holds {names[:5]}, not exactly "
                                        "values.npy and metadata.npy.")
            raw_values = _read_member(zf, "values.npy", _MAX_VALUES_BYTES + _NPY_HEADER_MAX, path)
            raw_meta = _read_member(zf, "metadata.npy", _MAX_META_BYTES, path)
    except InvalidTableError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError,
            NotImplementedError, RuntimeError) as exc:  # a damaged archive (zipfile seeks to offsets it reads)
        raise InvalidTableError(f"{path} is not a readable amsim table file ({type(exc).__name__}: {exc}).") from None
    values = _parse_npy(raw_values, "values.npy", path,
                        lambda dt, sh: dt.kind in "fi" and dt.itemsize == 4 and len(sh) == 2,
                        "a 2-D float32 or int32 array")
    meta = _parse_npy(raw_meta, "metadata.npy", path, lambda dt, sh: dt.kind == "U" and sh == (),
                      "a JSON string")
    return values.astype(values.dtype.newbyteorder("="), copy=True), str(meta.reshape(()))


def file_digest(meta: dict, values: np.ndarray) -> str:
    """SHA-256 over every metadata field but ``digest`` itself and over the values (dtype, shape and bytes)."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "digest"}, sort_keys=True).encode())
    h.update(f"{values.dtype.str}{values.shape}".encode())
    h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


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


def validate_code_table(table: Table, fmt) -> None:
    """A full-operand table over ``fmt``'s codes must follow IEEE rules wherever an operand is NaN or Inf.

    NaN codes give NaN, Inf x 0 gives NaN, Inf x non-zero gives Inf with the xor of the signs; products of two
    finite operands are the model's and must be finite. Raises :class:`InvalidTableError` naming the operands.
    """
    from .._formats import decode_all

    vals = decode_all(fmt)
    if table.values.shape != (vals.size, vals.size):
        raise InvalidTableError(f"multiplier {table.name!r}: a full-operand table over {fmt.name} has shape "
                                f"({vals.size}, {vals.size}), got {table.values.shape}.")
    v = table.values
    fin = np.isfinite(vals)
    both = np.multiply.outer(fin, fin)
    with np.errstate(invalid="ignore"):
        special = np.multiply.outer(vals.astype(np.float64), vals.astype(np.float64)).astype(np.float32)
    bad_finite = both & ~np.isfinite(v)
    bad_special = ~both & ~((np.isnan(special) & np.isnan(v)) | (special == v))
    for bad, rule in ((bad_finite, "products of finite operands must be finite"),
                      (bad_special, "entries with a NaN or Inf operand must follow IEEE rules (NaN propagates, "
                                    "Inf x 0 = NaN, Inf x non-zero = Inf with the xor of the signs)")):
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise InvalidTableError(
                f"multiplier {table.name!r}: {int(bad.sum())} table entries break the semantics: {rule}; e.g. "
                f"a={float(vals[i])!r} (code {i}), b={float(vals[j])!r} (code {j}) -> {float(v[i, j])!r}, expected "
                f"{float(special[i, j]) if not both[i, j] else 'a finite value'!r}.")
