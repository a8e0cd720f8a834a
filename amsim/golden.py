"""The golden NumPy model that defines amsim's semantics (see docs/semantics.md)."""

from ._golden import matmul, multiply, quantize

__all__ = ["quantize", "multiply", "matmul"]
