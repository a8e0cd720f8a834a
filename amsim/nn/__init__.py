"""The JAX bridge: approximate ``dot_general`` / ``conv_general_dilated`` / ``einsum`` with custom VJPs, for stock
Flax layers, plus whole-model interception by rules.

    dg = amsim.nn.dot_general(amsim.multipliers.mbm(7))     # nn.Dense(10, dot_general=dg)
    cv = amsim.nn.conv_general_dilated("mitchell")            # nn.Conv(6, (5, 5), conv_general_dilated=cv)
    model = amsim.nn.approximate(model, {"Conv_0": "mitchell", ".*Dense.*": "mbm", "*": "exact"})
"""

from ._callback import bmm
from ._config import OpConfig
from ._conv import ConvGeneralDilated, conv_general_dilated
from ._dot_general import DotGeneral, dot_general
from ._einsum import Einsum, einsum
from ._intercept import ApproximatedModel, Rules, TraceRecord, approximate, intercept, op_paths

__all__ = [
    "OpConfig",
    "dot_general",
    "conv_general_dilated",
    "einsum",
    "approximate",
    "intercept",
    "op_paths",
    "bmm",
    "DotGeneral",
    "ConvGeneralDilated",
    "Einsum",
    "ApproximatedModel",
    "Rules",
    "TraceRecord",
]
