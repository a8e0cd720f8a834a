"""The Multiplier object and the decorators that turn a Python model into one."""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np

from . import _operands
from ._cost import Cost
from ._errors import InvalidTableError, ModelCompileError
from ._version import __version__
from .lut import Table, build_code_table, build_float_table, build_int_table, fingerprint, validate, validate_code_table

__all__ = ["Multiplier", "multiplier", "int_multiplier"]

_TABLES: dict[str, Table] = {}  # built tables, keyed by the multiplier's identity: a second use costs nothing
_TABLES_LOCK = threading.Lock()


class Multiplier:
    """An approximate multiplier: an operand format plus the exhaustive table of its products.

    Float multipliers take float32 operands rounded to ``mantissa_bits`` fraction bits (fp32 exponent range);
    integer multipliers take ``bits``-wide signed or unsigned integers. See docs/semantics.md.

    Multipliers are immutable and hashable, so they can be static arguments of ``jax.jit``. Two compare equal
    when their :attr:`identity` is equal: the same kind, width, signedness, rounding, operand format and source —
    a model's fingerprint (its code and every value it reads) and the amsim version that tabulates it, or the
    digest of a table that came from elsewhere. The table is built on first use and cached under that identity.

    Create one with :func:`multiplier`, :func:`int_multiplier`, :meth:`from_table`, :meth:`load` or the
    built-ins in :mod:`amsim.multipliers`.
    """

    def __init__(self, *, kind, bits, signed=False, rounding="nearest", name, model=None, fields=False,
                 table: Table | None = None, doc=None, operand_format=None, builder=None, cost=None):
        if kind == "float":
            _operands.check_mantissa_bits(bits)
            _operands.check_rounding(rounding)
        elif kind == "code":  # full-operand table of a format of at most 8 bits, indexed by the operands' codes
            _operands.check_rounding(rounding)
            if operand_format is None or operand_format.total_bits > 8 or operand_format.total_bits != bits:
                raise ValueError("a full-operand table needs an operand_format of at most 8 bits in total "
                                 "(e.g. amsim.formats.e4m3(...)) whose width matches the table.")
        elif kind == "int":
            _operands.check_int_bits(bits)
            rounding = "exact"
        else:
            raise ValueError(f"kind must be 'float', 'code' or 'int', got {kind!r}")
        self._kind = kind
        self._bits = bits
        self._signed = bool(signed) if kind == "int" else False
        self._rounding = rounding
        self._name = name
        self._model = model
        self._fields = fields
        self._table = table
        if cost is not None and not isinstance(cost, Cost):
            raise TypeError(f"cost must be an amsim.Cost (or use with_cost(power_mw=...)), got {type(cost).__name__}.")
        self._cost = cost  # describes the circuit, never the products: not part of the identity
        if operand_format is not None and kind != "code":
            if kind != "float" or operand_format.mantissa_bits != bits:
                raise ValueError(f"operand format {operand_format.name} has {operand_format.mantissa_bits} "
                                 f"fraction bits; the multiplier has {bits}: they must agree.")
            if operand_format.is_fp32_range:
                operand_format = None  # fp32's exponent: amsim's own rounding step is the conversion
        self._format = operand_format
        if table is not None:
            self._hash, self._source, self._builder = table.code_hash, table.source, builder
        else:
            self._hash, self._builder = fingerprint(model, name), __version__
            self._source = {"int": "int-model", "code": "code-model"}.get(kind, "bits-model" if fields else "model")
        self._identity = _identity(kind, bits, self._signed, rounding, self._format, self._source, self._hash,
                                   self._builder)
        if table is not None and kind == "code":
            validate_code_table(table, self._format)
        self.__doc__ = doc if doc is not None else getattr(model, "__doc__", None)
        object.__setattr__(self, "_frozen", True)

    # -- identity ----------------------------------------------------------------------------------------
    def __hash__(self):
        return hash(self._identity)

    def __eq__(self, other):
        return isinstance(other, Multiplier) and self._identity == other._identity

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False):
            raise AttributeError("Multiplier objects are immutable; use with_rounding() for a variant.")
        object.__setattr__(self, name, value)

    def __repr__(self):
        if self.is_int:
            fmt = f"{'int' if self._signed else 'uint'}{self._bits}"
        elif self.is_code:
            fmt = f"full table over {self._format.name}, rounding={self._rounding!r}"
        else:
            name = self._format.name if self._format else f"e8m{self._bits}"
            fmt = f"{name}, rounding={self._rounding!r}"
        return f"Multiplier({self._name!r}, {fmt})"

    def __reduce__(self):
        raise TypeError("Multiplier objects are not pickled; save() them to .npz and load() them instead.")

    # -- properties --------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def is_int(self) -> bool:
        return self._kind == "int"

    @property
    def is_code(self) -> bool:
        """True for a full-operand table indexed by the operands' format codes (formats of at most 8 bits)."""
        return self._kind == "code"

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def mantissa_bits(self) -> int:
        """Kept fraction bits of the operands (float multipliers)."""
        if self.is_int:
            raise AttributeError(f"{self!r} is an integer multiplier; it has int_bits, not mantissa_bits.")
        return self._format.mantissa_bits if self.is_code else self._bits

    @property
    def int_bits(self) -> int:
        if not self.is_int:
            raise AttributeError(f"{self!r} is a float multiplier; it has mantissa_bits, not int_bits.")
        return self._bits

    @property
    def bits(self) -> int:
        return self._bits

    @property
    def signed(self) -> bool:
        return self._signed

    @property
    def int_range(self) -> tuple[int, int]:
        return _operands.int_range(self._bits, self._signed)

    @property
    def rounding(self) -> str:
        return self._rounding

    @property
    def operand_format(self):
        """The :class:`amsim.formats.FloatFormat` operands are converted to first; None for fp32's exponent range."""
        return self._format

    @property
    def model(self):
        """The Python model the table was built from (None for tables from elsewhere)."""
        return self._model

    @property
    def code_hash(self) -> str:
        """The model's fingerprint (its code and every value it reads), or the digest of a table from elsewhere."""
        return self._hash

    @property
    def identity(self) -> str:
        """Hex hash of everything that determines this multiplier's table and products, known without building
        the table: kind, width, signedness, rounding, operand format, and the model's fingerprint with the amsim
        version that tabulates it (or the digest of a table from elsewhere). The table cache's key."""
        return self._identity

    @property
    def digest(self) -> str:
        """Hex SHA-256 of what this multiplier computes: the table's values with the kind, width, signedness,
        rounding and operand format that give them meaning. Equal digests multiply identically (builds the table).
        """
        fmt = self._format.spec() if self._format else None
        return _sha256(["digest", self.table.digest, self._kind, self._bits, self._signed, self._rounding, fmt])

    @property
    def table(self) -> Table:
        """The exhaustive table (built and validated on first access, then cached)."""
        if self._table is None:
            with _TABLES_LOCK:
                table = _TABLES.get(self._identity)
                if table is None:
                    table = self._build()
                    _TABLES[self._identity] = table
            object.__setattr__(self, "_table", table)
        return self._table

    def _build(self) -> Table:
        if fingerprint(self._model, self._name) != self._hash:
            raise ModelCompileError(
                f"multiplier {self._name!r}: a value its model reads (a global, closure variable or helper) has "
                "changed since the multiplier was defined, and the table would be built from the new value under "
                "the old identity. Define the multiplier again after the change.")
        if self.is_int:
            values = build_int_table(self._model, self._bits, self._signed, self._name)
        elif self.is_code:
            values = build_code_table(self._model, self._format, self._name)
        else:
            values = build_float_table(self._model, self._bits, self._name, self._fields)
        table = Table(values, self._kind, self._bits, self._signed, self._name, self._source, self._hash)
        validate(table)
        if self.is_code:
            validate_code_table(table, self._format)
        return table

    # -- variants and persistence --------------------------------------------------------------------------
    def with_rounding(self, rounding: str) -> Multiplier:
        """The same multiplier with operands rounded by ``rounding`` ("nearest" or "truncate")."""
        if self.is_int:
            raise ValueError("integer multipliers take integer operands; they have no rounding mode.")
        return self._variant(rounding=rounding)

    def with_format(self, operand_format, name: str | None = None) -> Multiplier:
        """The same significand table applied to operands converted to ``operand_format`` first (fp16, FP8...).

        The format's fraction bits must equal the multiplier's ``mantissa_bits``. ``name`` renames the variant
        (a label only: names are not part of a multiplier's identity).
        """
        if self.is_int:
            raise ValueError("integer multipliers have no float operand format.")
        return self._variant(operand_format=operand_format, **({"name": name} if name else {}))

    @property
    def cost(self) -> Cost | None:
        """The circuit's hardware cost (power, area, delay), or None if none is known."""
        return self._cost

    def with_cost(self, cost: Cost | None = None, *, power_mw=None, area_um2=None, delay_ns=None, source="user",
                  technology="", relative=False, published=()) -> Multiplier:
        """The same multiplier (same table, same identity) carrying a hardware cost.

        Arguments:
            cost: an :class:`amsim.Cost`; or give its fields: ``power_mw`` (mW, or relative to the exact
                multiplier of the same width with ``relative=True``), ``area_um2`` (µm²), ``delay_ns`` (ns),
                ``source``, ``technology`` and ``published`` metrics.

        Returns:
            A :class:`Multiplier` equal to this one, with :attr:`cost` set (kept by :meth:`save`).
        """
        if cost is None:
            cost = Cost(power_mw=power_mw, area_um2=area_um2, delay_ns=delay_ns, source=source,
                        technology=technology, relative=relative, published=published)
        return self._variant(cost=cost)

    def _variant(self, **changes):
        kw = dict(kind=self._kind, bits=self._bits, signed=self._signed, rounding=self._rounding, name=self._name,
                  model=self._model, fields=self._fields, table=self._table if self._model is None else None,
                  doc=self.__doc__, operand_format=self._format, builder=self._builder, cost=self._cost)
        kw.update(changes)
        return Multiplier(**kw)

    def save(self, path):
        """Write the table and its metadata (name, kind, rounding, operand format, fingerprint, the amsim version
        that built it, identity) to an ``.npz`` file whose digest covers all of it."""
        return self.table.save(path, rounding=self._rounding, operand_format=self._format.spec() if self._format
                               else None, builder=self._builder, identity=self._identity,
                               cost=self._cost.as_dict() if self._cost else None)

    @classmethod
    def load(cls, path) -> Multiplier:
        """Read a multiplier saved with :meth:`save`; a file whose values or metadata were altered is refused."""
        table, meta = Table.load(path)
        fmt = meta.get("operand_format")
        if fmt is not None:
            from ._formats import FloatFormat

            try:
                fmt = FloatFormat(**fmt)
            except (TypeError, ValueError) as exc:
                raise InvalidTableError(f"{path}: its operand format {fmt!r} is not valid: {exc}") from None
        try:
            cost = Cost.from_dict(meta["cost"]) if meta.get("cost") else None
            mult = cls(kind=table.kind, bits=table.bits, signed=table.signed, rounding=meta.get("rounding"),
                       name=table.name, table=table, operand_format=fmt, builder=meta.get("builder"), cost=cost)
        except (TypeError, ValueError) as exc:
            raise InvalidTableError(f"{path}: its metadata does not describe a valid multiplier: {exc}") from None
        if meta.get("identity") != mult.identity:
            raise InvalidTableError(f"{path}: the stored identity does not match the one its metadata gives (a file "
                                    "from another amsim version?); rebuild the table from its model.")
        return mult

    @classmethod
    def from_table(cls, values, *, name: str, kind: str | None = None, signed: bool | None = None,
                   rounding: str = "nearest", operand_format=None) -> Multiplier:
        """Wrap a table that came from elsewhere.

        Arguments:
            values: float (2**m, 2**m) array of significand products (``values[ma, mb]`` for ``1.ma * 1.mb``),
                or an integer (2**bits, 2**bits) array of products indexed ``[a - lo, b - lo]``.
            name: the multiplier's name.
            kind: "float" or "int"; by default taken from the array's dtype.
            signed: for integer tables, whether operands are two's complement (required for int tables).
            rounding: operand rounding for float tables.
            operand_format: the operand format; with a table of side 2**total_bits (formats of at most 8 bits)
                the table is a full-operand table ``values[code_a, code_b]`` (kind "code").

        Returns:
            A :class:`Multiplier`. Float values are converted to float32 only if that is exact.
        """
        arr = np.asarray(values)
        if arr.dtype.kind not in "biuf":
            raise InvalidTableError(f"table {name!r} has dtype {arr.dtype}; a table holds numbers (float for "
                                    "significand and full-operand tables, integers for integer tables).")
        if kind is None:
            kind = "int" if np.issubdtype(arr.dtype, np.integer) else "code" if operand_format is not None and \
                arr.shape[0] == 1 << operand_format.total_bits and operand_format.total_bits <= 8 else "float"
        if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] & (arr.shape[0] - 1):
            raise InvalidTableError(f"a table must be square with a power-of-two side, got shape {arr.shape}.")
        bits = int(arr.shape[0]).bit_length() - 1
        if kind in ("float", "code"):
            conv = arr.astype(np.float32)
            if kind == "float":
                conv[conv == 0] = 0.0  # -0.0 and +0.0 are the same magnitude; the product's sign is the xor
            with np.errstate(invalid="ignore"):
                lossy = ~np.isnan(arr) & (conv.astype(arr.dtype) != arr)
            if lossy.any():
                raise InvalidTableError(f"table {name!r}: {int(lossy.sum())} values are not exactly representable "
                                        "in float32; round them explicitly before from_table().")
            signed = False
        elif kind == "int":
            if signed is None:
                raise ValueError("from_table(..., kind='int') needs signed=True or signed=False.")
            if not np.issubdtype(arr.dtype, np.integer):
                raise InvalidTableError(f"integer table {name!r} must have an integer dtype, got {arr.dtype}.")
            if arr.min(initial=0) < np.iinfo(np.int32).min or arr.max(initial=0) > np.iinfo(np.int32).max:
                raise InvalidTableError(f"integer table {name!r} has values outside the int32 range.")
            conv = arr.astype(np.int32)
        else:
            raise ValueError(f"kind must be 'float', 'code' or 'int', got {kind!r}")
        digest = hashlib.sha256(np.ascontiguousarray(conv).tobytes()).hexdigest()[:32]
        table = Table(conv.copy(), kind, bits, bool(signed), name, "table", digest)
        if kind == "float":
            _operands.check_mantissa_bits(bits)
        elif kind == "int":
            _operands.check_int_bits(bits)
        validate(table)
        return cls(kind=kind, bits=bits, signed=bool(signed), rounding=rounding, name=name, table=table,
                   operand_format=operand_format)

    # -- use -----------------------------------------------------------------------------------------------
    def stats(self):
        """Error metrics over the exhaustive operand grid (see :class:`amsim.ErrorStats`)."""
        from ._metrics import error_stats

        return error_stats(self)

    def __call__(self, a, b, **kwargs):
        """Elementwise approximate product: ``amsim.multiply(a, b, self)``."""
        return _ELEMENTWISE[0](a, b, self, **kwargs)


