"""Building, validating, fingerprinting and storing multiplier lookup tables."""

from ._build import build_code_table, build_float_table, build_int_table
from ._fingerprint import UnhashableModelError, fingerprint
from ._table import Table, file_digest, validate, validate_code_table

__all__ = ["Table", "validate", "validate_code_table", "file_digest", "build_float_table", "build_int_table",
           "build_code_table", "fingerprint", "UnhashableModelError"]
