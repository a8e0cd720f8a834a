"""Operand formats: fp16, OCP FP8 (e4m3, e5m2) and user-defined ones (see :class:`FloatFormat`).

    mult = amsim.multipliers.mbm(3).with_format(amsim.formats.e4m3(subnormals="keep"))
"""

from ._formats import FloatFormat, convert, e4m3, e5m2, fp16

__all__ = ["FloatFormat", "fp16", "e4m3", "e5m2", "convert"]