_ELEMENTWISE = [None]  # amsim.multiply, registered by amsim._ops (the layer above) when it is imported


def register_elementwise(fn) -> None:
    _ELEMENTWISE[0] = fn


def _sha256(parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _identity(kind, bits, signed, rounding, fmt, source, code_hash, builder) -> str:
    return _sha256(["identity", kind, bits, bool(signed), rounding, fmt.spec() if fmt else None, source, code_hash,
                    builder])


def _check_model(fn):
    """A model is a Python function (``def`` or ``lambda``), optionally ``@numba.njit``-decorated."""
    import types

    if isinstance(getattr(fn, "py_func", fn), types.FunctionType):
        return fn
    what = type(fn).__name__
    hint = " (a NumPy ufunc or builtin has no Python code to compile)" if callable(fn) else ""
    raise TypeError(f"a multiplier model must be a Python function (def or lambda, optionally @numba.njit), got "
                    f"{what} {fn!r}{hint}; wrap it: def model(x, y): return ...")


def _decorator(fn, make):
    if fn is None:
        return lambda f: make(_check_model(f))
    return make(_check_model(fn))


def multiplier(fn=None, *, mantissa_bits: int | None = None, rounding: str = "nearest", fields: bool = False,
               name: str | None = None, operand_format=None, full_table: bool = False):
    """Turn a model of significand multiplication into a :class:`Multiplier`.

    Arguments:
        fn: the model. With ``fields=False`` it is ``fn(x, y) -> float`` for significands x, y in [1, 2) that
            are exact multiples of ``2**-mantissa_bits``, returning their approximate product (finite, >= 0).
            With ``fields=True`` it is ``fn(ma, mb) -> int`` on the integer fraction fields 0..2**m-1, returning
            the integer product of the (m+1)-bit significands ``(2**m + ma) * (2**m + mb)`` in units of
            ``2**(-2m)`` (how a hardware description computes it).
        mantissa_bits: fraction bits kept from each float32 operand, 1 to 11.
        rounding: how operands are reduced to ``mantissa_bits``: "nearest" (even) or "truncate".
        fields: choose the integer-field form of the model.
        name: defaults to the function's name.
        operand_format: an :class:`amsim.formats.FloatFormat` (fp16, e4m3, e5m2, custom) operands are converted to
            first; ``mantissa_bits`` defaults to its fraction bits.
        full_table: for formats of at most 8 bits: ``fn(a, b)`` receives the two decoded operand *values* (signed,
            zeros and subnormals included; every finite pair) and returns their product, so the error may depend
            on exponents and signs too; the table is indexed by the operands' codes (256 x 256 for FP8).

    Returns:
        A :class:`Multiplier` (the table is built on first use). Model outputs are stored as float32 (nearest).
    """
    if full_table:
        if operand_format is None:
            raise TypeError("full_table=True needs operand_format= (a format of at most 8 bits).")

        def make_full(f):
            return Multiplier(kind="code", bits=operand_format.total_bits, rounding=rounding,
                              name=name or f.__name__, model=f, operand_format=operand_format)

        return _decorator(fn, make_full)
    if mantissa_bits is None:
        if operand_format is None:
            raise TypeError("multiplier() needs mantissa_bits= (or an operand_format= that implies it).")
        mantissa_bits = operand_format.mantissa_bits
    _operands.check_mantissa_bits(mantissa_bits)
    _operands.check_rounding(rounding)

    def make(f):
        return Multiplier(kind="float", bits=mantissa_bits, rounding=rounding, name=name or f.__name__, model=f,
                          fields=fields, operand_format=operand_format)

    return _decorator(fn, make)


def int_multiplier(fn=None, *, bits: int = 8, signed: bool = True, name: str | None = None):
    """Turn an integer multiplier model ``fn(a, b) -> int`` into a :class:`Multiplier`.

    Arguments:
        fn: the model, called on every operand pair of the format (a full-operand table).
        bits: operand width, 2 to 8.
        signed: two's-complement operands (-2**(bits-1) .. 2**(bits-1)-1) or unsigned (0 .. 2**bits-1).
        name: defaults to the function's name.

    Returns:
        A :class:`Multiplier` whose products are int32 and whose GEMMs accumulate exactly in int32.
    """
    _operands.check_int_bits(bits)

    def make(f):
        return Multiplier(kind="int", bits=bits, signed=signed, name=name or f.__name__, model=f)

    return _decorator(fn, make)
