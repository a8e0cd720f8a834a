"""Operand formats narrower than fp32's exponent: fp16 (e5m10), OCP FP8 e4m3 ("fn": no Inf, NaN only at all-ones)
and e5m2, and user-defined (exponent bits, mantissa bits).

An operand is first converted to its format — rounding at the format's precision (nearest-even or truncation),
subnormals kept or flushed (an explicit choice), overflow to Inf, to the largest finite value (saturation) or to
NaN as the format defines — and the converted value, which float32 holds exactly, then goes through the usual
pipeline (docs/semantics.md): significand table, exact exponent add, float32 accumulation.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ._errors import UnsupportedError

__all__ = ["FloatFormat", "fp16", "e4m3", "e5m2", "convert"]

OVERFLOW_MODES = ("inf", "saturate", "nan")
SUBNORMAL_MODES = ("keep", "flush")


@dataclasses.dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point operand format.

    Attributes:
        exponent_bits: 2 to 8 (8 is fp32's range; then amsim rounds the float32 operand itself, subnormals flush).
        mantissa_bits: fraction bits, 1 to 11.
        subnormals: "keep" (gradual underflow) or "flush" (values below the smallest normal become signed zero).
        overflow: what a too-large finite value or an Inf operand becomes: "inf", "saturate" (largest finite) or
            "nan".
        ieee: True: the all-ones exponent encodes Inf/NaN (IEEE style); False ("fn" style): it holds ordinary
            values and only the all-ones code is NaN, so the format has no Inf (``overflow="inf"`` is refused).
        name: a label.
    """

    exponent_bits: int
    mantissa_bits: int
    subnormals: str
    overflow: str = "inf"
    ieee: bool = True
    name: str = ""

    def __post_init__(self):
        if not 2 <= self.exponent_bits <= 8:
            raise ValueError(f"exponent_bits={self.exponent_bits}: choose 2 to 8.")
        if not 1 <= self.mantissa_bits <= 11:
            raise ValueError(f"mantissa_bits={self.mantissa_bits}: choose 1 to 11.")
        if self.subnormals not in SUBNORMAL_MODES:
            raise ValueError(f"subnormals={self.subnormals!r}: choose 'keep' or 'flush' explicitly.")
        if self.overflow not in OVERFLOW_MODES:
            raise ValueError(f"overflow={self.overflow!r}: choose one of {OVERFLOW_MODES}.")
        if not self.ieee and self.overflow == "inf":
            raise ValueError("an 'fn' format (ieee=False) has no Inf: choose overflow='saturate' or 'nan'.")
        if self.exponent_bits == 8 and self.subnormals == "keep":
            raise UnsupportedError("8-bit exponents use fp32's own range, whose subnormals amsim flushes; "
                                   "use subnormals='flush'.")
        if not self.name:
            object.__setattr__(self, "name", f"e{self.exponent_bits}m{self.mantissa_bits}")

    @property
    def bias(self) -> int:
        return (1 << (self.exponent_bits - 1)) - 1

    @property
    def min_normal(self) -> float:
        return 2.0 ** (1 - self.bias)

    @property
    def max_finite(self) -> float:
        m = self.mantissa_bits
        if self.ieee:
            return (2.0 - 2.0**-m) * 2.0 ** ((1 << self.exponent_bits) - 2 - self.bias)
        return (2.0 - 2.0 ** (1 - m)) * 2.0 ** ((1 << self.exponent_bits) - 1 - self.bias)

    @property
    def total_bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def is_fp32_range(self) -> bool:
        return self.exponent_bits == 8

    def spec(self) -> dict:
        return dataclasses.asdict(self)


def fp16(*, subnormals: str, overflow: str = "inf") -> FloatFormat:
    """IEEE binary16 (e5m10): largest finite 65504, smallest normal 2**-14."""
    return FloatFormat(5, 10, subnormals, overflow, True, "fp16")


def e4m3(*, subnormals: str, overflow: str = "nan") -> FloatFormat:
    """OCP FP8 E4M3 ("fn"): no Inf, NaN only at S.1111.111, largest finite 448; overflow gives NaN as in the
    OCP non-saturating conversion, or the largest finite value with ``overflow="saturate"``."""
    return FloatFormat(4, 3, subnormals, overflow, False, "e4m3")


def e5m2(*, subnormals: str, overflow: str = "inf") -> FloatFormat:
    """OCP FP8 E5M2 (IEEE-style): Inf and NaN at the all-ones exponent, largest finite 57344."""
    return FloatFormat(5, 2, subnormals, overflow, True, "e5m2")


