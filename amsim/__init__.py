"""amsim: bit-accurate simulation of approximate multipliers for training and evaluating neural networks.

Multiplier -> LUT -> kernel -> JAX bridge -> Flax layer:

- :func:`multiplier` / :func:`int_multiplier` turn a Python model into a :class:`Multiplier`, whose exhaustive
  table is built by Numba (``amsim/lut``);
- :func:`multiply` and :func:`matmul` run approximate products on NumPy (Numba kernels) or CuPy arrays
  (``amsim/kernels``), bit-identical to the NumPy golden model in :mod:`amsim.golden`;
- :mod:`amsim.nn` bridges them into JAX and Flax.
"""

from . import formats, golden, gpu, interop, multipliers
from ._errors import AmsimError, InvalidTableError, ModelCompileError, RuleError, UnsupportedError
from ._metrics import ErrorStats, format_table
from ._multiplier import Multiplier, int_multiplier, multiplier
from ._ops import matmul, multiply
from ._plots import error_heatmap
from ._version import __version__ as __version__

__all__ = [
    "Multiplier",
    "multiplier",
    "int_multiplier",
    "multiply",
    "matmul",
    "multipliers",
    "formats",
    "golden",
    "gpu",
    "interop",
    "error_heatmap",
    "ErrorStats",
    "format_table",
    "AmsimError",
    "InvalidTableError",
    "ModelCompileError",
    "UnsupportedError",
    "RuleError",
]
