"""More floating-point multipliers (significand models): ALM-SOA, REALM and truncated significand multipliers.

Each factory returns a :class:`amsim.Multiplier` whose model works on the m-bit fraction fields (or the
significands ``x, y`` in [1, 2)) of the rounded operands; the exponent and sign are handled by amsim.
"""

from __future__ import annotations

import numpy as np

from .. import _operands
from .._multiplier import multiplier
from ._float import rounded_name, truncate_to

__all__ = ["alm_soa", "realm", "realm_factors", "truncated_significand"]


def _check_int_param(name, value, lo, hi, hint):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}).")
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} is out of range: {hint}")
    return int(value)


def alm_soa(mantissa_bits: int = 7, k: int | None = None, rounding: str = "nearest"):
    """Approximate logarithmic multiplier with a set-one adder, ALM-SOA.

    W. Liu, J. Xu, D. Wang, C. Wang, P. Montuschi, F. Lombardi, "Design and Evaluation of Approximate
    Logarithmic Multipliers for Low Power Error-Tolerant Applications", IEEE Transactions on Circuits and
    Systems I, vol. 65, no. 9, 2018.

    Mitchell's multiplier whose log-domain adder is the set-one adder SOA-k. On the m-bit fraction fields
    ``fa``, ``fb`` (x = 1 + fa/2**m):

    - the k low sum bits are set to 1 (no adder cells there);
    - the upper m-k bits are added exactly, with carry-in ``fa[k-1] AND fb[k-1]`` (the carry that the dropped
      part would most likely have produced);
    - the (m+1)-bit sum ``s`` is converted back as in Mitchell: ``1 + s/2**m`` without carry out (s < 2**m),
      ``2 * s/2**m`` with carry out.

    The result has m fraction bits, so nothing is rounded. ``k = 0`` is Mitchell's multiplier.

    Arguments:
        mantissa_bits: operand fraction bits m, 1 to 11.
        k: width of the set-one part, 0 to m (default m // 2).
        rounding: operand rounding, "nearest" or "truncate".

    Returns:
        A float :class:`amsim.Multiplier` named ``alm_soa{m}_k{k}``.
    """
    m = _operands.check_mantissa_bits(mantissa_bits)
    k = m // 2 if k is None else _check_int_param("k", k, 0, m, f"the set-one part has 0 to mantissa_bits={m} bits.")
    ones = (1 << k) - 1
    low = max(k - 1, 0)  # bit that predicts the carry out of the set-one part
    use_cin = 1 if k > 0 else 0
    one = 1 << m

    @multiplier(mantissa_bits=m, rounding=rounding, fields=True,
                name=rounded_name(f"alm_soa{m}_k{k}", rounding, "nearest"))
    def alm_soa_(fa, fb):
        cin = ((fa >> low) & (fb >> low) & 1) * use_cin
        s = ((((fa >> k) + (fb >> k) + cin) << k) | ones)
        # integer significand product in units of 2**-2m
        if s < one:
            return (one + s) << m
        return s << (m + 1)

    return alm_soa_


# --- REALM -----------------------------------------------------------------------------------------------
_GL_X, _GL_W = np.polynomial.legendre.leggauss(40)  # smooth integrands: 40 nodes reach float64 precision


def _g_nocarry(y):
    """Antiderivative of y / (1 + y)."""
    return y - np.log1p(y)


def _g_carry(y):
    """Antiderivative of (1 - y) / (1 + y)."""
    return 2.0 * np.log1p(y) - y


def realm_factors(segments: int) -> np.ndarray:
    """REALM's error-reduction factors s[i, j] for an M x M segmentation of the fraction square, unquantised.

    With Mitchell's product ``P_M`` and ``D = (1 + x)(1 + y)``, REALM's product has relative error
    ``P_M / D - 1 + s / D`` on segment (i, j) (x in [i/M, (i+1)/M), y in [j/M, (j+1)/M)). The factor makes
    the mean of that error over the segment zero:

        s = integral(e) / integral(1 / D),   e = xy / D when x + y < 1,  (1 - x)(1 - y) / D otherwise,

    where ``e = 1 - P_M / D`` is Mitchell's relative underestimate. Segments off the anti-diagonal integrate
    in closed form; the anti-diagonal ones (cut by x + y = 1) integrate the closed-form inner integral over x
    with Gauss-Legendre quadrature.

    Arguments:
        segments: M, a power of two from 2 to 64.

    Returns:
        float64 (M, M) array.
    """
    M = _check_int_param("segments", segments, 2, 64, "REALM uses 2 to 64 segments per fraction.")
    if M & (M - 1):
        raise ValueError(f"segments={M} must be a power of two (the segment index is the top fraction bits).")
    edges = np.arange(M + 1, dtype=np.float64) / M
    lo, hi = edges[:-1], edges[1:]
    log_w = np.log1p(hi) - np.log1p(lo)  # integral of 1/(1+x) over each segment
    nocarry_1d = (hi - lo) - log_w  # integral of x/(1+x)
    carry_1d = 2.0 * log_w - (hi - lo)  # integral of (1-x)/(1+x)
    den = np.multiply.outer(log_w, log_w)
    i, j = np.meshgrid(np.arange(M), np.arange(M), indexing="ij")
    num = np.where(i + j < M - 1, np.multiply.outer(nocarry_1d, nocarry_1d),
                   np.multiply.outer(carry_1d, carry_1d))
    for a in range(M):  # anti-diagonal: the line x + y = 1 runs corner to corner through segment (a, M-1-a)
        b = M - 1 - a
        x0, x1, y0, y1 = lo[a], hi[a], lo[b], hi[b]
        x = 0.5 * (x1 - x0) * _GL_X + 0.5 * (x1 + x0)
        cut = 1.0 - x  # inside [y0, y1] for every x of the segment
        inner = (x / (1 + x)) * (_g_nocarry(cut) - _g_nocarry(y0)) + \
                ((1 - x) / (1 + x)) * (_g_carry(y1) - _g_carry(cut))
        num[a, b] = 0.5 * (x1 - x0) * np.dot(_GL_W, inner)
    return num / den