def convert(x, fmt: FloatFormat, rounding: str, xp=np):
    """Convert float32 values to ``fmt`` (returned as the float32 values they represent).

    Arguments:
        x: float32 array (NumPy or CuPy; ``xp`` is its module).
        fmt: the operand format (not an 8-bit exponent one: those need no conversion).
        rounding: "nearest" (ties to even) or "truncate" (toward zero).

    Returns:
        float32 array; NaN as the canonical quiet NaN.
    """
    x = xp.asarray(x, dtype=np.float32)
    with np.errstate(all="ignore"):  # NaN/Inf operands are handled explicitly below
        return _convert(x, fmt, rounding, xp)


def _convert(x, fmt, rounding, xp):
    ax = xp.abs(x)
    neg = xp.signbit(x)
    m = fmt.mantissa_bits
    # normal range: round the fp32 bit pattern at m fraction bits (carry moves into the exponent)
    u = ax.view(np.uint32).astype(np.uint64)
    shift = 23 - m
    if rounding == "nearest":
        u = u + ((1 << (shift - 1)) - 1) + ((u >> shift) & 1)
    u = u & ~np.uint64((1 << shift) - 1)
    normal = u.astype(np.uint32).view(np.float32)
    # subnormal range: multiples of q = 2**(emin - m), rounded as integers (power-of-two scaling is exact)
    tiny = np.float32(fmt.min_normal)
    q = np.float32(2.0 ** (1 - fmt.bias - m))
    k = ax / q
    k = xp.rint(k) if rounding == "nearest" else xp.floor(k)
    sub = (k * q).astype(np.float32)
    if fmt.subnormals == "flush":
        sub = xp.where(sub < tiny, np.float32(0), sub)
    mag = xp.where(ax < tiny, sub, normal)
    big = np.float32(fmt.max_finite)
    over = (mag > big) | xp.isinf(ax)
    if fmt.overflow == "inf":
        repl = np.float32(np.inf)
    elif fmt.overflow == "saturate":
        repl = big
    else:
        repl = np.float32(np.nan)
    mag = xp.where(over, repl, mag)
    mag = xp.where(xp.isnan(x), np.float32(np.nan), mag)
    return xp.where(neg, -mag, mag).astype(np.float32)


def encode(v, fmt: FloatFormat, xp=np):
    """Bit codes (int32, 0 .. 2**total_bits - 1) of float32 values already in ``fmt`` (see :func:`convert`)."""
    m, bias = fmt.mantissa_bits, fmt.bias
    v = xp.asarray(v, dtype=np.float32)
    with np.errstate(all="ignore"):
        a = xp.abs(v).astype(np.float64)
        sign = xp.signbit(v).astype(np.int32) << (fmt.exponent_bits + m)
        _, e = xp.frexp(a)  # a = f * 2**e, f in [0.5, 1)
        exp_field = xp.clip(e - 1 + bias, 0, (1 << fmt.exponent_bits) - 1)
        normal = a >= fmt.min_normal
        frac_normal = xp.rint((a / xp.ldexp(xp.ones_like(a), e - 1) - 1.0) * (1 << m))
        frac_sub = xp.rint(a / 2.0 ** (1 - bias - m))
        code = xp.where(normal, (exp_field << m) + frac_normal.astype(np.int32), frac_sub.astype(np.int32))
        all_ones = (1 << (fmt.exponent_bits + m)) - 1
        inf_code = ((1 << fmt.exponent_bits) - 1) << m
        nan_code = all_ones if not fmt.ieee else inf_code | (1 << (m - 1))
        code = xp.where(xp.isinf(a), inf_code, code)
        code = xp.where(xp.isnan(a), nan_code, code)
    return (sign | code.astype(np.int32)).astype(np.int32)


def decode_all(fmt: FloatFormat) -> np.ndarray:
    """The float32 value of every code of a format of at most 16 bits (NaN for NaN codes)."""
    n = 1 << fmt.total_bits
    codes = np.arange(n, dtype=np.int64)
    m, eb = fmt.mantissa_bits, fmt.exponent_bits
    sign = np.where(codes >> (eb + m) & 1, -1.0, 1.0)
    e = (codes >> m) & ((1 << eb) - 1)
    f = (codes & ((1 << m) - 1)).astype(np.float64)
    val = np.where(e == 0, f * 2.0 ** (1 - fmt.bias - m), (1.0 + f / (1 << m)) * 2.0 ** (e - fmt.bias))
    top = e == (1 << eb) - 1
    if fmt.ieee:
        val = np.where(top, np.where(f == 0, np.inf, np.nan), val)
    else:
        val = np.where(top & (f == (1 << m) - 1), np.nan, val)
    return (sign * val).astype(np.float32)
