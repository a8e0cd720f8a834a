"""Import and export multiplier tables of other simulators, and tabulate multipliers written in C.

- ApproxTrain significand LUTs ``NAME_m.bin``: :func:`load_approxtrain`, :func:`save_approxtrain`;
- TFApprox uint16 tables of unsigned 8-bit products: :func:`load_tfapprox`, :func:`save_tfapprox`;
- AdaPT / TransAxx C headers ``lut[uint8(a)][uint8(b)]``: :func:`load_c_header`, :func:`save_c_header`, and the
  same layout as arrays: :func:`from_byte_indexed`, :func:`to_byte_indexed`;
- TorchApprox int32 arrays (same bit-pattern order): :func:`from_torchapprox`, :func:`to_torchapprox`;
- C models (EvoApprox ``mul8u_*`` / ``mul8s_*``, ApproxTrain ``.inl``): :func:`from_c`;
- EvoApproxLib circuits with their power, area and delay, checked against their headers: :func:`load_evoapprox`.

Everything returns or takes an :class:`amsim.Multiplier`.
"""

from ._approxtrain import approxtrain_bytes, load_approxtrain, save_approxtrain
from ._c import CCompilerError, CModelError, find_c_compiler, from_c
from ._evoapprox import load_evoapprox, parse_evoapprox_header
from ._int_tables import (
                          c_header_text,
                          from_byte_indexed,
                          from_torchapprox,
                          load_c_header,
                          load_tfapprox,
                          parse_c_array,
                          save_c_header,
                          save_tfapprox,
                          sign_magnitude,
                          to_byte_indexed,
                          to_torchapprox,
)

__all__ = [
    "load_approxtrain",
    "save_approxtrain",
    "approxtrain_bytes",
    "load_tfapprox",
    "save_tfapprox",
    "load_c_header",
    "save_c_header",
    "c_header_text",
    "parse_c_array",
    "from_byte_indexed",
    "to_byte_indexed",
    "from_torchapprox",
    "to_torchapprox",
    "from_c",
    "load_evoapprox",
    "sign_magnitude",
    "parse_evoapprox_header",
    "find_c_compiler",
    "CCompilerError",
    "CModelError",
]
