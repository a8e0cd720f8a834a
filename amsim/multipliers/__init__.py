"""Built-in multipliers. Each factory returns a :class:`amsim.Multiplier`; tables are built on first use.

Float (significand models): :func:`exact`, :func:`exact_truncated` (ApproxTrain's "bfloat16"), :func:`mitchell`,
:func:`mbm`, :func:`alm_soa`, :func:`realm`, :func:`truncated_significand`. Integer: :func:`exact_int`,
:func:`drum`, :func:`broken_array`, :func:`truncated_array`, :func:`kulkarni`, :func:`mitchell_int`.
:func:`get` looks one up by name ("mbm", "mbm7", "mitchell5", "realm", "drum4", "kulkarni8", ...).
docs/multipliers.md compares them all.
"""

from ._float import exact, exact_truncated, mbm, mitchell
from ._int import exact_int
from ._library_float import alm_soa, realm, realm_factors, truncated_significand
from ._library_int import broken_array, drum, kulkarni, mitchell_int, truncated_array
from ._registry import NATIVE_NAMES, available, expand, get, split_specs

__all__ = [
    "exact",
    "exact_truncated",
    "mitchell",
    "mbm",
    "alm_soa",
    "realm",
    "realm_factors",
    "truncated_significand",
    "exact_int",
    "drum",
    "broken_array",
    "truncated_array",
    "kulkarni",
    "mitchell_int",
    "get",
    "available",
    "NATIVE_NAMES",
    "expand",
    "split_specs",
]