def realm(mantissa_bits: int = 7, segments: int | None = None, factor_bits: int | None = None,
          rounding: str = "nearest"):
    """Reduced-error approximate log-based multiplier, REALM, at significand level.

    H. Saadat, H. Javaid, A. Ignjatovic, S. Parameswaran, "REALM: Reduced-Error Approximate Log-based Integer
    Multiplier", Design, Automation and Test in Europe (DATE), 2020.

    Mitchell's multiplier plus an error-reduction factor chosen per segment: the fraction square is cut into
    M x M segments (segment index = the top log2(M) bits of each fraction) and each segment gets the factor
    ``s[i, j]`` that makes the mean relative error over that segment zero (:func:`realm_factors`), rounded to
    ``factor_bits`` fraction bits. With fractions fx, fy:

        p = 1 + fx + fy + s      if fx + fy < 1
        p = 2 (fx + fy + s / 2)  otherwise

    and p is truncated to m fraction bits. The factors are integrals over the continuous error surface (the
    paper determines them analytically); the product form (factor added to the log-fraction sum, halved on
    carry) is the one REALM shares with the same group's MBM.

    Arguments:
        mantissa_bits: operand fraction bits m, 1 to 11.
        segments: M, a power of two from 2 to min(64, 2**m) (default min(8, 2**m)).
        factor_bits: fraction bits kept of each factor, 1 to 16 (default m).
        rounding: operand rounding, "nearest" or "truncate".

    Returns:
        A float :class:`amsim.Multiplier` named ``realm{m}_M{M}``.
    """
    m = _operands.check_mantissa_bits(mantissa_bits)
    M = min(8, 1 << m) if segments is None else segments
    _check_int_param("segments", M, 2, min(64, 1 << m),
                     f"with mantissa_bits={m} REALM takes 2 to {min(64, 1 << m)} segments per fraction.")
    q = m if factor_bits is None else _check_int_param("factor_bits", factor_bits, 1, 16,
                                                      "factors are stored with 1 to 16 fraction bits.")
    # factors as integers in units of 2**-q (round to nearest); (M, q) determine them, and both are closure
    # constants of the model, so the model's code hash identifies the table
    numerators = np.round(realm_factors(M) * 2.0**q).astype(np.int64)
    numerators.setflags(write=False)
    unit = 2.0**-q
    seg = float(M)

    @multiplier(mantissa_bits=m, rounding=rounding, name=rounded_name(f"realm{m}_M{M}", rounding, "nearest"))
    def realm_(x, y):
        fx = x - 1.0
        fy = y - 1.0
        c = numerators[int(fx * seg), int(fy * seg)] * unit
        t = fx + fy
        p = 1.0 + t + c if t < 1.0 else 2.0 * t + c
        return truncate_to(p, m)

    return realm_


def truncated_significand(mantissa_bits: int = 7, t: int | None = None, rounding: str = "nearest"):
    """Truncated significand multiplier: the exact array product without the partial products below column t.

    The (m+1)-bit significands A = 2**m + fa and B = 2**m + fb are multiplied as an array of partial products
    ``a_i b_j 2**(i+j)``; those in columns ``i + j < t`` are dropped (no adder cells, no carry out of them),
    the rest are summed exactly. The table holds that sum times 2**(-2m), unrounded. This is the classic
    fixed-width / truncated multiplier (e.g. M. J. Schulte, E. E. Swartzlander, "Truncated Multiplication with
    Correction Constant", VLSI Signal Processing VI, 1993), here without the correction constant.

    Arguments:
        mantissa_bits: operand fraction bits m, 1 to 11.
        t: first kept column, 0 (exact) to 2m+1 (default m: the lower half of the product array is dropped).
        rounding: operand rounding, "nearest" or "truncate".

    Returns:
        A float :class:`amsim.Multiplier` named ``trunc_sig{m}_t{t}``.
    """
    m = _operands.check_mantissa_bits(mantissa_bits)
    t = m if t is None else _check_int_param(
        "t", t, 0, 2 * m + 1, f"the product of two {m + 1}-bit significands has columns 0 to {2 * m + 1}.")
    rows_cut = min(t, m + 1)  # rows of A with partial products below column t

    @multiplier(mantissa_bits=m, rounding=rounding, fields=True,
                name=rounded_name(f"trunc_sig{m}_t{t}", rounding, "nearest"))
    def trunc_sig_(fa, fb):
        A = (1 << m) | fa
        B = (1 << m) | fb
        # the exact product minus the dropped part: row i loses a_i 2**i (B mod 2**(t-i)). Written this way, not
        # as a sum of the kept rows, because Numba 0.68 / llvmlite 0.50 abort with an LLVM assertion compiling
        # that form into the parallel table kernel for some constant (m, t), e.g. (6, 7).
        p = A * B
        for i in range(rows_cut):
            if (A >> i) & 1:
                p -= (B & ((1 << (t - i)) - 1)) << i
        return p

    return trunc_sig_

