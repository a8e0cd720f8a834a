"""Building, validating, caching and storing multiplier lookup tables."""

from ._build import build_float_table, build_int_table, code_hash
from ._table import Table, validate

__all__ = ["Table", "validate", "build_float_table", "build_int_table", "code_hash"]
