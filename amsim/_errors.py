"""Exceptions raised by amsim. Each message names the problem and the fix."""


class AmsimError(Exception):
    """Base class of every amsim error."""


class ModelCompileError(AmsimError, TypeError):
    """Numba could not compile a multiplier model."""


class InvalidTableError(AmsimError, ValueError):
    """A multiplier table holds values the semantics do not allow (NaN, Inf, negative...)."""


class UnsupportedError(AmsimError, NotImplementedError):
    """A case amsim does not simulate. Raised instead of falling back to exact arithmetic."""


class RuleError(AmsimError, ValueError):
    """An interception rule is malformed or matches no operation of the model."""
