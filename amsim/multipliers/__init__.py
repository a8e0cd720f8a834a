"""Built-in multipliers. Each factory returns a :class:`amsim.Multiplier`; tables are built on first use.

Float (significand models): :func:`exact`, :func:`exact_truncated` (ApproxTrain's "bfloat16"), :func:`mitchell`,
:func:`mbm`. Integer: :func:`exact_int`. :func:`get` looks one up by name ("mbm", "mbm7", "mitchell5", ...).
"""

from ._float import exact, exact_truncated, mbm, mitchell
from ._int import exact_int
from ._registry import available, get

__all__ = ["exact", "exact_truncated", "mitchell", "mbm", "exact_int", "get", "available"]
